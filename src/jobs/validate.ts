/**
 * A job's validating_files phase: its files validated as training will read them (src/data's validators,
 * through internal/plan.ts, with the base model's tokenizer), problems shown as events naming `file:line`,
 * `auto` hyperparameters and the label set resolved; then the job is queued. Cancel and stop requests
 * arrive through the store, so a long validation looks every `pollMs` and stops early.
 */
import type { Issue } from '../data/index.js';
import { WeitiaoError } from '../errors.js';
import { materializeModel } from '../models/index.js';
import { describeIssue, fileError, jobFile, resolveJob, validateJobFile, type CheckedFile, type JobResolution } from './internal/plan.js';
import { parseExtension, patchExtension } from './internal/records.js';
import { transition, type JobStatus } from './internal/status.js';
import { fail, type JobJournal } from './outcomes.js';
import { resolveReinforcement } from './reinforcement.js';
import { getJobRow, type EventLevel } from './repository.js';
import { DEFAULT_DPO_BETA } from './schemas.js';
import { jobMethod, reinforcementWire } from './wire.js';

export interface ValidateOptions {
  pollMs: number;
  /** True once the worker is stopping: a validation in progress gives up (the job stays waiting). */
  stopping: () => boolean;
}

const MAX_ISSUE_EVENTS = 200;

/** Validates the job's files and resolves its settings; true when the job is now queued. */
export async function validateJobFiles(j: JobJournal, id: string, opts: ValidateOptions): Promise<boolean> {
  const row = getJobRow(j.ctx.db, id)!;
  const ext = parseExtension(row);
  let modelDir: string;
  try {
    modelDir = (await materializeModel(j.ctx, row.model)).basePath; // a full fine-tune to continue from may be in object storage only
  } catch (err) {
    const e = WeitiaoError.from(err);
    fail(j, id, { code: 'model_not_found', message: e.message, param: 'model' });
    return false;
  }

  const method = jobMethod(row);
  const reports: CheckedFile[] = [];
  for (const param of ['training_file', 'validation_file'] as const) {
    const fileId = row[param];
    if (!fileId) continue;
    const file = jobFile(j.ctx, param, fileId);
    if ('code' in file) {
      fail(j, id, file);
      return false;
    }
    j.event(id, { message: `Validating ${param.replace('_', ' ')}: ${file.file.filename} / 正在校验文件 ${file.file.filename}` });
    const checked = await validateFile(j, opts, id, file, param, { method, modelDir, settings: ext.settings });
    if (!checked || !stillIs(j, id, 'validating_files')) return false;
    issueEvents(j, id, file.file.filename, checked.report.warnings, 'warn');
    const error = fileError(checked);
    if (error) {
      issueEvents(j, id, file.file.filename, checked.report.errors, 'error');
      fail(j, id, error);
      return false;
    }
    reports.push(checked);
  }

  const train = reports[0].report;
  const valid = reports.find((r) => r.param === 'validation_file')?.report ?? null;
  let resolution: JobResolution;
  try {
    resolution = resolveJob({ method, settings: ext.settings, requested: ext.requested, train });
  } catch (err) {
    const e = WeitiaoError.from(err);
    fail(j, id, { code: e.code, message: e.message, param: e.param ?? null });
    return false;
  }
  const { resolved, labelSet } = resolution;
  const hyperparameters = {
    n_epochs: resolved.n_epochs,
    batch_size: resolved.batch_size,
    learning_rate_multiplier: resolved.learning_rate_multiplier,
  };
  const rl = ext.settings.reinforcement;
  const wireMethod =
    method === 'reinforcement' && rl
      ? reinforcementWire(ext.settings, {
          ...hyperparameters,
          ...resolveReinforcement(rl, resolved.estimated_total_steps, valid?.valid_examples ?? null),
          reasoning_effort: rl.reasoning_effort,
        })
      : method === 'dpo'
        ? { type: 'dpo', dpo: { hyperparameters: { ...hyperparameters, beta: ext.settings.dpo?.beta ?? DEFAULT_DPO_BETA } } }
        : { type: 'supervised', supervised: { hyperparameters } };
  patchExtension(
    j.ctx.db,
    id,
    { resolved, label_set: labelSet, n_examples: train.valid_examples, n_validation_examples: valid ? valid.valid_examples : null },
    { method: JSON.stringify(wireMethod) },
  );
  const autoNote = (k: string) => (resolved.auto.includes(k as never) ? ' (auto)' : '');
  j.event(id, {
    message:
      `Files validated: ${train.valid_examples} training` +
      (valid ? ` and ${valid.valid_examples} validation` : '') +
      ` examples; n_epochs=${resolved.n_epochs}${autoNote('n_epochs')}, batch_size=${resolved.batch_size}${autoNote('batch_size')}, ` +
      `learning_rate=${resolved.learning_rate}${autoNote('learning_rate_multiplier')}` +
      (labelSet ? `; labels: ${labelSet.join(', ')}` : '') +
      ` / 文件校验通过：训练样本 ${train.valid_examples} 条` +
      (valid ? `，验证样本 ${valid.valid_examples} 条` : ''),
    data: { n_examples: train.valid_examples, n_validation_examples: valid?.valid_examples ?? null, hyperparameters: resolved, label_set: labelSet },
  });
  try {
    transition(j.ctx.db, id, 'queued', {}, { from: ['validating_files'] });
  } catch (err) {
    if (err instanceof WeitiaoError && err.code === 'conflict') return false; // cancelled meanwhile
    throw err;
  }
  j.event(id, { message: 'The job is queued / 任务已进入队列' });
  return true;
}

/**
 * validateJobFile, stopped (thread and token count) as soon as the job is cancelled or the worker
 * stops; null then. Cancel and stop requests arrive through the store, so it looks every `pollMs`.
 */
async function validateFile(
  j: JobJournal,
  opts: ValidateOptions,
  id: string,
  file: Parameters<typeof validateJobFile>[0],
  param: Parameters<typeof validateJobFile>[1],
  options: Omit<Parameters<typeof validateJobFile>[2], 'signal'>,
): Promise<CheckedFile | null> {
  const stop = new AbortController();
  const watch = setInterval(() => {
    if (opts.stopping() || !stillIs(j, id, 'validating_files')) stop.abort();
  }, opts.pollMs);
  try {
    return await validateJobFile(file, param, { ...options, signal: stop.signal });
  } catch (err) {
    if (stop.signal.aborted) return null;
    throw err;
  } finally {
    clearInterval(watch);
  }
}

function issueEvents(j: JobJournal, id: string, filename: string, issues: Issue[], level: EventLevel): void {
  for (const issue of issues.slice(0, MAX_ISSUE_EVENTS)) {
    j.event(id, { level, message: describeIssue(filename, issue), data: { ...issue, file: filename } });
  }
  if (issues.length > MAX_ISSUE_EVENTS) {
    j.event(id, { level, message: `… and ${issues.length - MAX_ISSUE_EVENTS} more / 另有 ${issues.length - MAX_ISSUE_EVENTS} 条` });
  }
}

function stillIs(j: JobJournal, id: string, status: JobStatus): boolean {
  return getJobRow(j.ctx.db, id)?.status === status;
}
