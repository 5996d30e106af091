/**
 * Executes one claimed eval run, a chunk of rows at a time: answer the chunk's items with the run's model
 * (greedy, batched by the engine's evaluate command) or take the given samples, grade them with the eval's
 * testing criteria through `score-answers` (the graders' one implementation), and store one output item per
 * row in a transaction that holds only while this worker holds the run. A run taken up again after its
 * worker died continues after the last stored row: rows already scored are never scored again. The queue
 * (../queue.ts) claims runs, beats their heartbeat and aborts `signal` on cancel.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../../context.js';
import { mulberry32 } from '../../data/index.js';
import { WeitiaoError } from '../../errors.js';
import { evaluateModel } from '../../eval/index.js';
import { scoreAnswers } from '../../eval/score.js';
import { newId, now } from '../../store/index.js';
import * as repo from './repository.js';

export interface ExecuteOptions {
  /** The claiming worker: items and the end are written only while it holds the run. */
  workerId: string;
  /** Aborted on cancel, delete, loss of the claim or shutdown: the run stops between or inside chunks. */
  signal: AbortSignal;
  /** Where score_model judges ask when the criterion names no endpoint, and with which key. */
  judge: { base_url: string | null; api_key: string | null };
  /** Rows per chunk: a chunk is generated, graded and stored together (one engine start each step). */
  chunkSize: number;
  /** Each progress event as it is written. */
  onEvent?: (event: repo.RunEventObject) => void;
}

interface Entry {
  item: Record<string, unknown>;
  sample?: Record<string, unknown>;
}

async function readEntries(ctx: Context, source: { type: 'file_content'; content: Entry[] } | { type: 'file_id'; id: string }): Promise<Entry[]> {
  if (source.type === 'file_content') return source.content;
  const text = await readFile(repo.requireFile(ctx, source.id), 'utf8');
  return text
    .replace(/^\uFEFF/, '')
    .split('\n')
    .filter((l) => l.trim())
    .map((line, i) => {
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        throw new WeitiaoError('invalid_file', `${source.id}:${i + 1}: not valid JSON / 不是有效的 JSON`, { param: 'data_source.source.id' });
      }
      const obj = value as Record<string, unknown>;
      // A line is {"item": …, "sample"?: …} or the item itself.
      if (obj && typeof obj.item === 'object' && Object.keys(obj).every((k) => k === 'item' || k === 'sample')) return obj as unknown as Entry;
      return { item: obj };
    });
}

/** `{{item.a.b}}` / `{{ item.x }}` filled from the item (objects as JSON); other text kept. */
export function renderTemplate(text: string, item: Record<string, unknown>): string {
  return text.replace(/\{\{\s*item\.([\w.]+)\s*\}\}/g, (_, key: string) => {
    const value = key.split('.').reduce<unknown>((at, k) => (at && typeof at === 'object' ? (at as Record<string, unknown>)[k] : undefined), item);
    if (value === undefined) throw new WeitiaoError('invalid_request', `the template reads item.${key}, which an item lacks / 模板引用的 item.${key} 不存在`, { param: 'data_source.input_messages' });
    return typeof value === 'string' ? value : JSON.stringify(value);
  });
}

function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map(contentText).join('');
  if (content && typeof content === 'object' && 'text' in content) return String((content as { text: unknown }).text);
  return JSON.stringify(content);
}

type Message = { role: 'system' | 'user' | 'assistant' | 'developer'; content: string };

function promptFor(source: Record<string, unknown>, item: Record<string, unknown>): Message[] {
  const input = source.input_messages as { type: 'template'; template: { role: Message['role']; content: unknown }[] } | { type: 'item_reference'; item_reference: string };
  if (input.type === 'template') return input.template.map((m) => ({ role: m.role, content: renderTemplate(contentText(m.content), item) }));
  const ref = input.item_reference.replace(/^item\./, '');
  const messages = ref.split('.').reduce<unknown>((at, k) => (at && typeof at === 'object' ? (at as Record<string, unknown>)[k] : undefined), item);
  if (!Array.isArray(messages)) throw new WeitiaoError('invalid_request', `item_reference '${input.item_reference}' is not a list of messages / 不是消息列表`, { param: 'data_source.input_messages.item_reference' });
  return messages.map((m) => ({ role: (m as Message).role, content: contentText((m as Message).content) }));
}

