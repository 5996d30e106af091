/**
 * Fine-tuning jobs in OpenAI's shape: create, list, retrieve, cancel, pause, resume, events, checkpoints.
 *
 * ```ts
 * const job = createJob(ctx, { model: 'tiny-qwen2', training_file: 'file-…', suffix: 'waimai' });
 * await new Worker(ctx).runNext();           // validates the files, trains, registers ft:tiny-qwen2:waimai:…
 * for await (const e of followJobEvents(ctx, job.id)) console.log(e.message);
 * ```
 * Jobs are rows in the store, so the CLI, the HTTP API and any worker process see the same state; the
 * worker (worker.ts) moves them through the statuses in internal/status.ts, the one transition table.
 * The wire job is OpenAI's FineTuningJob; weitiao's settings and live progress sit in its `weitiao` field.
 */
import { existsSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import type { Context } from '../context.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { Issue } from '../data/index.js';
import { LabelMetrics, PrecisionChoice } from '../engine/protocol.js';
import { retrieveFile } from '../files/index.js';
import { parseGrader } from '../graders/index.js';
import { resolveModel } from '../models/index.js';
import { listPage, newId, now, selectPage, type ListPage } from '../store/index.js';
import { estimateJob, JobEstimate } from '../train/estimate.js';
import {
  LoraSettings,
  pickTrainingControls,
  RequestedHyperparameters,
  ResolvedTrainingControls,
  resolveTrainingControls,
  TrainingControls,
  type Method,
} from '../train/index.js';
import { fileError, jobErrorToThrow, jobFile, resolveJob, validateJobFile, type CheckedFile } from './internal/plan.js';
import { isGroupAlive, STALE_WORKER_SECONDS, stopGroup, workerGone } from './internal/process.js';
import {
  addEvent,
  eventToWire,
  getJobRow,
  parseExtension,
  type CheckpointRow,
  type EventRow,
  type JobExtension,
  type JobRow,
  type JobSettings,
  type WireJobEvent,
} from './internal/records.js';
import { JOB_STATUSES, TERMINAL, transition, transitionError, type JobStatus } from './internal/status.js';

export { JOB_STATUSES, TERMINAL, TRANSITIONS, canTransition, type JobStatus } from './internal/status.js';
export { Worker, type WorkerOptions } from './worker.js';

export { STALE_WORKER_SECONDS } from './internal/process.js';

// ------------------------------------------------------------------------------------------- requests

const auto = <T extends z.ZodType>(t: T) => z.union([z.literal('auto'), t]);

/** OpenAI's supervised hyperparameters; each may be `auto`. */
export const SupervisedHyperparameters = z.strictObject({
  n_epochs: auto(z.number().int().min(1).max(50)).optional(),
  batch_size: auto(z.number().int().min(1).max(256)).optional(),
  learning_rate_multiplier: auto(z.number().positive().max(10)).optional(),
});
export type SupervisedHyperparameters = z.infer<typeof SupervisedHyperparameters>;

/** OpenAI's DPO hyperparameters: the supervised ones plus `beta`; each may be `auto`. */
export const DpoHyperparameters = SupervisedHyperparameters.extend({
  beta: auto(z.number().positive().max(10)).optional(),
});
export type DpoHyperparameters = z.infer<typeof DpoHyperparameters>;

/** OpenAI's reinforcement hyperparameters; each may be `auto`. `compute_multiplier` scales the answers sampled per
 * prompt (REINFORCEMENT_GROUP × it, at least 2); `reasoning_effort` is recorded (the recipe does not reason). */
export const ReinforcementHyperparameters = SupervisedHyperparameters.extend({
  compute_multiplier: auto(z.number().positive().max(16)).optional(),
  eval_interval: auto(z.number().int().min(1)).optional(),
  eval_samples: auto(z.number().int().min(1)).optional(),
  reasoning_effort: z.enum(['default', 'low', 'medium', 'high']).optional(),
});
export type ReinforcementHyperparameters = z.infer<typeof ReinforcementHyperparameters>;

/** Answers per prompt at compute_multiplier 1 (GRPO's group). */
export const REINFORCEMENT_GROUP = 4;

/** DPO's `beta` when `auto`: the DPO paper's and OpenAI's default. */
export const DEFAULT_DPO_BETA = 0.1;

/** OpenAI's metadata: up to 16 string pairs, keys ≤ 64 and values ≤ 512 characters. */
export const Metadata = z
  .record(z.string().min(1).max(64), z.string().max(512))
  .refine((m) => Object.keys(m).length <= 16, { message: 'metadata holds at most 16 keys' });

/** weitiao's own settings: the one extension object of the create request. */
export const WeitiaoJobSettings = z.strictObject({
  /** The supervised recipe: `lora` (an adapter, the default), `qlora` (the same on a 4-bit NF4 base) or `full` (every weight; a complete model). DPO always trains LoRA. */
  method: z.enum(['lora', 'qlora', 'full']).optional(),
  full: z
    .strictObject({
      /** Keep the input embedding (and an LM head tied to it) frozen. */
      freeze_embeddings: z.boolean(),
      /** Keep the first N decoder layers frozen. */
      freeze_layers: z.number().int().min(0),
    })
    .partial()
    .optional(),
  lora: LoraSettings.optional(),
  /** An absolute learning rate, instead of the base rate × `learning_rate_multiplier`. */
  learning_rate: z.number().positive().max(1).optional(),
  weight_decay: z.number().min(0).optional(),
  max_grad_norm: z.number().positive().optional(),
  warmup_ratio: z.number().min(0).max(1).optional(),
  lr_scheduler: z.enum(['linear', 'cosine', 'constant']).optional(),
  eval_every_steps: z.number().int().min(0).optional(),
  save_every_steps: z.number().int().min(0).optional(),
  /** `auto`: use the training file's answers when they form a small label set; null: no label metrics. */
  label_set: z.union([z.literal('auto'), z.null(), z.array(z.string().min(1)).min(2)]).default('auto'),
  /** Stop after this many optimizer steps (smoke runs, tests). */
  max_steps: z.number().int().positive().nullable().optional(),
  max_seq_length: z.number().int().positive().optional(),
  /** Gradient accumulation and checkpointing, early stopping, bf16, length grouping and `nproc` (src/train's TrainingControls). */
  ...TrainingControls.shape,
  /** Validate everything a create would, create nothing, and answer with the resolved settings and the estimate (`weitiao.job_plan`). */
  dry_run: z.boolean().optional(),
});

/** OpenAI's create-job body, plus `weitiao`. */
export const CreateJobParams = z.strictObject({
  model: z.string().min(1),
  training_file: z.string().min(1),
  validation_file: z.string().min(1).nullable().optional(),
  suffix: z
    .string()
    .max(64)
    .regex(/^[\p{L}\p{N}._-]+$/u, 'use letters, digits, ".", "_" or "-" / 只能包含字母、数字、"."、"_"、"-"')
    .nullable()
    .optional(),
  seed: z.number().int().min(0).max(2147483647).nullable().optional(),
  metadata: Metadata.nullable().optional(),
  method: z
    .object({
      type: z.enum(['supervised', 'dpo', 'reinforcement']),
      supervised: z.object({ hyperparameters: SupervisedHyperparameters.optional() }).optional(),
      dpo: z.object({ hyperparameters: DpoHyperparameters.optional() }).optional(),
      reinforcement: z
        .object({
          /** OpenAI's grader JSON (src/graders/schema.ts); checked field by field at creation. */
          grader: z.record(z.string(), z.unknown()),
          hyperparameters: ReinforcementHyperparameters.optional(),
          /** JSON answers (`{{sample.output_json.x}}`): OpenAI's response_format with a json_schema. */
          response_format: z.record(z.string(), z.unknown()).nullable().optional(),
        })
        .optional(),
    })
    .optional(),
  /** Deprecated by OpenAI in favour of `method`, still accepted. */
  hyperparameters: SupervisedHyperparameters.optional(),
  integrations: z.array(z.unknown()).nullable().optional(),
  weitiao: WeitiaoJobSettings.optional(),
});
export type CreateJobParams = z.input<typeof CreateJobParams>;

export const ListJobsParams = z.object({
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(20),
  /** Only jobs whose metadata holds every one of these pairs. */
  metadata: z.record(z.string(), z.string()).optional(),
});
export type ListJobsParams = z.input<typeof ListJobsParams>;

export const ListEventsParams = z.object({
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(20),
  /** `desc` (OpenAI's order: newest first) or `asc` (reading order). */
  order: z.enum(['asc', 'desc']).default('desc'),
});
export type ListEventsParams = z.input<typeof ListEventsParams>;

export const ListCheckpointsParams = z.object({
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(10),
});
export type ListCheckpointsParams = z.input<typeof ListCheckpointsParams>;

// ------------------------------------------------------------------------------------------ wire objects

export const JobStatusSchema = z.enum(JOB_STATUSES);

const ResolvedOrAuto = z.object({
  n_epochs: z.union([z.literal('auto'), z.number()]),
  batch_size: z.union([z.literal('auto'), z.number()]),
  learning_rate_multiplier: z.union([z.literal('auto'), z.number()]),
});

/** OpenAI's FineTuningJob, plus `weitiao`. */
export const FineTuningJob = z.object({
  id: z.string(),
  object: z.literal('fine_tuning.job'),
  created_at: z.number().int(),
  finished_at: z.number().int().nullable(),
  model: z.string(),
  fine_tuned_model: z.string().nullable(),
  organization_id: z.string(),
  result_files: z.array(z.string()),
  status: JobStatusSchema,
  validation_file: z.string().nullable(),
  training_file: z.string(),
  hyperparameters: ResolvedOrAuto,
  method: z.union([
    z.object({ type: z.literal('supervised'), supervised: z.object({ hyperparameters: ResolvedOrAuto }) }),
    z.object({
      type: z.literal('dpo'),
      dpo: z.object({ hyperparameters: ResolvedOrAuto.extend({ beta: z.union([z.literal('auto'), z.number()]) }) }),
    }),
    z.object({
      type: z.literal('reinforcement'),
      reinforcement: z.object({
        grader: z.record(z.string(), z.unknown()),
        response_format: z.record(z.string(), z.unknown()).nullable(),
        hyperparameters: ResolvedOrAuto.extend({
          compute_multiplier: z.union([z.literal('auto'), z.number()]),
          eval_interval: z.union([z.literal('auto'), z.number()]),
          eval_samples: z.union([z.literal('auto'), z.number()]),
          reasoning_effort: z.string(),
        }),
      }),
    }),
  ]),
  trained_tokens: z.number().int().nullable(),
  error: z.object({ code: z.string(), message: z.string(), param: z.string().nullable() }).nullable(),
  seed: z.number().int(),
  estimated_finish: z.number().int().nullable(),
  metadata: z.record(z.string(), z.string()).nullable(),
  suffix: z.string().nullable(),
  user_provided_suffix: z.string().nullable(),
  integrations: z.array(z.unknown()),
  weitiao: z.object({
    /** The engine recipe: `lora`, `full` or `dpo`. */
    method: z.enum(['lora', 'qlora', 'full', 'dpo', 'reinforcement']),
    /** Full fine-tuning's freezing settings (empty for the other methods). */
    full: z.record(z.string(), z.unknown()),
    /** Live progress while running (and where a paused job stopped). */
    progress: z.object({ step: z.number().int(), total_steps: z.number().int(), epoch: z.number() }).nullable(),
    /** Everything the engine was (or will be) given, `auto` resolved once the files were read. */
    hyperparameters: z
      .object({
        n_epochs: z.number(),
        batch_size: z.number(),
        learning_rate: z.number(),
        learning_rate_multiplier: z.number(),
        weight_decay: z.number(),
        max_grad_norm: z.number(),
        warmup_ratio: z.number(),
        lr_scheduler: z.string(),
        /** Which of OpenAI's three were set by the `auto` rules. */
        auto: z.array(z.string()),
        estimated_total_steps: z.number().int(),
      })
      .nullable(),
    lora: z.record(z.string(), z.unknown()),
    /** The training controls the engine is given, its defaults filled in for what the job left out; once trained,
     * `precision_choice`: what `bf16` became on this machine and why (the precision probe's figures). */
    controls: ResolvedTrainingControls.extend({ precision_choice: PrecisionChoice.optional() }),
    eval_every_steps: z.number().int(),
    save_every_steps: z.number().int(),
    max_steps: z.number().int().nullable(),
    label_set: z.union([z.literal('auto'), z.array(z.string())]).nullable(),
    n_examples: z.number().int().nullable(),
    n_validation_examples: z.number().int().nullable(),
    /** Accuracy, per-class precision/recall/F1 and the confusion matrix at the newest epoch end. */
    label_metrics: LabelMetrics.nullable(),
    /** `cancel` or `pause` while the worker acts on it. */
    requested_action: z.enum(['cancel', 'pause']).nullable(),
    /** Times the job's worker was lost and the job resumed from a checkpoint. */
    attempts: z.number().int(),
  }),
});
export type FineTuningJob = z.infer<typeof FineTuningJob>;

export const FineTuningJobEvent = z.object({
  id: z.string(),
  object: z.literal('fine_tuning.job.event'),
  created_at: z.number().int(),
  level: z.enum(['info', 'warn', 'error']),
  message: z.string(),
  type: z.enum(['message', 'metrics']),
  data: z.unknown(),
});
export type FineTuningJobEvent = WireJobEvent;

export const FineTuningJobCheckpoint = z.object({
  id: z.string(),
  object: z.literal('fine_tuning.job.checkpoint'),
  created_at: z.number().int(),
  fine_tuned_model_checkpoint: z.string(),
  step_number: z.number().int(),
  metrics: z.object({
    step: z.number().int(),
    train_loss: z.number().optional(),
    train_mean_token_accuracy: z.number().optional(),
    valid_loss: z.number().optional(),
    valid_mean_token_accuracy: z.number().optional(),
    full_valid_loss: z.number().optional(),
    full_valid_mean_token_accuracy: z.number().optional(),
  }),
  fine_tuning_job_id: z.string(),
});
export type FineTuningJobCheckpoint = z.infer<typeof FineTuningJobCheckpoint>;

/** A dry run's answer (`weitiao.dry_run: true`): what the job would train with, and the estimate; nothing is stored. */
export const JobPlan = z.object({
  object: z.literal('weitiao.job_plan'),
  dry_run: z.literal(true),
  model: z.string(),
  training_file: z.string(),
  validation_file: z.string().nullable(),
  /** OpenAI's method object with `auto` resolved, as the job would show it once its files are validated. */
  method: FineTuningJob.shape.method,
  seed: z.number().int().nullable(),
  weitiao: FineTuningJob.shape.weitiao.pick({
    method: true,
    hyperparameters: true,
    controls: true,
    lora: true,
    full: true,
    label_set: true,
    n_examples: true,
    n_validation_examples: true,
  }),
  /** Warnings the file validation found (the job would train anyway), `file:line` located. */
  warnings: z.array(Issue),
  /** Peak memory, time per epoch and steps (src/train/estimate.ts); null for methods the estimate does not cover. */
  estimate: JobEstimate.nullable(),
  notes: z.array(z.string()),
});
export type JobPlan = z.infer<typeof JobPlan>;

/** OpenAI's list envelope around any wire schema (for OpenAPI). */
export const ListOf = <T extends z.ZodType>(item: T) =>
  z.object({ object: z.literal('list'), data: z.array(item), has_more: z.boolean(), first_id: z.string().nullable(), last_id: z.string().nullable() });

// ------------------------------------------------------------------------------------------ service

/** Creates a job in `validating_files`; `not_found` (param model/training_file/validation_file) for unknown names. */
export function createJob(ctx: Context, params: CreateJobParams): FineTuningJob {
  const { p, model, settings, requested, isDpo, dpoHp, rlHp } = checkCreate(ctx, params);
  if (p.weitiao?.dry_run) {
    throw new WeitiaoError('invalid_request', 'weitiao.dry_run creates nothing: call planJob / 试运行不会创建任务', { param: 'weitiao.dry_run' });
  }
  const hyper = { n_epochs: requested.n_epochs, batch_size: requested.batch_size, learning_rate_multiplier: requested.learning_rate_multiplier };
  const extension: JobExtension = {
    settings,
    requested,
    resolved: null,
    n_examples: null,
    n_validation_examples: null,
    label_set: null,
    progress: null,
    label_metrics: null,
    last_metrics: null,
    last_eval: null,
  };
  const row = {
    id: newId('ftjob'),
    model: model.id,
    training_file: p.training_file,
    validation_file: p.validation_file ?? null,
    status: 'validating_files',
    method: JSON.stringify(
      rlHp
        ? reinforcementWire(settings, { n_epochs: hyper.n_epochs ?? 'auto', batch_size: hyper.batch_size ?? 'auto', learning_rate_multiplier: hyper.learning_rate_multiplier ?? 'auto', ...rlHp })
        : isDpo
          ? { type: 'dpo', dpo: { hyperparameters: { ...hyper, beta: dpoHp?.beta ?? 'auto' } } }
          : { type: 'supervised', supervised: { hyperparameters: hyper } },
    ),
    extension: JSON.stringify(extension),
    suffix: p.suffix ?? null,
    seed: p.seed ?? Math.floor(Math.random() * 2147483647),
    metadata: p.metadata ? JSON.stringify(p.metadata) : null,
    created_at: now(),
  };
  ctx.db.transaction(() => {
    ctx.db
      .prepare(
        `INSERT INTO jobs (id, model, training_file, validation_file, status, method, extension, suffix, seed, metadata, created_at)
         VALUES (@id, @model, @training_file, @validation_file, @status, @method, @extension, @suffix, @seed, @metadata, @created_at)`,
      )
      .run(row);
    addEvent(ctx.db, row.id, { message: `Created fine-tuning job: ${row.id} / 已创建微调任务` });
  })();
  return retrieveJob(ctx, row.id);
}

/** Every check `createJob` makes before it writes anything; what it learned, for createJob and planJob. */
function checkCreate(ctx: Context, params: CreateJobParams) {
  const p = parseParams(CreateJobParams, params);

  const isRl = p.method?.type === 'reinforcement';
  if (isRl) checkReinforcement(p);
  const isDpo = p.method?.type === 'dpo';
  if (isDpo && p.weitiao?.method === 'full') {
    throw new WeitiaoError('invalid_request', "DPO trains a LoRA adapter; weitiao.method 'full' applies to supervised jobs / DPO 只支持 LoRA", {
      param: 'weitiao.method',
    });
  }
  const nproc = p.weitiao?.nproc ?? 1;
  if (isDpo && nproc > 1) {
    throw new WeitiaoError('invalid_request', 'DPO trains in one process; leave weitiao.nproc at 1 / DPO 只支持单进程训练', { param: 'weitiao.nproc' });
  }
  const explicitBatch = (p.method?.dpo?.hyperparameters ?? p.method?.reinforcement?.hyperparameters ?? p.method?.supervised?.hyperparameters ?? p.hyperparameters)?.batch_size;
  if (nproc > 1 && typeof explicitBatch === 'number' && explicitBatch % nproc !== 0) {
    throw new WeitiaoError(
      'invalid_request',
      `batch_size ${explicitBatch} is not a multiple of weitiao.nproc ${nproc}: each process takes an equal share of every batch / batch_size 必须是进程数的整数倍`,
      { param: 'hyperparameters.batch_size' },
    );
  }
  if (p.method?.type === 'supervised' && p.method.dpo) {
    throw new WeitiaoError('invalid_request', "method.dpo is given but method.type is 'supervised' / method.type 与参数不符", { param: 'method.dpo' });
  }
  if (p.integrations?.length) {
    throw new WeitiaoError('invalid_request', 'integrations are not supported / 不支持 integrations', { param: 'integrations' });
  }
  const dpoHp = isDpo ? (p.method?.dpo?.hyperparameters ?? {}) : null;
  const rlGiven = isRl ? (p.method?.reinforcement?.hyperparameters ?? {}) : null;
  const ownHp = dpoHp ?? rlGiven;
  const fromMethod = ownHp ? { n_epochs: ownHp.n_epochs, batch_size: ownHp.batch_size, learning_rate_multiplier: ownHp.learning_rate_multiplier } : p.method?.supervised?.hyperparameters;
  if (fromMethod && p.hyperparameters) {
    throw new WeitiaoError(
      'invalid_request',
      'give hyperparameters in method.supervised.hyperparameters or the legacy top-level hyperparameters, not both / 超参数只能在一处指定',
      { param: 'hyperparameters' },
    );
  }
  const openaiHp = fromMethod ?? p.hyperparameters ?? {};
  const { dry_run: _dryRun, ...given } = p.weitiao ?? { label_set: 'auto' as const };
  const settings: JobSettings = given;
  if (isDpo) settings.dpo = { beta: dpoHp?.beta === undefined || dpoHp.beta === 'auto' ? DEFAULT_DPO_BETA : dpoHp.beta };
  const rlHp = rlGiven
    ? {
        compute_multiplier: rlGiven.compute_multiplier ?? ('auto' as const),
        eval_interval: rlGiven.eval_interval ?? ('auto' as const),
        eval_samples: rlGiven.eval_samples ?? ('auto' as const),
        reasoning_effort: rlGiven.reasoning_effort ?? 'default',
      }
    : null;
  if (rlHp) settings.reinforcement = { grader: p.method!.reinforcement!.grader, response_format: p.method!.reinforcement!.response_format ?? null, ...rlHp };
  const requested = {
    n_epochs: openaiHp.n_epochs ?? 'auto',
    batch_size: openaiHp.batch_size ?? 'auto',
    learning_rate_multiplier: openaiHp.learning_rate_multiplier ?? 'auto',
    learning_rate: settings.learning_rate,
    weight_decay: settings.weight_decay,
    max_grad_norm: settings.max_grad_norm,
    warmup_ratio: settings.warmup_ratio,
    lr_scheduler: settings.lr_scheduler,
  };
  // The same checks the worker's rules will make, now, so a bad combination fails the request, not the job.
  const hpCheck = RequestedHyperparameters.safeParse(requested);
  if (!hpCheck.success) throw new WeitiaoError('invalid_request', z.prettifyError(hpCheck.error), { param: 'hyperparameters' });
  if (requested.learning_rate !== undefined && requested.learning_rate_multiplier !== 'auto') {
    throw new WeitiaoError(
      'invalid_request',
      'give either learning_rate_multiplier or weitiao.learning_rate, not both / 学习率倍数与学习率只能指定一个',
      { param: 'weitiao.learning_rate' },
    );
  }

  let model;
  try {
    model = resolveModel(ctx, p.model);
  } catch (err) {
    const e = WeitiaoError.from(err);
    throw new WeitiaoError(e.code, e.message, { param: 'model', cause: e });
  }
  // A fine-tuned model or checkpoint is a fine base too (continued fine-tuning): the worker merges its adapter first.
  requireTrainingFile(ctx, p.training_file, 'training_file');
  if (p.validation_file) requireTrainingFile(ctx, p.validation_file, 'validation_file');

  return { p, model, settings, requested: hpCheck.data, isDpo, dpoHp, rlHp };
}

/**
 * A dry run of `createJob`: the same checks, then the files validated and `auto` resolved as the worker
 * would, and the estimate; nothing is stored. Bad files are `invalid_file` naming `file:line` and field.
 */
export async function planJob(ctx: Context, params: CreateJobParams, options: { signal?: AbortSignal } = {}): Promise<JobPlan> {
  const { p, model, settings, requested, isDpo, rlHp } = checkCreate(ctx, params);
  const method: Method = rlHp ? 'reinforcement' : isDpo ? 'dpo' : (settings.method ?? 'lora');
  const checked: CheckedFile[] = [];
  for (const param of ['training_file', 'validation_file'] as const) {
    const fileId = p[param];
    if (!fileId) continue;
    const file = jobFile(ctx, param, fileId);
    if ('code' in file) throw jobErrorToThrow(file);
    const result = await validateJobFile(file, param, { method, modelDir: model.basePath, settings });
    const error = fileError(result);
    if (error) throw jobErrorToThrow(error);
    checked.push(result);
  }
  const train = checked[0].report;
  const valid = checked.find((c) => c.param === 'validation_file')?.report ?? null;
  const { resolved, labelSet } = resolveJob({ method, settings, requested, train });
  const hyper = { n_epochs: resolved.n_epochs, batch_size: resolved.batch_size, learning_rate_multiplier: resolved.learning_rate_multiplier };
  const beta = settings.dpo?.beta ?? DEFAULT_DPO_BETA;
  const notes: string[] = [];
  let estimate: JobEstimate | null = null;
  if (method === 'lora' || method === 'qlora') {
    estimate = await estimateJob(
      ctx,
      {
        model: model.id,
        training_file: p.training_file,
        method,
        hyperparameters: { n_epochs: resolved.n_epochs, batch_size: resolved.batch_size, ...(settings.max_seq_length ? { max_seq_length: settings.max_seq_length } : {}) },
        ...(settings.lora ? { lora: settings.lora } : {}),
        ...(settings.gradient_checkpointing !== undefined ? { gradient_checkpointing: settings.gradient_checkpointing } : {}),
        ...(settings.bf16 !== undefined ? { bf16: settings.bf16 } : {}),
        ...(settings.gradient_accumulation_steps !== undefined ? { gradient_accumulation_steps: settings.gradient_accumulation_steps } : {}),
      },
      options,
    );
  } else {
    notes.push(`the memory and time estimate covers lora and qlora, not ${method} yet / 内存与时间预估暂只支持 LoRA 与 QLoRA`);
  }
  return {
    object: 'weitiao.job_plan',
    dry_run: true,
    model: model.id,
    training_file: p.training_file,
    validation_file: p.validation_file ?? null,
    method: rlHp
      ? reinforcementWire(settings, { ...hyper, ...rlHp, ...resolveReinforcement(settings.reinforcement!, resolved.estimated_total_steps, valid?.valid_examples ?? null), reasoning_effort: rlHp.reasoning_effort })
      : isDpo
        ? { type: 'dpo', dpo: { hyperparameters: { ...hyper, beta } } }
        : { type: 'supervised', supervised: { hyperparameters: hyper } },
    seed: p.seed ?? null,
    weitiao: {
      method,
      hyperparameters: resolved,
      controls: resolveTrainingControls(pickTrainingControls(settings)),
      lora: { ...settings.lora },
      full: { ...settings.full },
      label_set: labelSet,
      n_examples: train.valid_examples,
      n_validation_examples: valid ? valid.valid_examples : null,
    },
    warnings: checked.flatMap((c) => c.report.warnings.map((w) => ({ ...w, file: c.file.filename }))),
    estimate,
    notes,
  };
}

/** Jobs, newest first, in OpenAI's cursor pages; `metadata` keeps jobs holding all the given pairs. */
export function listJobs(ctx: Context, params: ListJobsParams = {}): ListPage<FineTuningJob> {
  const p = parseParams(ListJobsParams, params);
  const where: string[] = [];
  const args: unknown[] = [];
  for (const [key, value] of Object.entries(p.metadata ?? {})) {
    where.push(`EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE json_each.key = ? AND json_each.value = ?)`);
    args.push(key, value);
  }
  const page = selectPage<JobRow>(ctx.db, { table: 'jobs', where, params: args, after: p.after, limit: p.limit });
  if (!page) throw jobNotFound(p.after!, 'after');
  return listPage(page.rows.map(jobToWire), page.has_more);
}

/** One job; `not_found` (param `fine_tuning_job_id`) when there is none. */
export function retrieveJob(ctx: Context, id: string): FineTuningJob {
  return jobToWire(requireJob(ctx, id));
}

/**
 * Cancels a job. Not yet running (or paused): cancelled at once. Running: the worker is asked to stop
 * the engine's process group (within seconds) and marks it cancelled; if that worker is gone, the
 * engine is stopped here. `conflict` for a finished job.
 */
export async function cancelJob(ctx: Context, id: string): Promise<FineTuningJob> {
  const row = requireJob(ctx, id);
  if (row.status === 'running' || row.status === 'pausing') {
    if (workerGone(row.worker_id, row.heartbeat_at, STALE_WORKER_SECONDS)) {
      // Nobody will act on a request: stop a left-over engine ourselves, then cancel.
      if (isGroupAlive(row.worker_pid)) await stopGroup(row.worker_pid!, 2000);
      return finishCancel(ctx, id);
    }
    ctx.db.transaction(() => {
      const current = requireJob(ctx, id);
      if (current.status !== 'running' && current.status !== 'pausing') throw transitionError(id, current.status, 'cancelled', 'cancel');
      ctx.db.prepare(`UPDATE jobs SET requested_action = 'cancel' WHERE id = ?`).run(id);
      addEvent(ctx.db, id, { message: 'Cancellation requested / 已请求取消任务' });
    })();
    return retrieveJob(ctx, id);
  }
  return finishCancel(ctx, id);
}

function finishCancel(ctx: Context, id: string): FineTuningJob {
  ctx.db.transaction(() => {
    transition(
      ctx.db,
      id,
      'cancelled',
      { finished_at: now(), requested_action: null, worker_id: null, worker_pid: null, estimated_finish: null },
      { action: 'cancel' },
    );
    addEvent(ctx.db, id, { message: 'The job was cancelled / 任务已取消' });
  })();
  return retrieveJob(ctx, id);
}

/**
 * Pauses a job: running → pausing (the worker sends the engine SIGTERM; it saves a checkpoint and the job
 * becomes paused); queued → paused at once. `conflict` otherwise.
 */
export function pauseJob(ctx: Context, id: string): FineTuningJob {
  ctx.db.transaction(() => {
    const row = requireJob(ctx, id);
    if (row.status === 'queued') {
      transition(ctx.db, id, 'paused', { worker_id: null }, { from: ['queued'], action: 'pause' });
      addEvent(ctx.db, id, { message: 'The job was paused before it started / 任务在开始前已暂停' });
    } else {
      transition(ctx.db, id, 'pausing', { requested_action: 'pause' }, { from: ['running'], action: 'pause' });
      addEvent(ctx.db, id, { message: 'Pause requested: saving a checkpoint / 已请求暂停，正在保存检查点' });
    }
  })();
  return retrieveJob(ctx, id);
}

/**
 * Resumes a paused job, or a failed one that saved a checkpoint: it is queued again and continues from its
 * newest good checkpoint (the engine skips one that does not verify). `conflict` for a failed job with no
 * checkpoint on disk (nothing to resume from) and for every other status.
 */
export function resumeJob(ctx: Context, id: string): FineTuningJob {
  ctx.db.transaction(() => {
    const row = requireJob(ctx, id);
    if (row.status !== 'failed') {
      transition(
        ctx.db,
        id,
        'queued',
        { requested_action: null, worker_id: null, worker_pid: null, estimated_finish: null },
        { from: ['paused'], action: 'resume' },
      );
      addEvent(ctx.db, id, { message: 'The job was resumed and is queued / 任务已继续，正在排队' });
      return;
    }
    const checkpoints = ctx.db.prepare('SELECT step, path FROM checkpoints WHERE job_id = ? ORDER BY step DESC').all(id) as { step: number; path: string }[];
    const usable = checkpoints.filter((c) => existsSync(c.path));
    if (!usable.length) {
      throw new WeitiaoError(
        'conflict',
        `cannot resume job ${id}: it failed before saving a checkpoint, so there is nothing to resume from; create the job again / 任务 ${id} 失败前没有保存检查点，无法继续，请重新创建任务`,
        { param: 'fine_tuning_job_id' },
      );
    }
    // What it trains from must still be there, or the resumed run would only fail again.
    try {
      resolveModel(ctx, row.model);
    } catch (err) {
      const e = WeitiaoError.from(err);
      throw new WeitiaoError('conflict', `cannot resume job ${id}: ${e.message}`, { param: 'model', cause: e });
    }
    for (const param of ['training_file', 'validation_file'] as const) {
      const fileId = row[param];
      if (fileId && !ctx.db.prepare('SELECT 1 FROM files WHERE id = ?').get(fileId)) {
        throw new WeitiaoError('conflict', `cannot resume job ${id}: its ${param} ${fileId} was deleted / 任务的文件 ${fileId} 已被删除，无法继续`, { param });
      }
    }
    const ext = parseExtension(row);
    transition(
      ctx.db,
      id,
      'queued',
      {
        extension: JSON.stringify({ ...ext, crash_streak: 0 }),
        error: null,
        finished_at: null,
        requested_action: null,
        worker_id: null,
        worker_pid: null,
        estimated_finish: null,
      },
      { from: ['failed'], action: 'resume' },
    );
    const step = usable[0].step;
    addEvent(ctx.db, id, {
      message: `The failed job was resumed and is queued; it continues from its last good checkpoint (step ${step} or, if that one is damaged, an older one) / 失败的任务已继续，将从最后一个完好的检查点继续`,
      data: { resumed_after_failure: true, newest_checkpoint_step: step },
    });
  })();
  return retrieveJob(ctx, id);
}

/** A job's events in OpenAI's cursor pages (newest first unless `order: 'asc'`). */
export function listJobEvents(ctx: Context, id: string, params: ListEventsParams = {}): ListPage<FineTuningJobEvent> {
  requireJob(ctx, id);
  const p = parseParams(ListEventsParams, params);
  const page = selectPage<EventRow>(ctx.db, {
    table: 'job_events',
    where: ['job_id = ?'],
    params: [id],
    after: p.after,
    limit: p.limit,
    order: p.order,
    orderBy: 'seq',
  });
  if (!page) throw new WeitiaoError('not_found', `no such event: ${p.after} / 找不到该事件`, { param: 'after' });
  return listPage(page.rows.map(eventToWire), page.has_more);
}

export interface FollowOptions {
  /** Start after this event id (e.g. an SSE client's Last-Event-ID)… */
  after?: string;
  /** …or after this sequence number (0 = from the first event). */
  afterSeq?: number;
  signal?: AbortSignal;
  pollMs?: number;
}

/**
 * A job's events as they happen, oldest first, read from the store (so it follows a worker in another
 * process). Ends once the job is finished or paused and every event has been yielded, or on `signal`.
 */
export async function* followJobEvents(ctx: Context, id: string, options: FollowOptions = {}): AsyncGenerator<FineTuningJobEvent> {
  requireJob(ctx, id);
  let seq = options.afterSeq ?? 0;
  if (options.after !== undefined) {
    const row = ctx.db.prepare('SELECT seq FROM job_events WHERE id = ? AND job_id = ?').get(options.after, id) as { seq: number } | undefined;
    if (!row) throw new WeitiaoError('not_found', `no such event: ${options.after} / 找不到该事件`, { param: 'after' });
    seq = row.seq;
  }
  const next = ctx.db.prepare('SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT 500');
  const status = ctx.db.prepare('SELECT status FROM jobs WHERE id = ?');
  while (!options.signal?.aborted) {
    // Status first: any event written before the job settled is visible to the read that follows.
    const current = (status.get(id) as { status: JobStatus } | undefined)?.status;
    const rows = next.all(id, seq) as EventRow[];
    for (const row of rows) {
      seq = row.seq;
      yield eventToWire(row);
      if (options.signal?.aborted) return;
    }
    if (rows.length === 500) continue;
    if (current === undefined || TERMINAL.includes(current) || current === 'paused') return;
    try {
      await delay(options.pollMs ?? 250, undefined, { signal: options.signal });
    } catch {
      return; // aborted
    }
  }
}

/** A job's checkpoints, newest step first, in OpenAI's cursor pages. */
export function listJobCheckpoints(ctx: Context, id: string, params: ListCheckpointsParams = {}): ListPage<FineTuningJobCheckpoint> {
  requireJob(ctx, id);
  const p = parseParams(ListCheckpointsParams, params);
  const page = selectPage<CheckpointRow>(ctx.db, {
    table: 'checkpoints',
    where: ['job_id = ?'],
    params: [id],
    after: p.after,
    limit: p.limit,
    orderBy: 'step',
  });
  if (!page) throw new WeitiaoError('not_found', `no such checkpoint: ${p.after} / 找不到该检查点`, { param: 'after' });
  return listPage(page.rows.map(checkpointToWire), page.has_more);
}

// ------------------------------------------------------------------------------------------ helpers

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

function checkpointToWire(row: CheckpointRow): FineTuningJobCheckpoint {
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

function requireJob(ctx: Context, id: string): JobRow {
  const row = getJobRow(ctx.db, id);
  if (!row) throw jobNotFound(id);
  return row;
}

function jobNotFound(id: string, param = 'fine_tuning_job_id'): WeitiaoError {
  return new WeitiaoError('not_found', `no such fine-tuning job: ${id} / 找不到微调任务 ${id}`, { param });
}

function requireTrainingFile(ctx: Context, id: string, param: 'training_file' | 'validation_file'): void {
  let file;
  try {
    file = retrieveFile(ctx, id);
  } catch (err) {
    const e = WeitiaoError.from(err);
    if (e.code !== 'not_found') throw e;
    throw new WeitiaoError('not_found', `${param} '${id}' not found; upload it first (\`weitiao files upload\`) / 找不到文件 ${id}`, {
      param,
    });
  }
  if (file.purpose !== 'fine-tune') {
    throw new WeitiaoError(
      'invalid_request',
      `${param} '${id}' has purpose '${file.purpose}'; upload it with purpose 'fine-tune' / 文件用途须为 fine-tune`,
      { param },
    );
  }
}

/** Parses service parameters: every problem in the message, the first one's path as `param`. */
function parseParams<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new WeitiaoError('invalid_request', z.prettifyError(parsed.error), { param: issue?.path.map(String).join('.') || undefined });
  }
  return parsed.data;
}

