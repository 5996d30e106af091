/**
 * Teacher runs as server tasks (issue 18): `label`, `synthesize` and `pairs` started through the API,
 * tracked like exports (status, progress, cancel) and resumable. The work is the same labelFile /
 * synthesizeFile / pairsFile the CLI calls; its journal (run.ts) is what makes a resume send no request
 * twice. Inputs are uploaded file ids, never server paths; output goes under the home:
 *   <home>/teacher-runs/<id>/run.json        the record (written atomically at every change of status)
 *   <home>/teacher-runs/<id>/output.jsonl    the data, beside it .provenance.jsonl and .state.jsonl
 * Records are files, not a table, so a run's record, data and journal stay together. A run found `running`
 * whose process is gone is marked failed and can be resumed.
 *
 * ```ts
 * const run = await createTeacherRun(ctx, { kind: 'label', teacher: { base_url, model }, input: 'file-…', column: 'review', labels: ['好评', '差评'] });
 * await waitForTeacherRun(ctx, run.id); // status 'succeeded', progress {done, total, written, rejected, requests}
 * ```
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../../context.js';
import { parseOrThrow, WeitiaoError } from '../../errors.js';
import { fileContentPath, materializeFile } from '../../files/index.js';
import { activeScope, DEFAULT_PROJECT } from '../../projects/index.js';
import { listPage, newId, type ListPage } from '../../store/index.js';
import { writeFileAtomic } from '../internal/atomic.js';
import { TeacherConfig } from './endpoint.js';
import { labelFile, pairsFile, synthesizeFile, type RunControls, type RunSummary } from './index.js';
import { labelReport } from './label.js';
import { provenanceLines, rejectedUnits, type Estimate, type RunProgress } from './run.js';
import { isAlive } from '../../engine/process.js';

const FileId = z.string().regex(/^file-[0-9a-z]+$/i, 'an uploaded file id (file-…)');

export const CreateTeacherRunBody = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('label'),
    teacher: TeacherConfig,
    /** CSV/TSV/JSONL rows (purpose user_data or fine-tune). */
    input: FileId,
    column: z.string().min(1),
    labels: z.array(z.string().min(1)).min(2),
    answer_column: z.string().min(1).default('label'),
    instruction: z.string().optional(),
    logprobs: z.boolean().default(true),
    on_unknown: z.enum(['drop', 'keep']).default('drop'),
  }),
  z.object({
    kind: z.literal('synthesize'),
    teacher: TeacherConfig,
    /** A few chat examples (JSONL). */
    seeds: FileId,
    task: z.string().min(1),
    n: z.number().int().min(1).max(100_000),
    topics: z.array(z.string()).optional(),
    personas: z.array(z.string()).optional(),
    system: z.string().optional(),
    max_tokens: z.number().int().min(1).default(512),
    temperature: z.number().min(0).max(2).default(0.9),
    seed: z.number().int().default(42),
    near_dup_threshold: z.number().gt(0).max(1).default(0.7),
    max_requests: z.number().int().min(1).optional(),
  }),
  z.object({
    kind: z.literal('pairs'),
    teacher: TeacherConfig,
    /** Chat prompts (JSONL); an assistant turn, if any, is ignored. */
    input: FileId,
    student: z.object({ model: z.string().min(1), base_url: z.string().url().optional() }),
    max_tokens: z.number().int().min(1).default(256),
    temperature: z.number().min(0).max(2).default(0),
  }),
]);
export type CreateTeacherRunBody = z.input<typeof CreateTeacherRunBody>;
type RunSpec = z.output<typeof CreateTeacherRunBody>;

/** `cancelling`: stopped taking work, waiting for the requests in flight to be answered and journaled. */
export const TeacherRunStatus = z.enum(['queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled']);

const EstimateSchema = z.object({
  units: z.number().int(),
  units_done: z.number().int(),
  requests: z.number().int(),
  prompt_tokens_estimated: z.number().int(),
  completion_tokens_max: z.number().int(),
});
export const TeacherRunEstimate = z.object({ object: z.literal('weitiao.teacher_run.estimate'), kind: z.enum(['label', 'synthesize', 'pairs']), estimate: EstimateSchema });
export type TeacherRunEstimate = z.infer<typeof TeacherRunEstimate>;

