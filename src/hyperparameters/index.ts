/**
 * Training requests: the `auto` hyperparameter rules, and a job's settings → the engine's TrainRequest.
 *
 * The `auto` rules (OpenAI's, from its fine-tuning guide and cookbook, with a CPU cap on batch size):
 *
 * | setting                    | auto rule                                                                      | range    |
 * | -------------------------- | ------------------------------------------------------------------------------ | -------- |
 * | `n_epochs`                 | 3, then adjusted so n_examples × n_epochs stays within [100, 25000]:           | 1 … 25   |
 * |                            | below 100 → ⌈100 / n⌉; above 25000 → ⌊25000 / n⌋                               |          |
 * | `batch_size`               | 0.2 % of n_examples, rounded to the nearest power of two (in log scale)        | 1 … 64 on CPU, 1 … 256 on GPU |
 * | `learning_rate_multiplier` | 1                                                                              | > 0, ≤ 10 |
 * | learning rate              | the method's base rate (LoRA: 2e-4) × the multiplier; an explicit              | > 0      |
 * |                            | `weitiao.learning_rate` replaces both (the multiplier is then reported as      |          |
 * |                            | learning_rate / base)                                                          |          |
 *
 * Edge cases: 1 example → 25 epochs (⌈100/1⌉ capped at 25); 20 examples → 5 epochs (⌈100/20⌉); 64 examples → 3 epochs,
 * batch 1; 8,390 examples (waimai's 70 % split) → 2 epochs (3 × 8,390 > 25,000), batch 16; 100,000 examples → 1 epoch
 * (⌊25000/100000⌋ = 0, raised to 1), batch 64 on CPU (0.2 % = 200 → 256, capped).
 * An explicit batch size larger than the data is cut to n_examples (a batch cannot hold more than all of it).
 */
import { z } from 'zod';
import { parseOrThrow, WeitiaoError } from '../errors.js';
import {
  DpoConfig,
  FullConfig,
  LoraConfig,
  ReinforcementConfig,
  TrainHyperparameters,
  TrainRequest,
  type TrainRequest as TrainRequestInput,
} from '../engine/protocol.js';

// Every training setting is declared once, in the engine protocol (src/engine/protocol.ts, mirrored by
// engine/weitiao_engine/protocol.py); the job, estimate, console and CLI schemas below are views of it,
// and its defaults are the only ones.

export type Method = 'lora' | 'qlora' | 'full' | 'dpo' | 'reinforcement';

/** Each method's base learning rate (multiplier 1). */
export const BASE_LEARNING_RATE: Record<Method, number> = {
  // LoRA trains small low-rank matrices from zero: it wants ~10× a full fine-tune's rate (PEFT/QLoRA papers use 1e-4…3e-4).
  lora: 2e-4,
  // QLoRA trains the same adapters on a 4-bit base: the QLoRA paper's 2e-4 for models up to 13B.
  qlora: 2e-4,
  // Every weight moves: the usual full fine-tuning rate for 0.5B–7B chat models.
  full: 2e-5,
  // DPO with a LoRA policy: a quarter of LoRA SFT's rate; the policy starts at the reference and only a small move is wanted.
  dpo: 5e-5,
  // Reinforcement (GRPO) with a LoRA policy: as DPO, the policy should move in small steps from the base it samples with.
  reinforcement: 5e-5,
};

export const EPOCH_RULE = { default: 3, minTrainedExamples: 100, maxTrainedExamples: 25000, min: 1, max: 25 } as const;
export const BATCH_RULE = { fraction: 0.002, min: 1, maxCpu: 64, maxGpu: 256 } as const;

/** DPO's `beta` when `auto` or left out: the protocol's default (the DPO paper's and OpenAI's 0.1). */
export const DEFAULT_DPO_BETA = DpoConfig.parse({}).beta;

const auto = <T extends z.ZodType>(t: T) => z.union([z.literal('auto'), t]);

type Optional<S extends z.ZodRawShape> = { [K in keyof S]: S[K] extends z.ZodDefault<infer T> ? z.ZodOptional<T> : z.ZodOptional<S[K]> };
type WithoutDefaults<S extends z.ZodRawShape> = { [K in keyof S]: S[K] extends z.ZodDefault<infer T> ? T : S[K] };

/** The same fields, each optional and without its default: what a user may set (the engine's default applies to the rest). */
function optionalFields<S extends z.ZodRawShape>(shape: S): Optional<S> {
  const out: Record<string, z.ZodType> = {};
  for (const [key, field] of Object.entries(shape)) out[key] = ((field instanceof z.ZodDefault ? field.unwrap() : field) as z.ZodType).optional();
  return out as Optional<S>;
}

