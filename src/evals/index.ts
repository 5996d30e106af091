/**
 * Evals in OpenAI's shapes (`client.evals.create`, `client.evals.runs.create`, `…runs.outputItems.list`) over
 * weitiao's models and files: an eval is a data-source schema plus testing criteria (graders, the same
 * implementation reinforcement rewards use); a run answers each item with a weitiao model (data source
 * `completions`) or takes the samples given (`jsonl`), grades them, and keeps every item's output. Runs
 * are jobs of a durable queue (queue.ts): createRun only stores the run `queued`; an EvalRunQueue in any
 * process on the home (the API server runs one) executes it, a chunk of rows at a time (internal/runner.ts),
 * with progress in `weitiao.progress` and in the run's events (listRunEvents).
 *
 * ```ts
 * const ev = createEval(ctx, { data_source_config: { type: 'custom', item_schema: {...} }, testing_criteria: [grader] });
 * const run = createRun(ctx, ev.id, { data_source: { type: 'completions', model: 'ft:tiny:x', source: {...}, input_messages: {...} } });
 * await new EvalRunQueue(ctx).drain();                  // or a server's queue picks it up
 * (await waitForRun(ctx, ev.id, run.id)).result_counts; // {total, passed, failed, errored}
 * ```
 * Not supported (400 naming the field): `label_model` criteria, `logs`/`stored_completions`/`responses`
 * data sources. Generation is greedy; `sampling_params` are recorded, not applied.
 */
import { z } from 'zod';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { parseGrader } from '../graders/index.js';
import { resolveModel } from '../models/index.js';
import { listPage, newId, now, selectPage, type ListPage } from '../store/index.js';
import * as repo from './internal/repository.js';
import { rememberJudgeKey, stopLocalRun, wakeLocalQueues } from './queue.js';

export { EvalRunQueue, type EvalRunQueueOptions } from './queue.js';
export type { EvalObject, RunObject, OutputItemObject, RunEventObject } from './internal/repository.js';

const Metadata = z.record(z.string(), z.string()).nullish();

/** A testing criterion: a grader (src/graders/schema.ts) plus the score that counts as a pass. */
const TestingCriterion = z.looseObject({ type: z.string(), name: z.string(), pass_threshold: z.number().nullish() });

export const EvalCreateParams = z.object({
  name: z.string().optional(),
  metadata: Metadata,
  data_source_config: z.looseObject({
    type: z.string(),
    item_schema: z.record(z.string(), z.unknown()).optional(),
    include_sample_schema: z.boolean().optional(),
  }),
  testing_criteria: z.array(TestingCriterion).min(1),
});
export type EvalCreateParams = z.infer<typeof EvalCreateParams>;

export const EvalUpdateParams = z.object({ name: z.string().optional(), metadata: Metadata });

const Content = z.object({ item: z.record(z.string(), z.unknown()), sample: z.record(z.string(), z.unknown()).optional() });
const Source = z.discriminatedUnion('type', [
  z.object({ type: z.literal('file_content'), content: z.array(Content) }),
  z.object({ type: z.literal('file_id'), id: z.string() }),
]);
const TemplateMessage = z.looseObject({ role: z.enum(['user', 'assistant', 'system', 'developer']), content: z.unknown(), type: z.literal('message').optional() });

export const RunDataSource = z.discriminatedUnion('type', [
  z.object({ type: z.literal('jsonl'), source: Source }),
  z.object({
    type: z.literal('completions'),
    source: Source,
    model: z.string(),
    input_messages: z.discriminatedUnion('type', [
      z.object({ type: z.literal('template'), template: z.array(TemplateMessage).min(1) }),
      z.object({ type: z.literal('item_reference'), item_reference: z.string() }),
    ]),
    sampling_params: z.record(z.string(), z.unknown()).optional(),
  }),
]);
export type RunDataSource = z.infer<typeof RunDataSource>;

export const RunCreateParams = z.object({ name: z.string().optional(), metadata: Metadata, data_source: RunDataSource });
export type RunCreateParams = z.infer<typeof RunCreateParams>;

function evalNotFound(id: string): WeitiaoError {
  return new WeitiaoError('not_found', `no eval '${id}' / 找不到评测 '${id}'`, { param: 'eval_id' });
}

/** The criteria checked as graders (pass_threshold kept beside), `invalid_request` naming the field. */
function checkCriteria(criteria: EvalCreateParams['testing_criteria']): void {
  const names = new Set<string>();
  criteria.forEach((c, i) => {
    if (c.type === 'label_model') {
      throw new WeitiaoError('invalid_request', 'label_model criteria are not supported: use score_model / 不支持 label_model 评分器，请用 score_model', {
        param: `testing_criteria[${i}].type`,
      });
    }
    const { pass_threshold: _, ...grader } = c;
    parseGrader(grader, `testing_criteria[${i}]`);
    if (names.has(c.name)) throw new WeitiaoError('invalid_request', `two criteria are named '${c.name}' / 评分标准重名`, { param: `testing_criteria[${i}].name` });
    names.add(c.name);
  });
}