// ------------------------------------------------------------------------------------------ reinforcement

/** The create request's reinforcement checks: a grader in OpenAI's shapes (400 naming the field, e.g.
 * `method.reinforcement.grader.operation`), no settings of the other methods. */
function checkReinforcement(p: z.output<typeof CreateJobParams>): void {
  const rl = p.method?.reinforcement;
  if (!rl) {
    throw new WeitiaoError('invalid_request', 'method.reinforcement.grader is required for method reinforcement / 强化微调需要评分器', {
      param: 'method.reinforcement.grader',
    });
  }
  parseGrader(rl.grader, 'method.reinforcement.grader');
  if (p.method?.supervised || p.method?.dpo || p.hyperparameters) {
    const param = p.method?.supervised ? 'method.supervised' : p.method?.dpo ? 'method.dpo' : 'hyperparameters';
    throw new WeitiaoError('invalid_request', `${param} is given but method.type is 'reinforcement' / method.type 与参数不符`, { param });
  }
  if (p.weitiao?.method === 'qlora') {
    throw new WeitiaoError('invalid_request', "reinforcement trains a LoRA adapter or every weight ('full'), not qlora / 强化微调不支持 QLoRA", {
      param: 'weitiao.method',
    });
  }
  if ((p.weitiao?.nproc ?? 1) > 1) {
    throw new WeitiaoError('invalid_request', 'reinforcement trains in one process; leave weitiao.nproc at 1 / 强化微调只支持单进程训练', { param: 'weitiao.nproc' });
  }
}

