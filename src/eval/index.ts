/**
 * Evaluation of a model on a chat file: accuracy, per-class metrics and the confusion matrix when the
 * answers form a label set (each label scored directly by the model), else greedy generation compared
 * with the expected text.
 *
 * ```ts
 * const report = await evaluateModel(ctx, { model: 'ft:tiny:waimai:abc', file: 'validation.jsonl' });
 * report.label_metrics?.accuracy; // 0.86
 * const both = await compareModels(ctx, { models: ['tiny', 'ft:tiny:waimai:abc'], file: 'validation.jsonl' });
 * ```
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../context.js';
import { reportError, validateChatFile, writeFileAtomic } from '../data/index.js';
import { runEngine, type EvaluateResult } from '../engine/index.js';
import type { ChatMessage } from '../engine/protocol.js';
import { WeitiaoError } from '../errors.js';
import { fileContentPath } from '../files/index.js';
import { materializeModel } from '../models/index.js';
import { now } from '../store/index.js';

export interface EvaluateOptions {
  /** A model id or a local model directory. */
  model: string;
  /** A chat JSONL file: a path, or the id of an uploaded file (`file-…`). */
  file: string;
  /**
   * `auto` (default): score the labels when the expected answers form a label set, else generate.
   * An array: score exactly these labels. null: always generate and compare text.
   */
  labels?: string[] | 'auto' | null;
  batchSize?: number;
  /** Only the first N examples of the file. */
  maxExamples?: number | null;
  onProgress?: (progress: { current: number; total: number }) => void;
  signal?: AbortSignal;
  /** Few-shot turns put before every prompt (after its system messages); see fewShotTurns. */
  prefixMessages?: ChatMessage[];
  /** Of the bootstrap intervals (generation metrics). */
  seed?: number;
}

/** One model's results on one file. */
export interface EvalReport extends EvaluateResult {
  model: string;
  /** The base model the evaluated model resolves to (itself for a base model). */
  base_model: string;
  file: string;
  /** `labels`: each label scored directly; `generation`: free text compared with the expected answer. */
  mode: 'labels' | 'generation';
  labels: string[] | null;
  created_at: number;
}

/** Evaluates one model on a chat file (the last message of each example is the expected answer). */
export async function evaluateModel(ctx: Context, options: EvaluateOptions): Promise<EvalReport> {
  const file = locateFile(ctx, options.file);
  const resolved = await materializeModel(ctx, options.model);
  const labels = await chooseLabels(file, options.labels === undefined ? 'auto' : options.labels);
  const result = await runEngine(
    'evaluate',
    {
      model: resolved.basePath,
      adapter: resolved.adapterPath,
      data_file: file,
      labels,
      batch_size: options.batchSize,
      max_examples: options.maxExamples ?? null,
      prefix_messages: options.prefixMessages ?? [],
      seed: options.seed ?? 0,
    },
    {
      signal: options.signal,
      onEvent: (e) => {
        if (e.type === 'progress') options.onProgress?.({ current: e.current, total: e.total });
      },
    },
  );
  return {
    model: resolved.id,
    base_model: resolved.baseId,
    file,
    mode: labels ? 'labels' : 'generation',
    labels,
    created_at: now(),
    ...result,
  };
}

/** A path as given, or an uploaded file's stored copy for a `file-…` id. */
export function locateFile(ctx: Context, file: string): string {
  if (existsSync(file)) return path.resolve(file);
  if (/^file-[0-9a-z]+$/i.test(file)) return fileContentPath(ctx, file);
  throw new WeitiaoError('not_found', `data file not found: ${file} / 找不到数据文件：${file}`, { param: 'file', file });
}

/** The labels to score: checked explicit ones, the file's label set for `auto`, or null to generate. */
export async function chooseLabels(file: string, labels: string[] | 'auto' | null): Promise<string[] | null> {
  if (labels === null) return null;
  if (Array.isArray(labels)) {
    const distinct = [...new Set(labels)];
    if (distinct.length < 2 || distinct.some((l) => l.trim() === '')) {
      throw new WeitiaoError('invalid_request', 'give at least two distinct, non-empty labels / 至少需要两个不同的非空标签', { param: 'labels' });
    }
    return distinct;
  }
  // Checked as training checks it, so a bad line is reported as file:line: field, not as an engine error.
  const report = await validateChatFile(file);
  const error = reportError(report);
  if (error) throw error;
  return report.label_set;
}

export interface CompareOptions extends Omit<EvaluateOptions, 'model'> {
  /** Two models, e.g. the base and its fine-tune. */
  models: [string, string];
}

/** Two models on the same file: both reports, how often each is right, and where they disagree. */
export interface Comparison {
  file: string;
  labels: string[] | null;
  reports: [EvalReport, EvalReport];
  summary: {
    n: number;
    both_correct: number;
    only_first_correct: number;
    only_second_correct: number;
    both_wrong: number;
    /** Share of examples where the two predictions are the same. */
    agreement: number;
  };
  /** Examples whose predictions differ, in file order. */
  disagreements: { index: number; expected: string; predictions: [string, string] }[];
}

/** Evaluates two models on one file with the same label set, e.g. a fine-tune beside its base. */
export async function compareModels(ctx: Context, options: CompareOptions): Promise<Comparison> {
  const file = locateFile(ctx, options.file);
  // One label set for both, so their metrics are comparable.
  const labels = await chooseLabels(file, options.labels === undefined ? 'auto' : options.labels);
  const [a, b] = options.models;
  const first = await evaluateModel(ctx, { ...options, model: a, file, labels });
  const second = await evaluateModel(ctx, { ...options, model: b, file, labels });

  const other = new Map(second.predictions.map((p) => [p.index, p.predicted]));
  const summary = { n: first.predictions.length, both_correct: 0, only_first_correct: 0, only_second_correct: 0, both_wrong: 0, agreement: 0 };
  const disagreements: Comparison['disagreements'] = [];
  let same = 0;
  for (const p of first.predictions) {
    const q = other.get(p.index) ?? '';
    const [ok1, ok2] = [p.predicted === p.expected, q === p.expected];
    if (ok1 && ok2) summary.both_correct++;
    else if (ok1) summary.only_first_correct++;
    else if (ok2) summary.only_second_correct++;
    else summary.both_wrong++;
    if (p.predicted === q) same++;
    else disagreements.push({ index: p.index, expected: p.expected, predictions: [p.predicted, q] });
  }
  summary.agreement = summary.n ? same / summary.n : 0;
  return { file, labels, reports: [first, second], summary, disagreements };
}

/** Writes a report (or a comparison) as pretty JSON, atomically: a reader never sees half a file. */
export async function writeEvalReport(file: string, report: object): Promise<void> {
  const target = path.resolve(file);
  await mkdir(path.dirname(target), { recursive: true });
  await writeFileAtomic(target, JSON.stringify(report, null, 2) + '\n');
}
