/**
 * An evaluation of one model (or two side by side) on a stored chat file, shaped for a person reading it
 * (the console's `POST /v1/weitiao/evaluations`): no server path, the misclassified examples with their
 * line and prompt, and where two models disagree. Each evaluation is stored (results.ts) for the leaderboard
 * and the console's report view.
 */
import type { Context } from '../context.js';
import { readJsonLines } from '../data/index.js';
import { compareModels, evaluateModel, type EvalReport } from './index.js';
import { saveEvalResult } from './results.js';

/** Misclassified examples listed per report; the counts are in the confusion matrix anyway. */
const MAX_LISTED = 200;

interface Located {
  line: number;
  prompt: string;
}

/** Each example's physical line and prompt (its last user message), by example index. */
async function examplePrompts(file: string): Promise<Located[]> {
  const out: Located[] = [];
  for await (const row of readJsonLines(file, 'utf8')) {
    const messages = (row.value as { messages?: { role?: string; content?: unknown }[] } | undefined)?.messages;
    const content = Array.isArray(messages) ? messages.filter((m) => m?.role === 'user').at(-1)?.content : undefined;
    out.push({ line: row.line, prompt: typeof content === 'string' ? content : content == null ? '' : JSON.stringify(content) });
  }
  return out;
}

function readableReport(report: EvalReport, fileId: string, prompts: Located[]) {
  const { file: _, predictions, ...rest } = report;
  const wrong = predictions.filter((p) => p.predicted !== p.expected);
  return {
    object: 'weitiao.evaluation' as const,
    ...rest,
    file_id: fileId,
    misclassified_count: wrong.length,
    misclassified: wrong.slice(0, MAX_LISTED).map((p) => ({
      index: p.index,
      line: prompts[p.index]?.line ?? null,
      prompt: prompts[p.index]?.prompt ?? '',
      expected: p.expected,
      predicted: p.predicted,
    })),
  };
}

export interface FileEvaluationOptions {
  /** The stored file: its id (named in the answer) and its content path. */
  file: { id: string; path: string };
  model: string;
  compare_with?: string;
  max_examples?: number;
  signal?: AbortSignal;
}

/** Evaluates `model` on the file, and `compare_with` beside it when given. */
export async function evaluateFile(ctx: Context, options: FileEvaluationOptions) {
  const { file } = options;
  const common = { file: file.path, maxExamples: options.max_examples ?? null, signal: options.signal };
  const prompts = await examplePrompts(file.path);
  const answer = { object: 'weitiao.evaluation_result' as const, file_id: file.id };
  if (options.compare_with === undefined) {
    const report = await evaluateModel(ctx, { ...common, model: options.model });
    const stored = await saveEvalResult(ctx, report, { datasetName: file.id });
    return { ...answer, result_id: stored.id, reports: [readableReport(report, file.id, prompts)], comparison: null };
  }
  const both = await compareModels(ctx, { ...common, models: [options.model, options.compare_with] });
  const stored = await saveEvalResult(ctx, both, { datasetName: file.id });
  return {
    ...answer,
    result_id: stored.id,
    reports: both.reports.map((r) => readableReport(r, file.id, prompts)),
    comparison: {
      ...both.summary,
      disagreements: both.disagreements.slice(0, MAX_LISTED).map((d) => ({ ...d, line: prompts[d.index]?.line ?? null, prompt: prompts[d.index]?.prompt ?? '' })),
    },
  };
}
