/**
 * "Was fine-tuning worth it?": the base model zero-shot, the base model with k training examples in its
 * prompt, and the fine-tuned model, on the same validation data, side by side with what each costs per
 * request (prompt tokens, seconds) and paired significance tests of the fine-tune against each baseline.
 *
 * ```ts
 * const cmp = await compareWithBaselines(ctx, { model: 'ft:tiny:waimai:abc', file: 'validation.jsonl', shots: 4 });
 * cmp.rows.map((r) => [r.system, r.metrics.exact_match.value, r.prompt_tokens]);
 * ```
 */
import { readFile } from 'node:fs/promises';
import type { Context } from '../context.js';
import { reportError, validateChatFile } from '../data/index.js';
import type { ChatMessage, MetricValue, ScoreAnswersResult } from '../engine/protocol.js';
import { WeitiaoError } from '../errors.js';
import { retrieveJob } from '../jobs/index.js';
import { materializeModel, retrieveModel } from '../models/index.js';
import { now } from '../store/index.js';
import { chooseLabels, evaluateModel, locateFile, type EvalReport } from './index.js';
import { fewShotTurns, type FewShotExample } from './internal/few-shot.js';
import { scoreAnswers } from './score.js';

export const DEFAULT_SHOTS = 4;

export interface BaselineOptions {
  /** The fine-tuned model; its base model is the baseline. */
  model: string;
  /** Validation chat JSONL (path or `file-…`). */
  file: string;
  /** k: training examples in the few-shot prompt. */
  shots?: number;
  /** Where the shots come from; default the training file of the model's job. */
  trainingFile?: string;
  /** Picks the shots and seeds the bootstrap. */
  seed?: number;
  labels?: string[] | 'auto' | null;
  batchSize?: number;
  maxExamples?: number | null;
  onProgress?: (progress: { system: BaselineSystem; current: number; total: number }) => void;
  signal?: AbortSignal;
}

export type BaselineSystem = 'zero-shot' | 'few-shot' | 'fine-tuned';

export interface BaselineRow {
  system: BaselineSystem;
  model: string;
  shots: number;
  /** Metric -> value and interval (label data: exact_match = accuracy). */
  metrics: Record<string, MetricValue>;
  label_metrics: EvalReport['label_metrics'];
  valid_loss: number | null;
  /** Cost per request: mean prompt tokens (the shots included) and wall seconds. */
  prompt_tokens: number;
  seconds_per_example: number;
}

export interface BaselineComparison {
  object: 'weitiao.baseline_comparison';
  file: string;
  training_file: string;
  mode: 'labels' | 'generation';
  labels: string[] | null;
  shots: number;
  seed: number;
  n: number;
  rows: BaselineRow[];
  /** The fine-tune minus each baseline, per metric: delta, paired-bootstrap interval, p-value. */
  comparisons: ScoreAnswersResult['comparisons'];
  /** The few-shot turns used, for the record. */
  shot_messages: ChatMessage[];
  /** Every example's three answers and their scores (char F1 for free text, exact match for labels). */
  examples: { index: number; expected: string; answers: Record<BaselineSystem, string>; scores: Record<BaselineSystem, number> }[];
  created_at: number;
}

/** Per-example scores of one system: char F1 when computed (free text), else exact match. */
function exampleScore(table: ScoreAnswersResult, system: string): number[] {
  const per = table.per_example[system];
  return per.char_f1 ?? per.exact_match;
}

/** The training file a fine-tuned model learnt from (its job's), or the one given. */
export function trainingFileOf(ctx: Context, model: string, given?: string): string {
  if (given) return locateFile(ctx, given);
  const jobId = retrieveModel(ctx, model).weitiao.job_id;
  if (!jobId) {
    throw new WeitiaoError(
      'invalid_request',
      `'${model}' has no training job: give the file the few-shot examples come from / '${model}' 没有训练任务：请指定提供少样本示例的训练文件`,
      { param: 'training_file' },
    );
  }
  return locateFile(ctx, retrieveJob(ctx, jobId).training_file);
}

/** The chat examples of a (validated) training file. */
export async function readChatExamples(file: string): Promise<FewShotExample[]> {
  const report = await validateChatFile(file);
  const error = reportError(report);
  if (error) throw error;
  const text = await readFile(file, 'utf8');
  return text
    .replace(/^\uFEFF/, '')
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => ({ messages: (JSON.parse(line) as FewShotExample).messages }));
}

/** Base zero-shot, base few-shot and the fine-tune on one file (see the module's docstring). */
export async function compareWithBaselines(ctx: Context, options: BaselineOptions): Promise<BaselineComparison> {
  const file = locateFile(ctx, options.file);
  const resolved = await materializeModel(ctx, options.model);
  if (resolved.kind === 'base') {
    throw new WeitiaoError('invalid_request', `'${options.model}' is a base model: give a fine-tuned one / '${options.model}' 是基础模型，请指定微调后的模型`, {
      param: 'model',
    });
  }
  const shots = options.shots ?? DEFAULT_SHOTS;
  const seed = options.seed ?? 0;
  const trainingFile = trainingFileOf(ctx, options.model, options.trainingFile);
  const labels = await chooseLabels(file, options.labels === undefined ? 'auto' : options.labels);
  const shotMessages = fewShotTurns(await readChatExamples(trainingFile), shots, seed, labels);

  const common = { file, labels, batchSize: options.batchSize, maxExamples: options.maxExamples ?? null, signal: options.signal, seed };
  const progress = (system: BaselineSystem) => (p: { current: number; total: number }) => options.onProgress?.({ system, ...p });
  const runs: [BaselineSystem, EvalReport][] = [
    ['zero-shot', await evaluateModel(ctx, { ...common, model: resolved.baseId, onProgress: progress('zero-shot') })],
    ['few-shot', await evaluateModel(ctx, { ...common, model: resolved.baseId, prefixMessages: shotMessages, onProgress: progress('few-shot') })],
    ['fine-tuned', await evaluateModel(ctx, { ...common, model: options.model, onProgress: progress('fine-tuned') })],
  ];
  const expected = runs[0][1].predictions.map((p) => p.expected);
  const table = await scoreAnswers({
    expected,
    systems: Object.fromEntries(runs.map(([system, r]) => [system, r.predictions.map((p) => p.predicted)])),
    // Label data: exact match is the accuracy; BLEU on a one-word label says nothing more.
    metrics: labels ? ['exact_match'] : null,
    seed,
    compare_to: 'fine-tuned',
    signal: options.signal,
  });
  return {
    object: 'weitiao.baseline_comparison',
    file,
    training_file: trainingFile,
    mode: labels ? 'labels' : 'generation',
    labels,
    shots,
    seed,
    n: expected.length,
    rows: runs.map(([system, r]) => ({
      system,
      model: system === 'fine-tuned' ? r.model : r.base_model,
      shots: system === 'few-shot' ? shotMessages.filter((m) => m.role === 'assistant').length : 0,
      metrics: table.metrics[system],
      label_metrics: r.label_metrics,
      valid_loss: r.valid_loss,
      prompt_tokens: r.prompt_tokens,
      seconds_per_example: r.seconds_per_example,
    })),
    comparisons: table.comparisons,
    shot_messages: shotMessages,
    examples: expected.map((e, i) => ({
      index: i,
      expected: e,
      answers: Object.fromEntries(runs.map(([system, r]) => [system, r.predictions[i].predicted])) as Record<BaselineSystem, string>,
      scores: Object.fromEntries(runs.map(([system]) => [system, exampleScore(table, system)[i]])) as Record<BaselineSystem, number>,
    })),
    created_at: now(),
  };
}
