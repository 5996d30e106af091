/** Issues as text and as the WeitiaoError a job or command fails with. */
import { WeitiaoError, formatLocation } from '../errors.js';
import type { Issue } from './schemas.js';

/** `file:line: field: severity: message [code]`, the one-line form every shell prints. */
export function formatIssue(issue: Issue): string {
  const where = formatLocation(issue.file, issue.line ?? undefined, issue.field ?? undefined);
  return `${where}: ${issue.severity}: ${issue.message} [${issue.code}]`;
}

/**
 * The first error of a report as a WeitiaoError (`invalid_file`, with file, line and field), or null
 * when there is none: what a job or command fails with after validating its files.
 */
export function reportError(report: { errors: Issue[]; error_count?: number }): WeitiaoError | null {
  const first = report.errors[0];
  if (!first) return null;
  const rest = (report.error_count ?? report.errors.length) - 1;
  const more = rest > 0 ? ` (and ${rest} more error(s) / 另有 ${rest} 个错误)` : '';
  return new WeitiaoError('invalid_file', `${formatIssue(first)}${more}`, {
    file: first.file,
    line: first.line ?? undefined,
    param: first.field ?? undefined,
  });
}
