/**
 * The extension JSON's shape, events as they go on the wire, and the small writes both the service and the
 * worker make (events, checkpoints, the extension JSON) over repository.ts. Not for use outside src/jobs.
 */
import path from 'node:path';
import type { LabelMetrics, PrecisionChoice, ResponseFormat } from '../../engine/protocol.js';
import { hideServerPaths } from '../../errors.js';
import type { DB } from '../../store/index.js';
import { newId, now } from '../../store/index.js';
import type { RequestedHyperparameters, ResolvedHyperparameters } from '../../hyperparameters/index.js';
import type { z } from 'zod';
import type { WeitiaoJobSettings } from '../schemas.js';
import { insertEvent, updateJobExtension, upsertCheckpointRow, type CheckpointRow, type EventLevel, type EventRow, type JobRow } from '../repository.js';

/**
 * weitiao's own settings for a job, as the user gave them (the `weitiao` object of the create request,
 * its schema in ../schemas.ts), plus DPO's beta resolved from `auto` at creation.
 */
export type JobSettings = Omit<z.output<typeof WeitiaoJobSettings>, 'dry_run'> & { dpo?: { beta: number }; reinforcement?: ReinforcementSettings };

/** A reinforcement job's grader and OpenAI hyperparameters beyond the supervised ones, as asked (`auto` kept). */
export interface ReinforcementSettings {
  grader: Record<string, unknown>;
  response_format: z.infer<typeof ResponseFormat> | null;
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

/** Merges `patch` into the job's extension JSON (read-modify-write in one transaction). */
export function patchExtension(db: DB, id: string, patch: Partial<JobExtension>, fields: Record<string, unknown> = {}): void {
  updateJobExtension(db, id, (ext) => JSON.stringify({ ...(JSON.parse(ext) as JobExtension), ...patch }), fields);
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
  return eventToWire({ ...row, seq: insertEvent(db, row) });
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
  return upsertCheckpointRow(db, { ...c, metrics: JSON.stringify(c.metrics) });
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