export const TeacherRunObject = z.object({
  id: z.string(),
  object: z.literal('weitiao.teacher_run'),
  kind: z.enum(['label', 'synthesize', 'pairs']),
  status: TeacherRunStatus,
  /** The request as given (the teacher's API key is never stored: only the name of its environment variable). */
  options: z.record(z.string(), z.unknown()),
  /** Requests still to send, estimated prompt tokens and the completion tokens' upper bound, before the (re)start. */
  estimate: EstimateSchema.nullable(),
  progress: z.object({ done: z.number().int(), total: z.number().int(), written: z.number().int(), rejected: z.number().int(), requests: z.number().int() }).nullable(),
  /** Requests sent by every start of this run together (a resume adds only the ones not answered before). */
  requests_sent: z.number().int(),
  /** Why units were rejected (first 100), and for `label` the labels' counts and confidence. */
  rejected: z.array(z.object({ key: z.string(), reason: z.string() })),
  labels: z.record(z.string(), z.unknown()).nullable(),
  error: z.object({ code: z.string(), message: z.string(), param: z.string().nullable() }).nullable(),
  created_at: z.number().int(),
  finished_at: z.number().int().nullable(),
});
export type TeacherRunObject = z.infer<typeof TeacherRunObject>;

interface StoredRun extends TeacherRunObject {
  project: string;
  pid: number | null;
  spec: RunSpec;
}

const root = (ctx: Context) => path.join(ctx.home.root, 'teacher-runs');
const dirOf = (ctx: Context, id: string) => path.join(root(ctx), id);
const nowSeconds = () => Math.floor(Date.now() / 1000);
const project = () => activeScope()?.project ?? DEFAULT_PROJECT;

function read(ctx: Context, id: string): StoredRun | null {
  if (!/^trun-[0-9a-z]+$/.test(id)) return null;
  try {
    const run = JSON.parse(readFileSync(path.join(dirOf(ctx, id), 'run.json'), 'utf8')) as StoredRun;
    return run.project === project() ? run : null;
  } catch {
    return null;
  }
}

const saving = new Map<string, Promise<void>>();

/** Writes the record; writes of one run are chained, so an older state never lands after a newer one. */
function save(ctx: Context, run: StoredRun): Promise<void> {
  const next = (saving.get(run.id) ?? Promise.resolve())
    .catch(() => {})
    .then(() => writeFileAtomic(path.join(dirOf(ctx, run.id), 'run.json'), JSON.stringify(run) + '\n'));
  saving.set(run.id, next);
  void next.finally(() => saving.get(run.id) === next && saving.delete(run.id)).catch(() => {});
  return next;
}

function toWire(run: StoredRun): TeacherRunObject {
  const { project: _p, pid: _pid, spec: _s, ...wire } = run;
  return wire;
}

/** In this process: the controllers of the runs it is running. */
const active = new Map<string, { run: StoredRun; stop: AbortController; abort: AbortController; done: Promise<void> }>();

/** The run's work: the same service calls as the CLI's, with the input file ids resolved to their bytes. */
async function start(ctx: Context, spec: RunSpec, c: RunControls): Promise<RunSummary> {
  if (spec.kind === 'label') {
    const { kind: _k, teacher: _t, input, ...o } = spec;
    return labelFile({ ...o, input: await materializeFile(ctx, input) }, c);
  }
  if (spec.kind === 'synthesize') {
    const { kind: _k, teacher: _t, seeds, ...o } = spec;
    return synthesizeFile({ ...o, seeds_file: await materializeFile(ctx, seeds) }, c);
  }
  const { kind: _k, teacher: _t, input, ...o } = spec;
  return pairsFile({ ...o, input: await materializeFile(ctx, input) }, c);
}