export function createEval(ctx: Context, params: EvalCreateParams): repo.EvalObject {
  if (params.data_source_config.type !== 'custom') {
    throw new WeitiaoError('invalid_request', `data_source_config.type '${params.data_source_config.type}' is not supported: use 'custom' / 仅支持 custom 数据源`, {
      param: 'data_source_config.type',
    });
  }
  checkCriteria(params.testing_criteria);
  const config = params.data_source_config;
  // OpenAI's stored schema: the item schema, wrapped with the sample's when asked.
  const schema = {
    type: 'object',
    properties: {
      item: config.item_schema ?? { type: 'object' },
      ...(config.include_sample_schema ? { sample: { type: 'object', properties: { output_text: { type: 'string' } } } } : {}),
    },
    required: ['item', ...(config.include_sample_schema ? ['sample'] : [])],
  };
  const ev: repo.EvalObject = {
    object: 'eval',
    id: newId('eval').replace('-', '_'),
    name: params.name ?? 'eval',
    data_source_config: { type: 'custom', schema },
    testing_criteria: params.testing_criteria,
    metadata: params.metadata ?? null,
    created_at: now(),
  };
  repo.insertEval(ctx, ev);
  return ev;
}

export function retrieveEval(ctx: Context, id: string): repo.EvalObject {
  const ev = repo.getEval(ctx, id);
  if (!ev) throw evalNotFound(id);
  return ev;
}

export function updateEval(ctx: Context, id: string, params: z.infer<typeof EvalUpdateParams>): repo.EvalObject {
  const ev = retrieveEval(ctx, id);
  const next = { ...ev, name: params.name ?? ev.name, metadata: params.metadata === undefined ? ev.metadata : params.metadata };
  repo.updateEval(ctx, next);
  return next;
}

export function deleteEval(ctx: Context, id: string): { object: 'eval.deleted'; deleted: boolean; eval_id: string } {
  retrieveEval(ctx, id);
  for (const run of repo.runsOf(ctx, id)) stopLocalRun(run.id);
  repo.deleteEval(ctx, id);
  return { object: 'eval.deleted', deleted: true, eval_id: id };
}

export function listEvals(ctx: Context, q: { after?: string; limit?: number; order?: 'asc' | 'desc' } = {}): ListPage<repo.EvalObject> {
  const page = selectPage<repo.EvalRow>(ctx.db, { table: 'evals', after: q.after, limit: q.limit ?? 20, order: q.order ?? 'asc' });
  if (!page) throw new WeitiaoError('not_found', `no eval '${q.after}' / 找不到评测`, { param: 'after' });
  return listPage(page.rows.map(repo.evalFromRow), page.has_more);
}

/**
 * Stores the run `queued` for a queue to execute; answered at once. The judge's endpoint is stored with the
 * run; the caller's key stays in this process's memory (a queue elsewhere uses its own, never a stored one).
 */
export function createRun(ctx: Context, evalId: string, params: RunCreateParams, options: { judgeBaseUrl?: string; judgeApiKey?: string | null } = {}): repo.RunObject {
  const ev = retrieveEval(ctx, evalId);
  const source = params.data_source;
  if (source.type === 'completions') resolveModel(ctx, source.model); // not_found (param model) before queueing
  if (source.source.type === 'file_id') repo.requireFile(ctx, source.source.id);
  const run: repo.RunObject = {
    object: 'eval.run',
    id: newId('evalrun').replace('-', '_'),
    eval_id: ev.id,
    name: params.name ?? `run on ${source.type === 'completions' ? source.model : 'given samples'}`,
    model: source.type === 'completions' ? source.model : '',
    data_source: source,
    status: 'queued',
    error: null,
    metadata: params.metadata ?? null,
    created_at: now(),
    result_counts: { total: 0, errored: 0, failed: 0, passed: 0 },
    per_model_usage: [],
    per_testing_criteria_results: [],
    report_url: '',
    weitiao: { progress: null, metrics: {}, finished_at: null, attempts: 0 },
  };
  repo.insertRun(ctx, run, options.judgeBaseUrl ?? null);
  rememberJudgeKey(run.id, options.judgeApiKey);
  repo.insertRunEvent(ctx, run.id, { message: `Created eval run: ${run.id} / 已创建评测运行` });
  wakeLocalQueues();
  return repo.getRun(ctx, run.id)!;
}

