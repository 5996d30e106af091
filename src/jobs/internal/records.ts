/**
 * Job rows ↔ wire objects, and the small writes both the service and the worker make (events,
 * checkpoints, the extension JSON). Not for use outside src/jobs.
 */
import path from 'node:path';
import type { LabelMetrics, PrecisionChoice } from '../../engine/protocol.js';
import { hideServerPaths } from '../../errors.js';
import type { DB } from '../../store/index.js';
import { newId, now } from '../../store/index.js';
import type { RequestedHyperparameters, ResolvedHyperparameters } from '../../train/index.js';
import type { JobStatus } from './status.js';
import type { z } from 'zod';
import type { WeitiaoJobSettings } from '../index.js';

export interface JobRow {
  id: string;
  model: string;
  training_file: string;
  validation_file: string | null;
  status: JobStatus;
  method: string;
  extension: string;
  suffix: string | null;
  seed: number;
  metadata: string | null;
  fine_tuned_model: string | null;
  trained_tokens: number | null;
  error: string | null;
  result_files: string;
  estimated_finish: number | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  attempts: number;
  worker_id: string | null;
  worker_pid: number | null;
  heartbeat_at: number | null;
  requested_action: 'cancel' | 'pause' | null;
}

/**
 * weitiao's own settings for a job, as the user gave them (the `weitiao` object of the create request,
 * its schema in ../index.ts), plus DPO's beta resolved from `auto` at creation.
 */
export type JobSettings = Omit<z.output<typeof WeitiaoJobSettings>, 'dry_run'> & { dpo?: { beta: number }; reinforcement?: ReinforcementSettings };

/** A reinforcement job's grader and OpenAI hyperparameters beyond the supervised ones, as asked (`auto` kept). */
export interface ReinforcementSettings {
  grader: Record<string, unknown>;
  response_format: Record<string, unknown> | null;
  compute_multiplier: number | 'auto';
  eval_interval: number | 'auto';
  eval_samples: number | 'auto';
  /** Accepted and recorded: the recipe samples plain answers. */
  reasoning_effort: string;
}

export interface JobProgress {
  step: number;
  total_steps: number;
  epoch: number;
}

/** The `extension` column: settings plus what the worker learned while running the job. */
export interface JobExtension {
  settings: JobSettings;
  /** The hyperparameters as asked (`auto` kept), before the rules ran. */
  requested: RequestedHyperparameters;
  resolved: ResolvedHyperparameters | null;
  n_examples: number | null;
  n_validation_examples: number | null;
  /** The label set used for per-epoch label metrics (resolved from `auto`). */
  label_set: string[] | null;
  progress: JobProgress | null;
  /** Label metrics of the newest epoch-end evaluation. */
  label_metrics: LabelMetrics | null;
  /** Newest figures, for checkpoint metrics and the model's lineage. */
  last_metrics: Record<string, number> | null;
  last_eval: { step: number; valid_loss?: number; accuracy?: number } | null;
  /** Runs lost in a row (engine crash, worker gone) since the last checkpoint was saved; absent = 0. */
  crash_streak?: number;
  /** How the engine chose its precision (the probe's figures on a CPU), from the train result. */
  precision_choice?: PrecisionChoice;
}

export interface JobError {
  code: string;
  message: string;
  param: string | null;
}

export function parseExtension(row: Pick<JobRow, 'extension'>): JobExtension {
  return JSON.parse(row.extension) as JobExtension;
}

export function getJobRow(db: DB, id: string): JobRow | undefined {
  return db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
}

/** Merges `patch` into the job's extension JSON (read-modify-write in one transaction). */
export function patchExtension(db: DB, id: string, patch: Partial<JobExtension>, fields: Record<string, unknown> = {}): void {
  db.transaction(() => {
    const row = db.prepare('SELECT extension FROM jobs WHERE id = ?').get(id) as { extension: string } | undefined;
    if (!row) return;
    const ext = { ...(JSON.parse(row.extension) as JobExtension), ...patch };
    const names = Object.keys(fields);
    const set = ['extension = @__ext', ...names.map((n) => `${n} = @${n}`)].join(', ');
    db.prepare(`UPDATE jobs SET ${set} WHERE id = @__id`).run({ ...fields, __ext: JSON.stringify(ext), __id: id });
  })();
}