/** The cost estimate of a run before it starts: requests, estimated prompt tokens, the completion tokens' bound. */
export async function estimateTeacherRun(ctx: Context, body: CreateTeacherRunBody): Promise<TeacherRunEstimate> {
  const spec = parseOrThrow(CreateTeacherRunBody, body, { where: { en: 'teacher run', zh: '教师运行' } });
  const scratch = path.join(os.tmpdir(), `weitiao-estimate-${process.pid}-${newId('e')}`);
  mkdirSync(scratch, { recursive: true });
  try {
    let estimate: Estimate | null = null;
    await start(ctx, spec, { output: path.join(scratch, 'out.jsonl'), teacher: spec.teacher, onEstimate: (e) => ((estimate = e), false) });
    return { object: 'weitiao.teacher_run.estimate', kind: spec.kind, estimate: estimate! };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Checks the request, records the run as queued and starts it in this process; answers at once. */
export async function createTeacherRun(ctx: Context, body: CreateTeacherRunBody): Promise<TeacherRunObject> {
  const spec = parseOrThrow(CreateTeacherRunBody, body, { where: { en: 'teacher run', zh: '教师运行' } });
  for (const id of [spec.kind === 'synthesize' ? spec.seeds : spec.input]) fileContentPath(ctx, id); // not_found before anything is recorded
  const id = newId('trun');
  mkdirSync(dirOf(ctx, id), { recursive: true });
  const { kind: _k, ...options } = spec;
  const run: StoredRun = {
    id,
    object: 'weitiao.teacher_run',
    kind: spec.kind,
    status: 'queued',
    options,
    estimate: null,
    progress: null,
    requests_sent: 0,
    rejected: [],
    labels: null,
    error: null,
    created_at: nowSeconds(),
    finished_at: null,
    project: project(),
    pid: null,
    spec,
  };
  await save(ctx, run);
  launch(ctx, run);
  return toWire(run);
}

function launch(ctx: Context, run: StoredRun): void {
  const stop = new AbortController();
  const abort = new AbortController();
  const output = path.join(dirOf(ctx, run.id), 'output.jsonl');
  const done = (async () => {
    Object.assign(run, { status: 'running', pid: process.pid, error: null, finished_at: null });
    await save(ctx, run);
    let lastSave = 0;
    const sentBefore = run.requests_sent;
    // progress.requests counts one round of requests (synthesis has several): rounds are added up here.
    let earlierRounds = 0;
    let thisRound = 0;
    try {
      const summary = await start(ctx, run.spec, {
        output,
        teacher: run.spec.teacher,
        stop: stop.signal,
        signal: abort.signal,
        onEstimate: (e) => ((run.estimate = e), true),
        onProgress: (p: RunProgress) => {
          if (p.requests < thisRound) earlierRounds += thisRound;
          thisRound = p.requests;
          run.progress = p;
          run.requests_sent = sentBefore + earlierRounds + thisRound;
          // Progress is saved at most once a second (every answer would be a write per request).
          if (Date.now() - lastSave >= 1000) {
            lastSave = Date.now();
            void save(ctx, run).catch(() => {});
          }
        },
      });
      run.requests_sent = sentBefore + summary.requests_sent;
      run.progress = summary.progress;
      run.rejected = rejectedUnits(summary.files).slice(0, 100);
      if (run.kind === 'label') run.labels = labelReport(provenanceLines(summary.files)) as unknown as Record<string, unknown>;
      run.status = 'succeeded'; // every unit done, even if a cancel came after the last one started
    } catch (err) {
      const e = WeitiaoError.from(err);
      run.status = stop.signal.aborted || abort.signal.aborted ? 'cancelled' : 'failed';
      if (run.status === 'failed') run.error = { code: e.code, message: e.message, param: e.param ?? null };
    } finally {
      run.finished_at = nowSeconds();
      run.pid = null;
      // Saved before it leaves `active`, so no reader sees the stale `running` file and calls it lost.
      await save(ctx, run).catch(() => {});
      active.delete(run.id);
    }
  })();
  active.set(run.id, { run, stop, abort, done });
}

/** A run left `running` by a process that is gone: failed, resumable. */
function recovered(ctx: Context, run: StoredRun): StoredRun {
  if ((run.status === 'running' || run.status === 'queued' || run.status === 'cancelling') && !active.has(run.id) && !(run.pid !== process.pid && isAlive(run.pid))) {
    Object.assign(run, {
      status: 'failed',
      pid: null,
      finished_at: nowSeconds(),
      error: { code: 'engine_error', message: 'the process running this run stopped before it finished; resume it / 运行进程已退出，可续跑', param: null },
    });
    void save(ctx, run).catch(() => {});
  }
  return run;
}

function requireRun(ctx: Context, id: string): StoredRun {
  // A run this process is running: its live record (the file is written at most once a second).
  const live = active.get(id)?.run;
  if (live && live.project === project()) return live;
  const run = read(ctx, id);
  if (!run) throw new WeitiaoError('not_found', `no teacher run '${id}' / 教师运行不存在`, { param: 'run_id' });
  return recovered(ctx, run);
}

export function retrieveTeacherRun(ctx: Context, id: string): TeacherRunObject {
  return toWire(requireRun(ctx, id));
}

/** Newest first. */
export function listTeacherRuns(ctx: Context, q: { after?: string; limit?: number } = {}): ListPage<TeacherRunObject> {
  const ids = existsSync(root(ctx)) ? readdirSync(root(ctx)) : [];
  const runs = ids
    .map((id) => active.get(id)?.run ?? read(ctx, id))
    .filter((r): r is StoredRun => r !== null && r.project === project())
    .map((r) => recovered(ctx, r))
    .sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? 1 : -1));
  let from = 0;
  if (q.after) {
    from = runs.findIndex((r) => r.id === q.after) + 1;
    if (from === 0) throw new WeitiaoError('not_found', `no teacher run '${q.after}' / 教师运行不存在`, { param: 'after' });
  }
  const limit = q.limit ?? 20;
  const page = runs.slice(from, from + limit);
  return listPage(page.map(toWire), from + limit < runs.length);
}

