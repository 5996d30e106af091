/**
 * Runs an eval run in the background: read the items, answer them with the run's model (greedy, batched by
 * the engine's evaluate command) or take the given samples, grade with the eval's testing criteria through
 * `score-answers` (the graders' one implementation), write one output item per data item. Runs of one
 * process go one at a time (a queue), since each may start an engine that takes the CPU.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { evaluateModel } from '../../eval/index.js';
import { scoreAnswers } from '../../eval/score.js';
import { newId, now } from '../../store/index.js';
import * as repo from './repository.js';

const controllers = new Map<string, AbortController>();
let queue: Promise<void> = Promise.resolve();

export interface RunOptions {
  /** Where score_model judges ask when the criterion names no endpoint (the API passes its own /v1). */
  judgeBaseUrl?: string;
  judgeApiKey?: string | null;
}

/** Whether this process holds the run (queued or executing). */
export function runningHere(runId: string): boolean {
  return controllers.has(runId);
}

export function cancelRunTask(runId: string): void {
  controllers.get(runId)?.abort();
}

/** Queues the run; returns at once. */
export function startRun(ctx: Context, runId: string, options: RunOptions = {}): void {
  const controller = new AbortController();
  controllers.set(runId, controller);
  queue = queue.then(() => execute(ctx, runId, options, controller.signal)).finally(() => controllers.delete(runId));
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

async function execute(ctx: Context, runId: string, options: RunOptions, signal: AbortSignal): Promise<void> {
  if (!repo.markRunning(ctx, runId)) return; // cancelled while queued
  const run = repo.getRun(ctx, runId)!;
  const ev = repo.getEval(ctx, run.eval_id)!;
  const source = run.data_source as { type: 'jsonl' | 'completions'; source: never; model?: string; sampling_params?: Record<string, unknown> } & Record<string, unknown>;
  let dir: string | null = null;
  try {
    const entries = await readEntries(ctx, source.source);
    if (entries.length === 0) throw new WeitiaoError('invalid_request', 'the data source has no items / 数据源为空', { param: 'data_source.source' });
    let outputs: string[];
    let prompts: Message[][] = [];
    let promptTokens = 0;
    if (source.type === 'completions') {
      prompts = entries.map((e) => promptFor(source, e.item));
      dir = await mkdtemp(path.join(ctx.home.cache, 'evalrun-'));
      const file = path.join(dir, 'prompts.jsonl');
      // The engine reads chat lines whose last message is the expected answer: none here, so an empty one.
      await writeFile(file, prompts.map((p) => JSON.stringify({ messages: [...p, { role: 'assistant', content: '' }] })).join('\n') + '\n');
      const report = await evaluateModel(ctx, {
        model: source.model!,
        file,
        labels: null,
        signal,
        onProgress: (p) => repo.setProgress(ctx, runId, { phase: 'generate', ...p }),
      });
      outputs = report.predictions.map((p) => p.predicted);
      promptTokens = Math.round(report.prompt_tokens * entries.length);
    } else {
      outputs = entries.map((e) => String(e.sample?.output_text ?? (e.sample ? JSON.stringify(e.sample) : '')));
    }
    repo.setProgress(ctx, runId, { phase: 'grade', current: 0, total: entries.length });
    const graders = ev.testing_criteria.map(({ pass_threshold: _, ...g }) => g);
    const table = await scoreAnswers({
      expected: outputs,
      systems: { model: outputs },
      items: entries.map((e) => e.item),
      graders,
      metrics: [],
      judge: { base_url: options.judgeBaseUrl ?? null, api_key: options.judgeApiKey ?? null, timeout_seconds: 120 },
      signal,
    });
    const passes = (c: repo.EvalObject['testing_criteria'][number], score: number) =>
      c.type === 'string_check' ? score >= 1 : score >= (c.pass_threshold ?? 0.5);
    const created = now();
    const items: repo.OutputItemObject[] = entries.map((e, i) => {
      const results = ev.testing_criteria.map((c) => {
        const score = table.per_example.model[`grader:${c.name}`][i];
        return { name: c.name, type: c.type, score, passed: passes(c, score), sample: null };
      });
      return {
        object: 'eval.run.output_item',
        id: newId('outputitem').replace('-', '_'),
        run_id: runId,
        eval_id: ev.id,
        created_at: created,
        status: results.every((r) => r.passed) ? 'pass' : 'fail',
        datasource_item_id: i,
        datasource_item: e.item,
        results,
        sample: {
          input: prompts[i] ?? [],
          output: [{ role: 'assistant', content: outputs[i] }],
          model: run.model,
          finish_reason: 'stop',
          seed: Number(source.sampling_params?.seed ?? 0),
          temperature: 0,
          top_p: 1,
          max_completion_tokens: Number(source.sampling_params?.max_completion_tokens ?? 0),
          usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, cached_tokens: 0 },
          error: null,
        },
      };
    });
    if (signal.aborted) return;
    repo.insertOutputItems(ctx, items);
    const passed = items.filter((i) => i.status === 'pass').length;
    repo.finishRun(ctx, runId, {
      status: 'completed',
      summary: {
        result_counts: { total: items.length, errored: 0, failed: items.length - passed, passed },
        per_model_usage: source.type === 'completions'
          ? [{ model_name: run.model, invocation_count: items.length, prompt_tokens: promptTokens, completion_tokens: 0, total_tokens: promptTokens, cached_tokens: 0 }]
          : [],
        per_testing_criteria_results: ev.testing_criteria.map((c) => {
          const ok = items.filter((i) => i.results.find((r) => r.name === c.name)!.passed).length;
          return { testing_criteria: c.name, passed: ok, failed: items.length - ok };
        }),
        metrics: Object.fromEntries(ev.testing_criteria.map((c) => [c.name, table.metrics.model[`grader:${c.name}`]])),
      },
    });
  } catch (e) {
    if (signal.aborted) return;
    const err = e instanceof WeitiaoError ? { code: e.code, message: e.message } : { code: 'internal_error', message: String((e as Error)?.message ?? e) };
    repo.finishRun(ctx, runId, { status: 'failed', error: err });
  } finally {
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}