export type EventLevel = 'info' | 'warn' | 'error';

export interface EventRow {
  seq: number;
  id: string;
  job_id: string;
  created_at: number;
  level: EventLevel;
  type: 'message' | 'metrics';
  message: string;
  data: string | null;
}

/** OpenAI's job event. */
export interface WireJobEvent {
  id: string;
  object: 'fine_tuning.job.event';
  created_at: number;
  level: EventLevel;
  message: string;
  type: 'message' | 'metrics';
  data: unknown;
}

/** The wire event; its message without absolute server paths (engine logs name the files they touch). */
export function eventToWire(row: EventRow): WireJobEvent {
  return {
    id: row.id,
    object: 'fine_tuning.job.event',
    created_at: row.created_at,
    level: row.level,
    message: hideServerPaths(row.message),
    type: row.type,
    data: row.data === null ? null : JSON.parse(row.data),
  };
}

/** Appends one event to a job's log and returns it as it goes on the wire. */
export function addEvent(
  db: DB,
  jobId: string,
  event: { level?: EventLevel; type?: 'message' | 'metrics'; message: string; data?: unknown },
): WireJobEvent {
  const row = {
    id: newId('ftevent'),
    job_id: jobId,
    created_at: now(),
    level: event.level ?? 'info',
    type: event.type ?? 'message',
    message: event.message,
    data: event.data === undefined || event.data === null ? null : JSON.stringify(event.data),
  };
  const info = db
    .prepare(
      `INSERT INTO job_events (id, job_id, created_at, level, type, message, data)
       VALUES (@id, @job_id, @created_at, @level, @type, @message, @data)`,
    )
    .run(row);
  return eventToWire({ ...row, seq: Number(info.lastInsertRowid) });
}

export interface CheckpointRow {
  id: string;
  job_id: string;
  step: number;
  epoch: number;
  metrics: string;
  path: string;
  fine_tuned_model_checkpoint: string;
  created_at: number;
}

/** OpenAI's checkpoint metrics. */
export interface CheckpointMetrics {
  step: number;
  train_loss?: number;
  train_mean_token_accuracy?: number;
  valid_loss?: number;
  valid_mean_token_accuracy?: number;
  full_valid_loss?: number;
  full_valid_mean_token_accuracy?: number;
}

/** Records a checkpoint; a repeated step (a resumed run saving again) replaces the old record but keeps its id. */
export function upsertCheckpoint(
  db: DB,
  c: { job_id: string; step: number; epoch: number; metrics: CheckpointMetrics; path: string; fine_tuned_model_checkpoint: string },
): CheckpointRow {
  db.prepare(
    `INSERT INTO checkpoints (id, job_id, step, epoch, metrics, path, fine_tuned_model_checkpoint, created_at)
     VALUES (@id, @job_id, @step, @epoch, @metrics, @path, @fine_tuned_model_checkpoint, @created_at)
     ON CONFLICT(job_id, step) DO UPDATE SET epoch = excluded.epoch, metrics = excluded.metrics, path = excluded.path,
       fine_tuned_model_checkpoint = excluded.fine_tuned_model_checkpoint, created_at = excluded.created_at`,
  ).run({ ...c, id: newId('ftckpt'), metrics: JSON.stringify(c.metrics), created_at: now() });
  return db.prepare('SELECT * FROM checkpoints WHERE job_id = ? AND step = ?').get(c.job_id, c.step) as CheckpointRow;
}

/** `ft:<base>:<suffix or weitiao>:<last 8 characters of the job id>`, fixed when the job is created. */
export function fineTunedModelName(row: Pick<JobRow, 'id' | 'model' | 'suffix'>): string {
  // An unregistered local directory is named by its last part: a path inside an id would read badly.
  const base = path.isAbsolute(row.model) ? path.basename(row.model) : row.model;
  return `ft:${base}:${row.suffix ?? 'weitiao'}:${row.id.slice(-8)}`;
}

export function checkpointModelName(fineTunedModel: string, step: number): string {
  return `${fineTunedModel}:ckpt-step-${step}`;
}
