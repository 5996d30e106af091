/**
 * The pre-launch estimate: peak memory and time per epoch of a training run, from the engine's `estimate`
 * command (engine/weitiao_engine/estimate.py), which tokenizes the data as `train` would, measures the
 * activations of a one-layer copy of the model and times this machine's matmuls.
 *
 * ```ts
 * const e = await estimateJob(ctx, { model: 'qwen2.5-0.5b', training_file: 'file-…', method: 'qlora', hyperparameters: { batch_size: 8 } });
 * e.peak_memory_bytes; e.time_per_epoch_seconds; e.total_seconds;
 * ```
 * `estimateJob` resolves `auto` (the job rules, on the file's line count: there is no job to validate it);
 * a job's plan and the console, which have resolved their run once, call `estimateRun` with it.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../context.js';
import { runEngine } from '../engine/index.js';
import { EstimateResult, type EstimateRequest } from '../engine/protocol.js';
import { parseOrThrow, WeitiaoError } from '../errors.js';
import { fileContentPath, retrieveFile } from '../files/index.js';
import { resolveModelParam } from '../models/index.js';
import { LoraSettings, resolveHyperparameters, RunSettings, SupervisedHyperparameters, TrainingControls } from './index.js';

export const EstimateParams = z.strictObject({
  /** A registered model id or a model directory. */
  model: z.string().min(1),
  /** A stored file id (`file-…`) or a path to a chat JSONL file. */
  training_file: z.string().min(1),
  hyperparameters: SupervisedHyperparameters.pick({ n_epochs: true, batch_size: true }).extend({ max_seq_length: RunSettings.shape.max_seq_length }).optional(),
  /** `lora` (default) or `qlora` (the base's linear layers in 4-bit NF4). */
  method: z.enum(['lora', 'qlora']).optional(),
  lora: LoraSettings.optional(),
  threads: z.number().int().positive().optional(),
  /** As the job's training controls of the same names (they change the activations and the speed). */
  ...TrainingControls.pick({ gradient_checkpointing: true, bf16: true, gradient_accumulation_steps: true }).shape,
});
export type EstimateParams = z.input<typeof EstimateParams>;

/** The same for a run whose epochs and batch size were resolved already (once per job, on its real example count). */
export const EstimateRunParams = EstimateParams.extend({
  hyperparameters: z.strictObject({
    n_epochs: z.number().int().positive(),
    batch_size: z.number().int().positive(),
    max_seq_length: RunSettings.shape.max_seq_length,
  }),
});
export type EstimateRunParams = z.input<typeof EstimateRunParams>;

/** The engine's estimate with the resolved epochs and batch size of the run it is about. */
export const JobEstimate = EstimateResult.extend({
  object: z.literal('weitiao.estimate'),
  model: z.string(),
  n_epochs: z.number().int(),
  batch_size: z.number().int(),
  /** `time_per_epoch_seconds × n_epochs`. */
  total_seconds: z.number(),
});
export type JobEstimate = z.infer<typeof JobEstimate>;

/** Engine estimates by request, data file and model version (a few seconds each; the console asks as its form changes). */
const estimateCache = new Map<string, EstimateResult>();
const ESTIMATE_CACHE_SIZE = 32;

/** Predicts peak memory and time for training `model` on `training_file`; `auto` batch size and epochs follow the job rules. */
export async function estimateJob(ctx: Context, params: EstimateParams, options: { signal?: AbortSignal } = {}): Promise<JobEstimate> {
  const p = parseOrThrow(EstimateParams, params);
  const file = trainingFilePath(ctx, p.training_file);
  // `auto` needs the number of examples: one per non-empty JSONL line (the engine validates each of them).
  const n_examples = readFileSync(file, 'utf8').split('\n').filter((line) => line.trim()).length;
  const hp = resolveHyperparameters({
    n_examples,
    requested: { n_epochs: p.hyperparameters?.n_epochs ?? 'auto', batch_size: p.hyperparameters?.batch_size ?? 'auto' },
    method: p.method ?? 'lora',
  });
  const max_seq_length = p.hyperparameters?.max_seq_length;
  return estimateRun(ctx, { ...p, hyperparameters: { n_epochs: hp.n_epochs, batch_size: hp.batch_size, ...(max_seq_length !== undefined ? { max_seq_length } : {}) } }, options);
}

/** `estimateJob` for epochs and batch size resolved by the caller: the engine's estimate, no `auto` rules. */
export async function estimateRun(ctx: Context, params: EstimateRunParams, options: { signal?: AbortSignal } = {}): Promise<JobEstimate> {
  const p = parseOrThrow(EstimateRunParams, params);
  const hp = p.hyperparameters;
  const model = resolveModelParam(ctx, p.model);
  const file = trainingFilePath(ctx, p.training_file);
  const method = p.method ?? 'lora';
  const request: EstimateRequest = {
    base_model: model.basePath,
    training_file: file,
    method,
    lora: p.lora ?? {},
    batch_size: hp.batch_size,
    ...(hp.max_seq_length !== undefined ? { max_seq_length: hp.max_seq_length } : {}),
    threads: p.threads ?? null,
    ...(p.gradient_checkpointing !== undefined ? { gradient_checkpointing: p.gradient_checkpointing } : {}),
    ...(p.bf16 !== undefined ? { bf16: p.bf16 } : {}),
    ...(p.gradient_accumulation_steps !== undefined ? { gradient_accumulation_steps: p.gradient_accumulation_steps } : {}),
  };
  // The engine's answer does not depend on the epochs: a form that changes only those is answered at once.
  const key = [JSON.stringify(request), ...[file, path.join(model.basePath, 'config.json')].map((f) => statSync(f, { throwIfNoEntry: false })?.mtimeMs ?? 0)].join('\0');
  let result = estimateCache.get(key);
  if (!result) {
    // The precision probe's figures are cached in the home, shared with `train` (engine training/precision_probe.py).
    result = await runEngine('estimate', request, { signal: options.signal, env: { WEITIAO_CACHE_DIR: ctx.home.cache } });
    if (estimateCache.size >= ESTIMATE_CACHE_SIZE) estimateCache.delete(estimateCache.keys().next().value!);
    estimateCache.set(key, result);
  }
  return {
    object: 'weitiao.estimate',
    model: model.id,
    n_epochs: hp.n_epochs,
    batch_size: hp.batch_size,
    total_seconds: result.time_per_epoch_seconds * hp.n_epochs,
    ...result,
  };
}

function trainingFilePath(ctx: Context, ref: string): string {
  if (/^file-/.test(ref) && !existsSync(ref)) {
    try {
      retrieveFile(ctx, ref);
    } catch (err) {
      const e = WeitiaoError.from(err);
      throw new WeitiaoError(e.code, `training_file '${ref}' not found / 找不到训练文件 ${ref}`, { param: 'training_file', cause: e });
    }
    return fileContentPath(ctx, ref);
  }
  const abs = path.resolve(ref);
  if (!existsSync(abs) || !statSync(abs).isFile()) {
    throw new WeitiaoError('not_found', `training file not found: ${ref} / 找不到训练文件：${ref}`, { param: 'training_file' });
  }
  return abs;
}
