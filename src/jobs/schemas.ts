/**
 * The jobs' schemas: OpenAI's create/list parameters with weitiao's `weitiao` extension object, and the wire
 * objects (FineTuningJob, its events and checkpoints, a dry run's JobPlan). Routes validate and document
 * (/openapi.json) with these; the service parses its parameters with `parseParams`.
 */
import { z } from 'zod';
import { Issue } from '../data/index.js';
import { EvalJobSettings } from '../eval/job-settings.js';
import { LabelMetrics, PrecisionChoice, ResponseFormat } from '../engine/protocol.js';
import { parseOrThrow } from '../errors.js';
import { JobEstimate } from '../hyperparameters/estimate.js';
import {
  DEFAULT_DPO_BETA,
  DpoBeta,
  FullSettings,
  LoraSettings,
  ResolvedHyperparameters,
  ResolvedTrainingControls,
  RunSettings,
  SupervisedHyperparameters,
  TrainingControls,
} from '../hyperparameters/index.js';
import type { WireJobEvent } from './internal/records.js';
import { JOB_STATUSES } from './internal/status.js';

// ------------------------------------------------------------------------------------------- requests

const auto = <T extends z.ZodType>(t: T) => z.union([z.literal('auto'), t]);

/** OpenAI's supervised hyperparameters (each may be `auto`) and DPO's default beta: src/hyperparameters's, from the engine protocol. */
export { DEFAULT_DPO_BETA, SupervisedHyperparameters };

/** OpenAI's DPO hyperparameters: the supervised ones plus `beta`; each may be `auto`. */
export const DpoHyperparameters = SupervisedHyperparameters.extend({
  beta: DpoBeta.optional(),
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

/** OpenAI's metadata: up to 16 string pairs, keys ≤ 64 and values ≤ 512 characters. */
export const Metadata = z
  .record(z.string().min(1).max(64), z.string().max(512))
  .refine((m) => Object.keys(m).length <= 16, { message: 'metadata holds at most 16 keys' });

/** weitiao's own settings: the one extension object of the create request. */
export const WeitiaoJobSettings = z.strictObject({
  /** The supervised recipe: `lora` (an adapter, the default), `qlora` (the same on a 4-bit NF4 base) or `full` (every weight; a complete model). DPO always trains LoRA. */
  method: z.enum(['lora', 'qlora', 'full']).optional(),
  /** Keep the embeddings or the first N decoder layers frozen (the protocol's FullConfig). */
  full: FullSettings.optional(),
  lora: LoraSettings.optional(),
  /** learning_rate (absolute, instead of base × multiplier), the optimizer's and schedule's, eval/save_every_steps, max_steps, max_seq_length (src/hyperparameters's RunSettings). */
  ...RunSettings.shape,
  /** `auto`: use the training file's answers when they form a small label set; null: no label metrics. */
  label_set: z.union([z.literal('auto'), z.null(), z.array(z.string().min(1)).min(2)]).default('auto'),
  /** Gradient accumulation and checkpointing, early stopping, bf16, length grouping and `nproc` (src/hyperparameters's TrainingControls). */
  ...TrainingControls.shape,
  /**
   * Hosts of a multi-node run (default 1): the job is claimed by that many remote workers, which train it
   * together under torchrun (each with `nproc` processes; the batch is shared by nodes × nproc). Local workers never run it.
   */
  nodes: z.number().int().min(1).max(64).optional(),
  /** After success, score base and fine-tune on the shipped general-ability set (src/eval's forgetting check). */
  ...EvalJobSettings.shape,
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
          /** JSON answers (`{{sample.output_json.x}}`): OpenAI's response_format with a json_schema; a mismatch scores 0. */
          response_format: ResponseFormat.nullable().optional(),
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
        response_format: ResponseFormat.nullable(),
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
    hyperparameters: ResolvedHyperparameters.nullable(),
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
  /** Peak memory, time per epoch and steps (src/hyperparameters/estimate.ts); null for methods the estimate does not cover. */
  estimate: JobEstimate.nullable(),
  notes: z.array(z.string()),
});
export type JobPlan = z.infer<typeof JobPlan>;

/** OpenAI's list envelope around any wire schema (for OpenAPI). */
export const ListOf = <T extends z.ZodType>(item: T) =>
  z.object({ object: z.literal('list'), data: z.array(item), has_more: z.boolean(), first_id: z.string().nullable(), last_id: z.string().nullable() });

/** Parses service parameters: every problem in the message, the first one's path as `param`. */
export function parseParams<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  return parseOrThrow(schema, input);
}