/** The same fields without their defaults: what a resolved value is. */
function requiredFields<S extends z.ZodRawShape>(shape: S): WithoutDefaults<S> {
  const out: Record<string, z.ZodType> = {};
  for (const [key, field] of Object.entries(shape)) out[key] = (field instanceof z.ZodDefault ? field.unwrap() : field) as z.ZodType;
  return out as unknown as WithoutDefaults<S>;
}

const HP = TrainHyperparameters.shape;

/** OpenAI's three hyperparameters, each a number or `auto` (the rules above); the API's bounds on the protocol's fields. */
export const SupervisedHyperparameters = z.strictObject({
  n_epochs: auto(HP.n_epochs.max(50)).optional(),
  batch_size: auto(HP.batch_size.max(256)).optional(),
  learning_rate_multiplier: auto(z.number().positive().max(10)).optional(),
});
export type SupervisedHyperparameters = z.infer<typeof SupervisedHyperparameters>;

/** DPO's `beta`, the protocol's field, as OpenAI's hyperparameter (a number up to 10, or `auto`). */
export const DpoBeta = auto(DpoConfig.shape.beta.unwrap().max(10));

/** AdamW's and the learning-rate schedule's settings, with the engine's defaults. */
export const OptimizerSettings = TrainHyperparameters.pick({ weight_decay: true, max_grad_norm: true, warmup_ratio: true, lr_scheduler: true });
const OPTIMIZER_DEFAULTS = OptimizerSettings.parse({});

/** An absolute learning rate, instead of the base rate × `learning_rate_multiplier` (at most 1). */
const LearningRate = HP.learning_rate.max(1);

/** The hyperparameters a user may ask for: OpenAI's three (each may be `auto`) plus weitiao's optimiser settings. */
export const RequestedHyperparameters = z.object({
  ...SupervisedHyperparameters.shape,
  learning_rate: LearningRate.optional(),
  ...optionalFields(OptimizerSettings.shape),
});
export type RequestedHyperparameters = z.infer<typeof RequestedHyperparameters>;

/** What the `auto` rules resolve (a job's wire `weitiao.hyperparameters`): the engine's values plus OpenAI's multiplier. */
export const ResolvedHyperparameters = z.object({
  ...TrainHyperparameters.pick({ n_epochs: true, batch_size: true, learning_rate: true }).shape,
  learning_rate_multiplier: z.number(),
  ...requiredFields(OptimizerSettings.shape),
  /** Which of OpenAI's three were chosen by the `auto` rules. */
  auto: z.array(z.enum(['n_epochs', 'batch_size', 'learning_rate_multiplier'])),
  /** ⌈n_examples / batch_size⌉ × n_epochs: what the engine will run unless `max_steps` stops it first. */
  estimated_total_steps: z.number().int(),
});
export type ResolvedHyperparameters = z.infer<typeof ResolvedHyperparameters>;

/** The run's settings beside the hyperparameters a job may give (each optional: the engine's default applies). */
export const RunSettings = z.object({
  learning_rate: LearningRate.optional(),
  ...optionalFields(OptimizerSettings.shape),
  ...optionalFields(TrainRequest.pick({ eval_every_steps: true, save_every_steps: true, max_steps: true }).shape),
  max_seq_length: HP.max_seq_length.unwrap().optional(),
});

export interface ResolveHyperparametersInput {
  /** The job's real example count: the valid examples of its training file. */
  n_examples: number;
  requested?: RequestedHyperparameters;
  method?: Method;
  device?: 'cpu' | 'cuda';
  /** Training processes (of every node: nproc × nodes): each takes an equal share of a batch, so an `auto` batch rounds up to a multiple. */
  nproc?: number;
}