/**
 * Stops a run: it takes no new work at once (status `cancelling`) and becomes `cancelled` when its requests
 * in flight are answered and journaled, so a resume asks nothing twice. Answers without waiting for them.
 */
export async function cancelTeacherRun(ctx: Context, id: string): Promise<TeacherRunObject> {
  const run = requireRun(ctx, id);
  const live = active.get(id);
  if (!live) {
    if (run.status === 'running' || run.status === 'cancelling') {
      throw new WeitiaoError('conflict', `teacher run '${id}' runs in another process / 该运行在其他进程中`, { param: 'run_id' });
    }
    return toWire(run); // already finished: nothing to stop
  }
  if (!live.stop.signal.aborted) {
    live.stop.abort(new WeitiaoError('cancelled', 'cancelled / 已取消'));
    if (run.status === 'running' || run.status === 'queued') run.status = 'cancelling';
    await save(ctx, run);
  }
  return toWire(run);
}

/** Starts a cancelled or failed run again on the same output: answers already journaled are not asked again. */
export async function resumeTeacherRun(ctx: Context, id: string): Promise<TeacherRunObject> {
  const run = requireRun(ctx, id);
  if (run.status !== 'cancelled' && run.status !== 'failed') {
    throw new WeitiaoError('conflict', `teacher run '${id}' is ${run.status}; only a cancelled or failed run resumes / 只有已取消或失败的运行可以续跑`, { param: 'run_id' });
  }
  run.status = 'queued';
  await save(ctx, run);
  launch(ctx, run);
  return toWire(run);
}

/** The output data (OpenAI JSONL) of a run, as a path for the content route. */
export function teacherRunOutput(ctx: Context, id: string): string {
  requireRun(ctx, id);
  const file = path.join(dirOf(ctx, id), 'output.jsonl');
  if (!existsSync(file)) throw new WeitiaoError('not_found', `teacher run '${id}' has no output yet / 该运行尚无输出`, { param: 'run_id' });
  return file;
}

/** Resolves once the run is no longer queued or running in this process (tests, the CLI). */
export async function waitForTeacherRun(ctx: Context, id: string): Promise<TeacherRunObject> {
  await active.get(id)?.done;
  return retrieveTeacherRun(ctx, id);
}