type Source = { type: 'jsonl' | 'completions'; source: never; model?: string; sampling_params?: Record<string, unknown> } & Record<string, unknown>;

/** The chunk's answers (generated, or the given samples) and the mean prompt tokens per generated answer. */
async function answer(ctx: Context, run: repo.RunObject, source: Source, entries: Entry[], prompts: Message[][], at: number, total: number, signal: AbortSignal) {
  if (source.type !== 'completions') {
    return { outputs: entries.map((e) => String(e.sample?.output_text ?? (e.sample ? JSON.stringify(e.sample) : ''))), promptTokens: 0 };
  }
  const dir = await mkdtemp(path.join(ctx.home.cache, 'evalrun-'));
  try {
    const file = path.join(dir, 'prompts.jsonl');
    // The engine reads chat lines whose last message is the expected answer: none here, so an empty one.
    await writeFile(file, prompts.map((p) => JSON.stringify({ messages: [...p, { role: 'assistant', content: '' }] })).join('\n') + '\n');
    const report = await evaluateModel(ctx, {
      model: source.model!,
      file,
      labels: null,
      signal,
      onProgress: (p) => repo.setProgress(ctx, run.id, { phase: 'generate', current: at + p.current, total }),
    });
    return { outputs: report.predictions.map((p) => p.predicted), promptTokens: report.prompt_tokens };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const passes = (c: repo.EvalObject['testing_criteria'][number], score: number) => (c.type === 'string_check' ? score >= 1 : score >= (c.pass_threshold ?? 0.5));

/** Runs (or continues) a claimed run to its end; returns early, writing nothing more, once `signal` aborts. */
export async function executeRun(ctx: Context, runId: string, o: ExecuteOptions): Promise<void> {
  const event = (e: Parameters<typeof repo.insertRunEvent>[2]) => o.onEvent?.(repo.insertRunEvent(ctx, runId, e));
  const run = repo.getRun(ctx, runId);
  const ev = run && repo.getEval(ctx, run.eval_id);
  if (!run || !ev) return; // deleted meanwhile
  const source = run.data_source as Source;
  try {
    const entries = await readEntries(ctx, source.source);
    if (entries.length === 0) throw new WeitiaoError('invalid_request', 'the data source has no items / 数据源为空', { param: 'data_source.source' });
    const prompts = source.type === 'completions' ? entries.map((e) => promptFor(source, e.item)) : [];
    const total = entries.length;
    const start = repo.storedItemCount(ctx, runId);
    if (start > 0) {
      event({ message: `Resumed after item ${start} of ${total} (attempt ${run.weitiao.attempts}) / 从第 ${start + 1} 项继续`, data: { current: start, total, attempts: run.weitiao.attempts } });
    } else {
      event({ message: `Started: ${total} items / 开始评测，共 ${total} 项`, data: { current: 0, total } });
    }
    repo.setProgress(ctx, runId, { phase: 'grade', current: start, total });
    const graders = ev.testing_criteria.map(({ pass_threshold: _, ...g }) => g);
    for (let at = start; at < total; at += o.chunkSize) {
      if (o.signal.aborted) return;
      const chunk = entries.slice(at, at + o.chunkSize);
      const chunkPrompts = prompts.slice(at, at + o.chunkSize);
      const { outputs, promptTokens } = await answer(ctx, run, source, chunk, chunkPrompts, at, total, o.signal);
      if (o.signal.aborted) return;
      const table = await scoreAnswers({
        expected: outputs,
        systems: { model: outputs },
        items: chunk.map((e) => e.item),
        graders,
        metrics: [],
        judge: { ...o.judge, timeout_seconds: 120 },
        signal: o.signal,
      });
      if (o.signal.aborted) return;
      const items = chunk.map((e, i): repo.OutputItemObject => {
        const results = ev.testing_criteria.map((c) => {
          const score = table.per_example.model[`grader:${c.name}`][i];
          return { name: c.name, type: c.type, score, passed: passes(c, score), sample: null };
        });
        const prompt = Math.round(promptTokens); // the chunk's mean: the engine reports no per-row count
        return {
          object: 'eval.run.output_item',
          id: newId('outputitem').replace('-', '_'),
          run_id: runId,
          eval_id: ev.id,
          created_at: now(),
          status: results.every((r) => r.passed) ? 'pass' : 'fail',
          datasource_item_id: at + i,
          datasource_item: e.item,
          results,
          sample: {
            input: chunkPrompts[i] ?? [],
            output: [{ role: 'assistant', content: outputs[i] }],
            model: run.model,
            finish_reason: 'stop',
            seed: Number(source.sampling_params?.seed ?? 0),
            temperature: 0,
            top_p: 1,
            max_completion_tokens: Number(source.sampling_params?.max_completion_tokens ?? 0),
            usage: { prompt_tokens: prompt, completion_tokens: 0, total_tokens: prompt, cached_tokens: 0 },
            error: null,
          },
        };
      });
      if (!repo.insertOutputItems(ctx, runId, o.workerId, items)) return; // no longer ours
      const done = at + chunk.length;
      repo.setProgress(ctx, runId, { phase: 'grade', current: done, total });
      event({ message: `Scored items ${at + 1}–${done} of ${total} / 已完成 ${done}/${total} 项`, data: { current: done, total } });
    }
    const summary = summarize(run, ev, repo.outputItemsOf(ctx, runId), source.type === 'completions');
    if (repo.finishRun(ctx, runId, { status: 'completed', summary }, o.workerId)) {
      const { passed, total: n } = summary.result_counts;
      event({ message: `Completed: ${passed} of ${n} items passed / 评测完成，通过 ${passed}/${n}`, data: { ...summary.result_counts } });
    }
  } catch (e) {
    if (o.signal.aborted) return;
    const err = e instanceof WeitiaoError ? { code: e.code, message: e.message } : { code: 'internal_error', message: String((e as Error)?.message ?? e) };
    if (repo.finishRun(ctx, runId, { status: 'failed', error: err }, o.workerId)) event({ level: 'error', message: `Failed: ${err.message} / 评测失败`, data: { code: err.code } });
  }
}

/** The run's counts, usage and criteria means from all its stored items (whichever attempt stored them). */
function summarize(run: repo.RunObject, ev: repo.EvalObject, items: repo.OutputItemObject[], generated: boolean): repo.RunSummary {
  const passed = items.filter((i) => i.status === 'pass').length;
  const promptTokens = items.reduce((sum, i) => sum + Number((i.sample.usage as { prompt_tokens?: number } | undefined)?.prompt_tokens ?? 0), 0);
  const scores = (name: string) => items.map((i) => i.results.find((r) => r.name === name)?.score ?? 0);
  return {
    result_counts: { total: items.length, errored: 0, failed: items.length - passed, passed },
    per_model_usage: generated
      ? [{ model_name: run.model, invocation_count: items.length, prompt_tokens: promptTokens, completion_tokens: 0, total_tokens: promptTokens, cached_tokens: 0 }]
      : [],
    per_testing_criteria_results: ev.testing_criteria.map((c) => {
      const ok = items.filter((i) => i.results.find((r) => r.name === c.name)?.passed).length;
      return { testing_criteria: c.name, passed: ok, failed: items.length - ok };
    }),
    metrics: Object.fromEntries(ev.testing_criteria.map((c) => [c.name, meanWithInterval(scores(c.name))])),
  };
}

/**
 * The mean and its 95% percentile-bootstrap interval (1000 resamples, seed 0), as the engine's
 * bootstrap_interval computes it for a grader's mean: here over the stored scores, so a resumed run's
 * interval needs no second grading.
 */
export function meanWithInterval(scores: number[], resamples = 1000, seed = 0): { value: number; ci_low: number; ci_high: number; scale: number } {
  const n = scores.length;
  if (n === 0) return { value: 0, ci_low: 0, ci_high: 0, scale: 1 };
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const random = mulberry32(seed);
  const means = Array.from({ length: resamples }, () => {
    let sum = 0;
    for (let k = 0; k < n; k++) sum += scores[Math.floor(random() * n)];
    return sum / n;
  }).sort((a, b) => a - b);
  // numpy's default percentile: linear interpolation between the closest ranks.
  const pct = (q: number) => {
    const pos = (q / 100) * (resamples - 1);
    const lo = Math.floor(pos);
    return means[lo] + (means[Math.min(lo + 1, resamples - 1)] - means[lo]) * (pos - lo);
  };
  return { value: mean(scores), ci_low: pct(2.5), ci_high: pct(97.5), scale: 1 };
}