/** Applies the `auto` rules above, once per job; throws `invalid_request` for values out of range. */
export function resolveHyperparameters(input: ResolveHyperparametersInput): ResolvedHyperparameters {
  const { n_examples } = input;
  const method = input.method ?? 'lora';
  if (!Number.isInteger(n_examples) || n_examples < 1) {
    throw new WeitiaoError('invalid_request', `the training file has no usable examples (${n_examples}) / 训练文件没有可用的样本`, {
      param: 'training_file',
    });
  }
  const req = parseOrThrow(RequestedHyperparameters, input.requested ?? {}, { where: { en: 'hyperparameters', zh: '超参数' }, param: 'hyperparameters' });
  const autoKeys: ResolvedHyperparameters['auto'] = [];

  let n_epochs: number;
  if (req.n_epochs === undefined || req.n_epochs === 'auto') {
    autoKeys.push('n_epochs');
    n_epochs = autoEpochs(n_examples);
  } else n_epochs = req.n_epochs;

  let batch_size: number;
  if (req.batch_size === undefined || req.batch_size === 'auto') {
    autoKeys.push('batch_size');
    batch_size = autoBatchSize(n_examples, input.device ?? 'cpu');
    // Under torchrun every process takes an equal share of each batch.
    const nproc = input.nproc ?? 1;
    if (batch_size % nproc !== 0) batch_size = Math.ceil(batch_size / nproc) * nproc;
  } else batch_size = Math.min(req.batch_size, n_examples);

  const base = BASE_LEARNING_RATE[method];
  const multiplierGiven = req.learning_rate_multiplier !== undefined && req.learning_rate_multiplier !== 'auto';
  if (req.learning_rate !== undefined && multiplierGiven) {
    throw new WeitiaoError(
      'invalid_request',
      'give either learning_rate_multiplier or weitiao.learning_rate, not both / 学习率倍数与学习率只能指定一个',
      { param: 'weitiao.learning_rate' },
    );
  }
  let learning_rate: number;
  let learning_rate_multiplier: number;
  if (req.learning_rate !== undefined) {
    learning_rate = req.learning_rate;
    learning_rate_multiplier = learning_rate / base;
  } else {
    if (!multiplierGiven) autoKeys.push('learning_rate_multiplier');
    learning_rate_multiplier = multiplierGiven ? (req.learning_rate_multiplier as number) : 1;
    learning_rate = base * learning_rate_multiplier;
  }

  const optimizer = { ...OPTIMIZER_DEFAULTS };
  for (const key of Object.keys(OPTIMIZER_DEFAULTS) as Array<keyof typeof OPTIMIZER_DEFAULTS>) if (req[key] !== undefined) Object.assign(optimizer, { [key]: req[key] });
  return {
    n_epochs,
    batch_size,
    learning_rate_multiplier,
    learning_rate,
    ...optimizer,
    auto: autoKeys,
    estimated_total_steps: Math.ceil(n_examples / batch_size) * n_epochs,
  };
}

/** 3 epochs, adjusted so the model sees between 100 and 25,000 examples in all; 1 … 25. */
export function autoEpochs(n_examples: number): number {
  let epochs: number = EPOCH_RULE.default;
  if (n_examples * epochs < EPOCH_RULE.minTrainedExamples) epochs = Math.ceil(EPOCH_RULE.minTrainedExamples / n_examples);
  else if (n_examples * epochs > EPOCH_RULE.maxTrainedExamples) epochs = Math.floor(EPOCH_RULE.maxTrainedExamples / n_examples);
  return Math.min(EPOCH_RULE.max, Math.max(EPOCH_RULE.min, epochs));
}

/** 0.2 % of the examples, to the nearest power of two; 1 … 64 on CPU (memory and step time), 1 … 256 on GPU. */
export function autoBatchSize(n_examples: number, device: 'cpu' | 'cuda' = 'cpu'): number {
  const target = n_examples * BATCH_RULE.fraction;
  const power = target <= 1 ? 1 : 2 ** Math.round(Math.log2(target));
  const max = device === 'cpu' ? BATCH_RULE.maxCpu : BATCH_RULE.maxGpu;
  return Math.min(max, Math.max(BATCH_RULE.min, power));
}

export interface BuildTrainRequestInput {
  /** The base model's directory (HF format). */
  basePath: string;
  /** The job's directory; checkpoints and the final model go under it. */
  outputDir: string;
  trainingFile: string;
  validationFile?: string | null;
  hyperparameters: ResolvedHyperparameters;
  seed: number;
  lora?: z.infer<typeof LoraSettings>;
  /** The engine recipe (default `lora`). */
  method?: Method;
  full?: z.infer<typeof FullSettings>;
  dpo?: { beta?: number };
  /** Reinforcement: the grader and sampling settings (src/engine/protocol.ts ReinforcementConfig). */
  reinforcement?: z.input<typeof ReinforcementConfig>;
  /** Continued fine-tuning: the adapter of a fine-tuned base, merged into `basePath` before training. */
  baseAdapter?: string | null;
  labelSet?: string[] | null;
  evalEverySteps?: number;
  saveEverySteps?: number;
  maxSteps?: number | null;
  maxSeqLength?: number;
  /** Training controls passed to the engine as they are (its defaults apply to what is left out). */
  controls?: TrainingControls;
  resume?: boolean;
  threads?: number | null;
}

