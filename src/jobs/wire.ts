/**
 * Job rows as OpenAI's wire objects: the FineTuningJob (weitiao's settings and live progress in its
 * `weitiao` field, server paths hidden), its checkpoints, and a job's engine recipe.
 */
import { hideServerPaths } from '../errors.js';
import { pickTrainingControls, resolveTrainingControls, type Method } from '../hyperparameters/index.js';
import { parseExtension, type JobSettings } from './internal/records.js';
import type { CheckpointRow, JobRow } from './repository.js';
import type { FineTuningJob, FineTuningJobCheckpoint } from './schemas.js';

export function jobToWire(row: JobRow): FineTuningJob {
  const ext = parseExtension(row);
  const method = JSON.parse(row.method) as FineTuningJob['method'];
  const r = ext.resolved;
  return {
    id: row.id,
    object: 'fine_tuning.job',
    created_at: row.created_at,
    finished_at: row.finished_at,
    // A job trained on a then-unregistered directory stored its path: a client sees the folder's name.
    model: hideServerPaths(row.model),
    fine_tuned_model: row.fine_tuned_model,
    organization_id: 'org-weitiao',
    result_files: JSON.parse(row.result_files) as string[],
    status: row.status,
    validation_file: row.validation_file,
    training_file: row.training_file,
    hyperparameters: openaiHyperparameters(method),
    method,
    trained_tokens: row.trained_tokens,
    error: row.error ? publicJobError(JSON.parse(row.error) as NonNullable<FineTuningJob['error']>) : null,
    seed: row.seed,
    estimated_finish: row.estimated_finish,
    metadata: row.metadata ? (JSON.parse(row.metadata) as Record<string, string>) : null,
    suffix: row.suffix,
    user_provided_suffix: row.suffix,
    integrations: [],
    weitiao: {
      method: jobMethod(row),
      full: { ...ext.settings.full },
      progress: ext.progress,
      hyperparameters: r
        ? {
            n_epochs: r.n_epochs,
            batch_size: r.batch_size,
            learning_rate: r.learning_rate,
            learning_rate_multiplier: r.learning_rate_multiplier,
            weight_decay: r.weight_decay,
            max_grad_norm: r.max_grad_norm,
            warmup_ratio: r.warmup_ratio,
            lr_scheduler: r.lr_scheduler,
            auto: r.auto,
            estimated_total_steps: r.estimated_total_steps,
          }
        : null,
      lora: { ...ext.settings.lora },
      controls: {
        ...resolveTrainingControls(pickTrainingControls(ext.settings)),
        ...(ext.precision_choice ? { precision_choice: ext.precision_choice } : {}),
      },
      eval_every_steps: ext.settings.eval_every_steps ?? 0,
      save_every_steps: ext.settings.save_every_steps ?? 0,
      max_steps: ext.settings.max_steps ?? null,
      // Once the files are read, the resolved set (null: the answers are free text); before, what was asked.
      label_set: ext.resolved ? ext.label_set : ext.settings.label_set,
      n_examples: ext.n_examples,
      n_validation_examples: ext.n_validation_examples,
      label_metrics: ext.label_metrics,
      requested_action: row.requested_action,
      attempts: row.attempts,
    },
  };
}

/** A job's error as clients see it: the engine's messages name files by absolute path, the wire never does. */
function publicJobError(error: NonNullable<FineTuningJob['error']>): FineTuningJob['error'] {
  return { ...error, message: hideServerPaths(error.message) };
}

/** The engine recipe of a job: `dpo`/`reinforcement` for OpenAI's methods of those names, else weitiao's supervised choice (default `lora`). */
export function jobMethod(row: Pick<JobRow, 'method' | 'extension'>): Method {
  const type = (JSON.parse(row.method) as { type: string }).type;
  if (type === 'dpo' || type === 'reinforcement') return type;
  return parseExtension(row).settings.method ?? 'lora';
}

/** OpenAI's deprecated top-level `hyperparameters`: the method's, without DPO's `beta`. */
function openaiHyperparameters(method: FineTuningJob['method']): FineTuningJob['hyperparameters'] {
  if (method.type === 'supervised') return method.supervised.hyperparameters;
  if (method.type === 'reinforcement') {
    const { n_epochs, batch_size, learning_rate_multiplier } = method.reinforcement.hyperparameters;
    return { n_epochs, batch_size, learning_rate_multiplier };
  }
  const { beta: _beta, ...rest } = method.dpo.hyperparameters;
  return rest;
}

export function checkpointToWire(row: CheckpointRow): FineTuningJobCheckpoint {
  return {
    id: row.id,
    object: 'fine_tuning.job.checkpoint',
    created_at: row.created_at,
    fine_tuned_model_checkpoint: row.fine_tuned_model_checkpoint,
    step_number: row.step,
    metrics: JSON.parse(row.metrics) as FineTuningJobCheckpoint['metrics'],
    fine_tuning_job_id: row.job_id,
  };
}

/** OpenAI's `method` object of a reinforcement job: its grader and hyperparameters (`auto` or resolved). */
export function reinforcementWire(
  settings: JobSettings,
  hyperparameters: Extract<FineTuningJob['method'], { type: 'reinforcement' }>['reinforcement']['hyperparameters'],
): Extract<FineTuningJob['method'], { type: 'reinforcement' }> {
  const rl = settings.reinforcement!;
  return { type: 'reinforcement', reinforcement: { grader: rl.grader, response_format: rl.response_format, hyperparameters } };
}
