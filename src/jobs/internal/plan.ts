/**
 * What happens between a job's creation and its training, as plain functions: validate its files the
 * way the engine will read them, then resolve `auto` hyperparameters and the label set. The worker
 * (validating_files) and a dry run (`weitiao.dry_run`, `weitiao train --dry-run`) both call these, so a
 * dry run checks exactly what a real job would. Not for use outside src/jobs.
 */
import type { Context } from '../../context.js';
import { engineTokenCounter, runValidationTask, type Issue, type ValidationReport } from '../../data/index.js';
import { validateReinforcementFile } from '../../data/reinforcement.js';
import { WeitiaoError, type ErrorCode } from '../../errors.js';
import { fileContentPath, retrieveFile, type FileObject } from '../../files/index.js';
import { resolveHyperparameters, type Method, type RequestedHyperparameters, type ResolvedHyperparameters } from '../../hyperparameters/index.js';
import type { JobError, JobSettings } from './records.js';

export type JobFileParam = 'training_file' | 'validation_file';

export interface CheckedFile {
  param: JobFileParam;
  file: FileObject;
  path: string;
  report: ValidationReport;
}

/** The stored file behind `fileId`; `file_not_found` (as a JobError) when it is gone. */
export function jobFile(ctx: Context, param: JobFileParam, fileId: string): { file: FileObject; path: string } | JobError {
  try {
    return { file: retrieveFile(ctx, fileId), path: fileContentPath(ctx, fileId) };
  } catch {
    return { code: 'file_not_found', message: `${param} ${fileId} no longer exists / 文件 ${fileId} 已不存在`, param };
  }
}

/** Validates one job file as training will read it: OpenAI's preference format for DPO, chat examples (with the base's tokenizer) otherwise. */
export async function validateJobFile(
  file: { file: FileObject; path: string },
  param: JobFileParam,
  options: { method: Method; modelDir: string; settings: Pick<JobSettings, 'max_seq_length' | 'long_examples' | 'reinforcement'>; signal?: AbortSignal },
): Promise<CheckedFile> {
  if (options.method === 'reinforcement') {
    // Prompts and the fields the grader reads (data/reinforcement.ts: streamed, file:line: field).
    return { param, ...file, report: await validateReinforcementFile(file.path, options.settings.reinforcement?.grader ?? {}) };
  }
  // Off the event loop (a worker thread for all but small files) and stopped by `signal` (a cancel).
  const report =
    options.method === 'dpo'
      ? await runValidationTask({ kind: 'preference', file: file.path, options: {} }, { signal: options.signal })
      : await runValidationTask(
          {
            kind: 'chat',
            file: file.path,
            options: { model_dir: options.modelDir, ...(options.settings.max_seq_length ? { max_length: options.settings.max_seq_length } : {}) },
            count_tokens: true,
          },
          { signal: options.signal, countTokens: engineTokenCounter(options.modelDir) },
        );
  return { param, ...file, report: options.method === 'dpo' ? report : allowLongExamples(report, options.settings.long_examples ?? 'truncate') };
}

/**
 * A job never fails for over-long examples unless it asks to (`long_examples: 'error'`): with `truncate`
 * (the default; the engine cuts the earliest prompt tokens and keeps the answer) or `skip` (the engine
 * leaves them out) their `too_many_tokens` errors become warnings, which the worker shows as events
 * naming each line.
 */
export function allowLongExamples(report: ValidationReport, policy: 'truncate' | 'skip' | 'error'): ValidationReport {
  const long = report.errors.filter((e) => e.code === 'too_many_tokens');
  if (policy === 'error' || long.length === 0) return report;
  const done = policy === 'truncate' ? 'truncated, keeping the answer / 将截断提示、保留回答' : 'skipped / 将跳过';
  const warnings = long.map((e) => ({ ...e, severity: 'warning' as const, message: `${e.message} — ${done}` }));
  const errors = report.errors.filter((e) => e.code !== 'too_many_tokens');
  // Only listed errors move (a report lists MAX_REPORTED_ISSUES per severity); a job fails on listed errors.
  const moved = long.length;
  return {
    ...report,
    errors,
    warnings: [...report.warnings, ...warnings].sort((a, b) => (a.line ?? 0) - (b.line ?? 0)),
    ...(report.error_count !== undefined ? { error_count: report.error_count - moved } : {}),
    ...(report.warning_count !== undefined ? { warning_count: report.warning_count + moved } : {}),
    valid_examples: policy === 'skip' ? report.valid_examples - moved : report.valid_examples,
  };
}

/** The job's error for a file with errors (the first one located, the count of the rest), or null. */
export function fileError(checked: CheckedFile): JobError | null {
  const { report, param, file } = checked;
  if (!report.errors.length) return null;
  const first = report.errors[0];
  const total = report.error_count ?? report.errors.length;
  const more = total > 1 ? ` (+${total - 1} more)` : '';
  return {
    code: param === 'training_file' ? 'invalid_training_file' : 'invalid_validation_file',
    message: `${describeIssue(file.filename, first)}${more}`,
    param: [param, first.line ?? '', first.field ?? ''].filter((x) => x !== '').join(':'),
  };
}

export interface JobResolution {
  resolved: ResolvedHyperparameters;
  /** The label set for per-epoch label metrics (null: free-text answers, DPO, or turned off). */
  labelSet: string[] | null;
}

/** Resolves `auto` hyperparameters from the valid training examples and the label set from the answers; throws `invalid_request`. */
export function resolveJob(input: { method: Method; settings: JobSettings; requested: RequestedHyperparameters; train: ValidationReport }): JobResolution {
  const { method, settings, train } = input;
  const resolved = resolveHyperparameters({ n_examples: train.valid_examples, requested: input.requested, method, nproc: (settings.nproc ?? 1) * (settings.nodes ?? 1) });
  const labelSet = method === 'dpo' || method === 'reinforcement' ? null : settings.label_set === 'auto' ? train.label_set : settings.label_set;
  return { resolved, labelSet };
}

/** `file:line: field: message`, as every data issue is shown in events and errors. */
export function describeIssue(filename: string, issue: Issue): string {
  const where = issue.line ? `${filename}:${issue.line}` : filename;
  return [where, issue.field, issue.message].filter(Boolean).join(': ');
}

/** A JobError as the WeitiaoError a synchronous caller (a dry run) throws: invalid files are `invalid_file`. */
export function jobErrorToThrow(error: JobError): WeitiaoError {
  const codes: Record<string, ErrorCode> = {
    invalid_training_file: 'invalid_file',
    invalid_validation_file: 'invalid_file',
    file_not_found: 'not_found',
    model_not_found: 'not_found',
  };
  return new WeitiaoError(codes[error.code] ?? 'invalid_request', error.message, { param: error.param ?? undefined });
}