/** OpenAI's `method` object of a reinforcement job: its grader and hyperparameters (`auto` or resolved). */
export function reinforcementWire(
  settings: JobSettings,
  hyperparameters: Extract<FineTuningJob['method'], { type: 'reinforcement' }>['reinforcement']['hyperparameters'],
): Extract<FineTuningJob['method'], { type: 'reinforcement' }> {
  const rl = settings.reinforcement!;
  return { type: 'reinforcement', reinforcement: { grader: rl.grader, response_format: rl.response_format, hyperparameters } };
}

/** `auto` resolved: answers per prompt, validation every N steps (about ten evaluations a run), validation prompts (≤ 64). */
export function resolveReinforcement(
  rl: NonNullable<JobSettings['reinforcement']>,
  totalSteps: number,
  nValidation: number | null,
): { compute_multiplier: number; samples_per_prompt: number; eval_interval: number; eval_samples: number } {
  const multiplier = rl.compute_multiplier === 'auto' ? 1 : rl.compute_multiplier;
  return {
    compute_multiplier: multiplier,
    samples_per_prompt: Math.max(2, Math.round(REINFORCEMENT_GROUP * multiplier)),
    eval_interval: rl.eval_interval === 'auto' ? Math.max(1, Math.ceil(totalSteps / 10)) : rl.eval_interval,
    eval_samples: rl.eval_samples === 'auto' ? Math.min(64, nValidation ?? 64) : rl.eval_samples,
  };
}
