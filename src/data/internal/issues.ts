/** The issue list every validator fills, and how a stopped validation ends. */
import path from 'node:path';
import { WeitiaoError } from '../../errors.js';
import type { Issue } from '../schemas.js';
import type { Problem } from './check.js';

/** Issues listed per severity in a report (all are counted): a file of a million bad lines stays a small report. */
export const MAX_REPORTED_ISSUES = 1000;

/** Issues of one file, sorted by line on the way out; past `max` per severity they are counted, not kept. */
export class IssueList {
  readonly errors: Issue[] = [];
  readonly warnings: Issue[] = [];
  errorCount = 0;
  warningCount = 0;
  constructor(
    private readonly file: string,
    private readonly max = Number.POSITIVE_INFINITY,
  ) {}
  add(line: number | null, p: Problem): void {
    if (p.severity === 'error') {
      if (this.errorCount++ < this.max) this.errors.push({ file: this.file, line, ...p });
    } else if (this.warningCount++ < this.max) {
      this.warnings.push({ file: this.file, line, ...p });
    }
  }
  /** Sorted by line (stable), since token checks come after the reading pass. */
  sorted(): { errors: Issue[]; warnings: Issue[] } {
    const byLine = (a: Issue, b: Issue) => (a.line ?? 0) - (b.line ?? 0);
    return { errors: [...this.errors].sort(byLine), warnings: [...this.warnings].sort(byLine) };
  }
}

/** The error a stopped validation rejects with. */
export function validationCancelled(file: string): WeitiaoError {
  return new WeitiaoError('cancelled', `validation of ${path.basename(file)} was stopped / 文件校验已停止`, { param: 'file' });
}