export function retrieveRun(ctx: Context, evalId: string, runId: string): repo.RunObject {
  retrieveEval(ctx, evalId);
  const run = repo.getRun(ctx, runId);
  if (!run || run.eval_id !== evalId) throw new WeitiaoError('not_found', `no run '${runId}' in eval '${evalId}' / 找不到评测运行`, { param: 'run_id' });
  return run;
}

export function listRuns(ctx: Context, evalId: string, q: { after?: string; limit?: number; order?: 'asc' | 'desc'; status?: string } = {}): ListPage<repo.RunObject> {
  retrieveEval(ctx, evalId);
  const where = ['eval_id = ?', ...(q.status ? ['status = ?'] : [])];
  const page = selectPage<repo.RunRow>(ctx.db, { table: 'eval_runs', where, params: [evalId, ...(q.status ? [q.status] : [])], after: q.after, limit: q.limit ?? 20, order: q.order ?? 'asc' });
  if (!page) throw new WeitiaoError('not_found', `no run '${q.after}' / 找不到评测运行`, { param: 'after' });
  return listPage(page.rows.map(repo.runFromRow), page.has_more);
}

/** Cancels a queued or running run (`conflict` once it has ended). */
export function cancelRun(ctx: Context, evalId: string, runId: string): repo.RunObject {
  const run = retrieveRun(ctx, evalId, runId);
  if (!['queued', 'in_progress'].includes(run.status)) {
    throw new WeitiaoError('conflict', `run '${runId}' has already ${run.status} / 评测运行已结束`, { param: 'run_id' });
  }
  // The store is the signal: the queue executing it (in any process) sees the status within its poll.
  if (repo.finishRun(ctx, runId, { status: 'canceled' })) repo.insertRunEvent(ctx, runId, { message: 'The run was cancelled / 评测运行已取消' });
  stopLocalRun(runId);
  return repo.getRun(ctx, runId)!;
}

export function deleteRun(ctx: Context, evalId: string, runId: string): { object: 'eval.run.deleted'; deleted: boolean; run_id: string } {
  retrieveRun(ctx, evalId, runId);
  repo.deleteRun(ctx, runId);
  stopLocalRun(runId);
  return { object: 'eval.run.deleted', deleted: true, run_id: runId };
}

export function listOutputItems(
  ctx: Context,
  evalId: string,
  runId: string,
  q: { after?: string; limit?: number; order?: 'asc' | 'desc'; status?: 'pass' | 'fail' } = {},
): ListPage<repo.OutputItemObject> {
  retrieveRun(ctx, evalId, runId);
  const where = ['run_id = ?', ...(q.status ? ['status = ?'] : [])];
  const page = selectPage<repo.OutputItemRow>(ctx.db, { table: 'eval_output_items', where, params: [runId, ...(q.status ? [q.status] : [])], after: q.after, limit: q.limit ?? 20, order: q.order ?? 'asc' });
  if (!page) throw new WeitiaoError('not_found', `no output item '${q.after}' / 找不到输出项`, { param: 'after' });
  return listPage(page.rows.map(repo.outputItemFromRow), page.has_more);
}

export function retrieveOutputItem(ctx: Context, evalId: string, runId: string, itemId: string): repo.OutputItemObject {
  retrieveRun(ctx, evalId, runId);
  const item = repo.getOutputItem(ctx, itemId);
  if (!item || item.run_id !== runId) throw new WeitiaoError('not_found', `no output item '${itemId}' / 找不到输出项`, { param: 'output_item_id' });
  return item;
}

/** weitiao's addition: a run's progress events (created, started or resumed, each chunk scored, ended). */
export function listRunEvents(ctx: Context, evalId: string, runId: string, q: { after?: string; limit?: number; order?: 'asc' | 'desc' } = {}): ListPage<repo.RunEventObject> {
  retrieveRun(ctx, evalId, runId);
  const page = selectPage<repo.RunEventRow>(ctx.db, { table: 'eval_run_events', where: ['run_id = ?'], params: [runId], orderBy: 'seq', after: q.after, limit: q.limit ?? 20, order: q.order ?? 'asc' });
  if (!page) throw new WeitiaoError('not_found', `no event '${q.after}' / 找不到事件`, { param: 'after' });
  return listPage(page.rows.map(repo.runEventFromRow), page.has_more);
}

/** Polls until the run has ended (tests, the CLI: a queue must be running, or drained first). */
export async function waitForRun(ctx: Context, evalId: string, runId: string, pollMs = 200): Promise<repo.RunObject> {
  for (;;) {
    const run = retrieveRun(ctx, evalId, runId);
    if (!['queued', 'in_progress'].includes(run.status)) return run;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}