const CONTROL_FIELDS = {
  gradient_accumulation_steps: true,
  gradient_checkpointing: true,
  early_stopping_patience: true,
  early_stopping_min_delta: true,
  bf16: true,
  group_by_length: true,
  long_examples: true,
} as const;

/** The engine's own controls with their defaults (src/engine/protocol.ts), plus `nproc` from the request. */
export const ResolvedTrainingControls = TrainHyperparameters.pick(CONTROL_FIELDS).extend({ nproc: TrainRequest.shape.nproc });
export type ResolvedTrainingControls = z.output<typeof ResolvedTrainingControls>;

/** LoRA's settings a job or an estimate may give (each optional; the engine fills the rest). */
export const LoraSettings = z.strictObject(optionalFields(LoraConfig.shape));

/** Full fine-tuning's freezing settings a job may give. */
export const FullSettings = z.strictObject(optionalFields(FullConfig.shape));

/**
 * The training controls a job may set: gradient accumulation and checkpointing, early stopping, bf16,
 * length grouping (the engine protocol's names and ranges, derived from it) and `nproc`, the number of
 * training processes (the engine runs itself under torchrun when above 1).
 */
export const TrainingControls = z.strictObject(optionalFields(ResolvedTrainingControls.shape));
export type TrainingControls = z.infer<typeof TrainingControls>;

/** The controls' field names, to pick them out of a job's settings. */
export const TRAINING_CONTROL_KEYS = Object.keys(TrainingControls.shape) as Array<keyof TrainingControls>;

/** The controls out of any settings object that holds them (e.g. a job's `weitiao` settings). */
export function pickTrainingControls(settings: Partial<TrainingControls>): TrainingControls {
  const out: Record<string, unknown> = {};
  for (const key of TRAINING_CONTROL_KEYS) if (settings[key] !== undefined) out[key] = settings[key];
  return out as TrainingControls;
}

/** What the engine will use: the given controls with the protocol's defaults for the rest. */
export function resolveTrainingControls(controls: TrainingControls = {}): ResolvedTrainingControls {
  return ResolvedTrainingControls.parse(pickTrainingControls(controls));
}

/** One line naming the training controls a run uses (the engine's defaults included). */
export function describeTrainingControls(c: ResolvedTrainingControls): string {
  const early = c.early_stopping_patience === null ? 'off' : `patience ${c.early_stopping_patience}, min delta ${c.early_stopping_min_delta}`;
  return (
    `gradient accumulation ${c.gradient_accumulation_steps}, gradient checkpointing ${String(c.gradient_checkpointing)}, ` +
    `early stopping ${early}, bf16 ${c.bf16}, group by length ${c.group_by_length}, processes ${c.nproc}`
  );
}

/** The engine's `train` request for resolved settings, validated against the protocol schema. */
export function buildTrainRequest(input: BuildTrainRequestInput): TrainRequestInput {
  const hp = input.hyperparameters;
  const { nproc, ...controls } = pickTrainingControls(input.controls ?? {});
  const request: TrainRequestInput = {
    base_model: input.basePath,
    output_dir: input.outputDir,
    training_file: input.trainingFile,
    validation_file: input.validationFile ?? null,
    method: input.method ?? 'lora',
    lora: input.lora ?? {},
    ...(input.full ? { full: input.full } : {}),
    ...(input.dpo ? { dpo: input.dpo } : {}),
    ...(input.reinforcement ? { reinforcement: input.reinforcement } : {}),
    base_adapter: input.baseAdapter ?? null,
    hyperparameters: {
      n_epochs: hp.n_epochs,
      batch_size: hp.batch_size,
      learning_rate: hp.learning_rate,
      weight_decay: hp.weight_decay,
      max_grad_norm: hp.max_grad_norm,
      warmup_ratio: hp.warmup_ratio,
      lr_scheduler: hp.lr_scheduler,
      seed: input.seed,
      ...(input.maxSeqLength !== undefined ? { max_seq_length: input.maxSeqLength } : {}),
      ...controls,
    },
    eval_every_steps: input.evalEverySteps ?? 0,
    save_every_steps: input.saveEverySteps ?? 0,
    label_set: input.labelSet ?? null,
    resume: input.resume ?? false,
    max_steps: input.maxSteps ?? null,
    threads: input.threads ?? null,
    // Sent only when it asks for more than one process: an engine without scale-out still takes the request.
    ...(nproc !== undefined && nproc > 1 ? { nproc } : {}),
  };
  parseOrThrow(TrainRequest, request, { where: { en: 'training settings', zh: '训练设置' } });
  return request;
}
