/**
 * The forgetting check: does a fine-tune still do what its base model could? Both answer the project's
 * general-ability set (src/eval/general: arithmetic, common facts, instruction following; Chinese and
 * English), and the fine-tune's score minus the base's is reported overall and per category, with a paired
 * test. An answer counts when the reply contains the expected answer (string_check `ilike`, the graders'
 * own code path); exact match is reported beside it for models that answer tersely.
 *
 * ```ts
 * const r = await checkForgetting(ctx, { model: 'ft:tiny:waimai:abc' });
 * r.overall.delta; // -0.03: three points of general ability lost
 * ```
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../context.js';
import type { MetricValue, ScoreAnswersResult } from '../engine/protocol.js';
import { materializeModel } from '../models/index.js';
import { now } from '../store/index.js';
import { GENERAL_SET_FILE, type GeneralItem } from './general/build.js';
import { evaluateModel } from './index.js';
import { scoreAnswers } from './score.js';

/** The reply contains the expected answer, case-insensitive. */
export const CONTAINS_ANSWER_GRADER = {
  type: 'string_check',
  name: 'contains_answer',
  input: '{{sample.output_text}}',
  reference: '{{item.reference_answer}}',
  operation: 'ilike',
} as const;
const SCORE = `grader:${CONTAINS_ANSWER_GRADER.name}`;

export interface ForgettingOptions {
  /** The fine-tuned model. */
  model: string;
  /** What it is compared with; default its base model. */
  compareWith?: string;
  /** A spread subset of the set (every ⌈300/N⌉-th item, so each category and language stays in). */
  maxExamples?: number | null;
  batchSize?: number;
  seed?: number;
  onProgress?: (progress: { model: string; current: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface ForgettingGroup {
  category: GeneralItem['category'];
  language: GeneralItem['language'];
  n: number;
  base: number;
  tuned: number;
  delta: number;
}

export interface ForgettingReport {
  object: 'weitiao.forgetting_check';
  model: string;
  base_model: string;
  n: number;
  /** contains_answer: base, fine-tune, fine-tune minus base with its paired interval and p-value. */
  overall: { metric: string; base: MetricValue; tuned: MetricValue; delta: number; ci_low: number; ci_high: number; p_value: number };
  exact_match: { base: MetricValue; tuned: MetricValue };
  groups: ForgettingGroup[];
  /** Items the fine-tune lost (base right, tune wrong), up to 20. */
  lost: { question: string; expected: string; base: string; tuned: string }[];
  created_at: number;
}

export async function readGeneralSet(file = GENERAL_SET_FILE): Promise<GeneralItem[]> {
  const text = await readFile(file, 'utf8');
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as GeneralItem);
}

/** Every ⌈n/max⌉-th item: a small check still covers every category and language. */
export function spreadSubset<T>(items: T[], max: number | null | undefined): T[] {
  if (!max || max >= items.length) return items;
  const step = items.length / max;
  return Array.from({ length: max }, (_, i) => items[Math.floor(i * step)]);
}

export async function checkForgetting(ctx: Context, options: ForgettingOptions): Promise<ForgettingReport> {
  const tuned = await materializeModel(ctx, options.model);
  const baseline = options.compareWith ?? tuned.baseId;
  const items = spreadSubset(await readGeneralSet(), options.maxExamples);
  // The engine reads plain chat lines; the set's own fields (category, language) stay here.
  const dir = await mkdtemp(path.join(ctx.home.cache, 'forgetting-'));
  try {
    const file = path.join(dir, 'general.jsonl');
    await writeFile(file, items.map((x) => JSON.stringify({ messages: x.messages })).join('\n') + '\n');
    const common = { file, labels: null, batchSize: options.batchSize, signal: options.signal, seed: options.seed ?? 0 };
    const base = await evaluateModel(ctx, { ...common, model: baseline, onProgress: (p) => options.onProgress?.({ model: baseline, ...p }) });
    const tune = await evaluateModel(ctx, { ...common, model: options.model, onProgress: (p) => options.onProgress?.({ model: options.model, ...p }) });
    const expected = items.map((x) => x.messages[1].content);
    const table: ScoreAnswersResult = await scoreAnswers({
      expected,
      systems: { base: base.predictions.map((p) => p.predicted), tuned: tune.predictions.map((p) => p.predicted) },
      graders: [CONTAINS_ANSWER_GRADER],
      metrics: ['exact_match'],
      seed: options.seed ?? 0,
      compare_to: 'tuned',
      signal: options.signal,
    });
    const perBase = table.per_example.base[SCORE];
    const perTuned = table.per_example.tuned[SCORE];
    const groups = new Map<string, ForgettingGroup>();
    items.forEach((x, i) => {
      const key = `${x.category}/${x.language}`;
      const g = groups.get(key) ?? { category: x.category, language: x.language, n: 0, base: 0, tuned: 0, delta: 0 };
      g.n++;
      g.base += perBase[i];
      g.tuned += perTuned[i];
      groups.set(key, g);
    });
    for (const g of groups.values()) {
      g.base /= g.n;
      g.tuned /= g.n;
      g.delta = g.tuned - g.base;
    }
    const test = table.comparisons.find((c) => c.metric === SCORE)!;
    return {
      object: 'weitiao.forgetting_check',
      model: tune.model,
      base_model: base.model,
      n: items.length,
      overall: { metric: SCORE, base: table.metrics.base[SCORE], tuned: table.metrics.tuned[SCORE], delta: test.delta, ci_low: test.ci_low, ci_high: test.ci_high, p_value: test.p_value },
      exact_match: { base: table.metrics.base.exact_match, tuned: table.metrics.tuned.exact_match },
      groups: [...groups.values()],
      lost: items
        .map((x, i) => ({ i, x }))
        .filter(({ i }) => perBase[i] > perTuned[i])
        .slice(0, 20)
        .map(({ i, x }) => ({ question: x.messages[0].content, expected: expected[i], base: base.predictions[i].predicted, tuned: tune.predictions[i].predicted })),
      created_at: now(),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
