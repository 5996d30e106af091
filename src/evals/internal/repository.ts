/**
 * Every SQL statement on the evals tables (migrations 3 and 6). Rows hold JSON text; this module parses it, so
 * the service sees OpenAI's wire objects.
 */
import { existsSync } from 'node:fs';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { fileContentPath } from '../../files/index.js';
import { newId, now, skipLocked } from '../../store/index.js';

export interface EvalObject {
  object: 'eval';
  id: string;
  name: string;
  data_source_config: { type: 'custom'; schema: Record<string, unknown> };
  testing_criteria: ({ type: string; name: string; pass_threshold?: number | null } & Record<string, unknown>)[];
  metadata: Record<string, string> | null;
  created_at: number;
}

export type RunStatus = 'queued' | 'in_progress' | 'completed' | 'failed' | 'canceled';

export interface RunSummary {
  result_counts: { total: number; errored: number; failed: number; passed: number };
  per_model_usage: { model_name: string; invocation_count: number; prompt_tokens: number; completion_tokens: number; total_tokens: number; cached_tokens: number }[];
  per_testing_criteria_results: { testing_criteria: string; passed: number; failed: number }[];
  /** weitiao: each criterion's mean score with its 95% bootstrap interval. */
  metrics: Record<string, { value: number; ci_low: number; ci_high: number; scale: number }>;
}

export interface RunObject {
  object: 'eval.run';
  id: string;
  eval_id: string;
  name: string;
  model: string;
  data_source: unknown;
  status: RunStatus;
  error: { code: string; message: string } | null;
  metadata: Record<string, string> | null;
  created_at: number;
  result_counts: RunSummary['result_counts'];
  per_model_usage: RunSummary['per_model_usage'];
  per_testing_criteria_results: RunSummary['per_testing_criteria_results'];
  report_url: string;
  /**
   * weitiao's additions: progress while it runs (`current` of `total` items scored and stored), criteria means
   * with intervals, and how many times a queue claimed it (above 1: it was resumed after its worker died).
   */
  weitiao: { progress: RunProgress | null; metrics: RunSummary['metrics']; finished_at: number | null; attempts: number };
}

export interface RunProgress {
  phase: string;
  current: number;
  total: number;
}

/** weitiao's progress log of a run, shaped like a fine-tuning job's events. */
export interface RunEventObject {
  object: 'eval.run.event';
  id: string;
  created_at: number;
  level: 'info' | 'warn' | 'error';
  message: string;
  data: Record<string, unknown> | null;
}

export interface OutputItemObject {
  object: 'eval.run.output_item';
  id: string;
  run_id: string;
  eval_id: string;
  created_at: number;
  status: 'pass' | 'fail';
  datasource_item_id: number;
  datasource_item: Record<string, unknown>;
  results: { name: string; type: string; score: number; passed: boolean; sample: null }[];
  sample: Record<string, unknown>;
}

export interface EvalRow {
  id: string;
  name: string;
  data_source_config: string;
  testing_criteria: string;
  metadata: string | null;
  created_at: number;
}
export interface RunRow {
  id: string;
  eval_id: string;
  name: string;
  model: string;
  data_source: string;
  status: string;
  progress: string | null;
  summary: string | null;
  error: string | null;
  metadata: string | null;
  created_at: number;
  finished_at: number | null;
  worker_id: string | null;
  heartbeat_at: number | null;
  attempts: number;
  judge_base_url: string | null;
}
export interface OutputItemRow {
  id: string;
  run_id: string;
  eval_id: string;
  datasource_item_id: number;
  datasource_item: string;
  sample: string;
  results: string;
  status: string;
  created_at: number;
}

const json = <T>(text: string | null, fallback: T): T => {
  if (text === null) return fallback;
  try {
    return JSON.parse(text) as T;
  } catch {
    return fallback; // a hand-edited row must not make the list unreadable
  }
};

export function evalFromRow(r: EvalRow): EvalObject {
  return {
    object: 'eval',
    id: r.id,
    name: r.name,
    data_source_config: json(r.data_source_config, { type: 'custom' as const, schema: {} }),
    testing_criteria: json(r.testing_criteria, []),
    metadata: json(r.metadata, null),
    created_at: r.created_at,
  };
}

const EMPTY: RunSummary = { result_counts: { total: 0, errored: 0, failed: 0, passed: 0 }, per_model_usage: [], per_testing_criteria_results: [], metrics: {} };

export function runFromRow(r: RunRow): RunObject {
  const s = json<RunSummary>(r.summary, EMPTY);
  return {
    object: 'eval.run',
    id: r.id,
    eval_id: r.eval_id,
    name: r.name,
    model: r.model,
    data_source: json(r.data_source, {}),
    status: r.status as RunStatus,
    error: json(r.error, null),
    metadata: json(r.metadata, null),
    created_at: r.created_at,
    result_counts: s.result_counts,
    per_model_usage: s.per_model_usage,
    per_testing_criteria_results: s.per_testing_criteria_results,
    report_url: '',
    weitiao: { progress: json(r.progress, null), metrics: s.metrics, finished_at: r.finished_at, attempts: r.attempts ?? 0 },
  };
}

export function outputItemFromRow(r: OutputItemRow): OutputItemObject {
  return {
    object: 'eval.run.output_item',
    id: r.id,
    run_id: r.run_id,
    eval_id: r.eval_id,
    created_at: r.created_at,
    status: r.status as 'pass' | 'fail',
    datasource_item_id: r.datasource_item_id,
    datasource_item: json(r.datasource_item, {}),
    results: json(r.results, []),
    sample: json(r.sample, {}),
  };
}

export function insertEval(ctx: Context, e: EvalObject): void {
  ctx.db
    .prepare('INSERT INTO evals (id, name, data_source_config, testing_criteria, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?)')
    .run(e.id, e.name, JSON.stringify(e.data_source_config), JSON.stringify(e.testing_criteria), e.metadata ? JSON.stringify(e.metadata) : null, e.created_at);
}

export function updateEval(ctx: Context, e: EvalObject): void {
  ctx.db.prepare('UPDATE evals SET name = ?, metadata = ? WHERE id = ?').run(e.name, e.metadata ? JSON.stringify(e.metadata) : null, e.id);
}

export function getEval(ctx: Context, id: string): EvalObject | null {
  const row = ctx.db.prepare('SELECT * FROM evals WHERE id = ?').get(id) as EvalRow | undefined;
  return row ? evalFromRow(row) : null;
}

export function deleteEval(ctx: Context, id: string): void {
  ctx.db.transaction(() => {
    ctx.db.prepare('DELETE FROM eval_output_items WHERE eval_id = ?').run(id);
    ctx.db.prepare('DELETE FROM eval_run_events WHERE run_id IN (SELECT id FROM eval_runs WHERE eval_id = ?)').run(id);
    ctx.db.prepare('DELETE FROM eval_runs WHERE eval_id = ?').run(id);
    ctx.db.prepare('DELETE FROM evals WHERE id = ?').run(id);
  })();
}

export function runsOf(ctx: Context, evalId: string): RunObject[] {
  return (ctx.db.prepare('SELECT * FROM eval_runs WHERE eval_id = ?').all(evalId) as RunRow[]).map(runFromRow);
}

export function insertRun(ctx: Context, r: RunObject, judgeBaseUrl: string | null = null): void {
  ctx.db
    .prepare('INSERT INTO eval_runs (id, eval_id, name, model, data_source, status, metadata, created_at, judge_base_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
    .run(r.id, r.eval_id, r.name, r.model, JSON.stringify(r.data_source), r.status, r.metadata ? JSON.stringify(r.metadata) : null, r.created_at, judgeBaseUrl);
}

export function getRunRow(ctx: Context, id: string): RunRow | null {
  return (ctx.db.prepare('SELECT * FROM eval_runs WHERE id = ?').get(id) as RunRow | undefined) ?? null;
}

export function getRun(ctx: Context, id: string): RunObject | null {
  const row = ctx.db.prepare('SELECT * FROM eval_runs WHERE id = ?').get(id) as RunRow | undefined;
  return row ? runFromRow(row) : null;
}

// ------------------------------------------------------------------------------------------- the queue

/**
 * Claims the oldest queued run (or run `id` if it is queued) for `workerId`, atomically across processes:
 * the run moves to in_progress with this worker, a fresh heartbeat and one more attempt. The row, or null.
 */
export function claimRun(ctx: Context, workerId: string, id?: string): RunRow | null {
  const db = ctx.db;
  // An idle queue polls: look without the write lock first, take it only when something waits.
  const any = id === undefined ? db.prepare("SELECT 1 FROM eval_runs WHERE status = 'queued' AND worker_id IS NULL LIMIT 1").get() : true;
  if (!any) return null;
  return db
    .transaction((): RunRow | null => {
      const waiting = "status = 'queued' AND worker_id IS NULL";
      const row = (
        id === undefined
          ? db.prepare(`SELECT id FROM eval_runs WHERE ${waiting} ORDER BY rowid LIMIT 1${skipLocked(db)}`).get()
          : db.prepare(`SELECT id FROM eval_runs WHERE id = ? AND ${waiting}${skipLocked(db)}`).get(id)
      ) as { id: string } | undefined;
      if (!row) return null;
      const claimed = db
        .prepare(`UPDATE eval_runs SET status = 'in_progress', worker_id = ?, heartbeat_at = ?, attempts = attempts + 1 WHERE id = ? AND ${waiting}`)
        .run(workerId, now(), row.id);
      return claimed.changes === 1 ? getRunRow(ctx, row.id) : null;
    })
    .immediate();
}

/** The heartbeat of a run `workerId` holds; false when it no longer holds it in progress (cancelled, deleted, taken over). */
export function beatRun(ctx: Context, id: string, workerId: string): boolean {
  return ctx.db.prepare("UPDATE eval_runs SET heartbeat_at = ? WHERE id = ? AND worker_id = ? AND status = 'in_progress'").run(now(), id, workerId).changes === 1;
}

/** Runs in progress under another worker than `workerId` (recovery checks whether that worker lives). */
export function runsClaimedByOthers(ctx: Context, workerId: string): RunRow[] {
  return ctx.db.prepare("SELECT * FROM eval_runs WHERE status = 'in_progress' AND worker_id IS NOT NULL AND worker_id != ?").all(workerId) as RunRow[];
}

/** Puts a run its worker `workerId` left back in the queue; false when that worker no longer holds it. */
export function requeueRun(ctx: Context, id: string, workerId: string): boolean {
  return (
    ctx.db.prepare("UPDATE eval_runs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL WHERE id = ? AND worker_id = ? AND status = 'in_progress'").run(id, workerId)
      .changes === 1
  );
}

export function setProgress(ctx: Context, id: string, progress: RunProgress): void {
  ctx.db.prepare("UPDATE eval_runs SET progress = ? WHERE id = ? AND status = 'in_progress'").run(JSON.stringify(progress), id);
}

/** How many rows of the run have an output item: items are stored in row order, a chunk at a time, so a prefix. */
export function storedItemCount(ctx: Context, runId: string): number {
  return (ctx.db.prepare('SELECT COUNT(*) AS n FROM eval_output_items WHERE run_id = ?').get(runId) as { n: number }).n;
}

/** Every output item of a run in row order (the summary is computed from them). */
export function outputItemsOf(ctx: Context, runId: string): OutputItemObject[] {
  return (ctx.db.prepare('SELECT * FROM eval_output_items WHERE run_id = ? ORDER BY datasource_item_id').all(runId) as OutputItemRow[]).map(outputItemFromRow);
}

export interface RunEventRow {
  seq: number;
  id: string;
  run_id: string;
  created_at: number;
  level: string;
  message: string;
  data: string | null;
}

export function runEventFromRow(r: RunEventRow): RunEventObject {
  return { object: 'eval.run.event', id: r.id, created_at: r.created_at, level: r.level as RunEventObject['level'], message: r.message, data: json(r.data, null) };
}

export function insertRunEvent(ctx: Context, runId: string, e: { level?: RunEventObject['level']; message: string; data?: Record<string, unknown> }): RunEventObject {
  const row: Omit<RunEventRow, 'seq'> = {
    id: newId('evalrunevent').replace('-', '_'),
    run_id: runId,
    created_at: now(),
    level: e.level ?? 'info',
    message: e.message,
    data: e.data ? JSON.stringify(e.data) : null,
  };
  ctx.db.prepare('INSERT INTO eval_run_events (id, run_id, created_at, level, message, data) VALUES (@id, @run_id, @created_at, @level, @message, @data)').run(row);
  return runEventFromRow({ ...row, seq: 0 });
}

/**
 * Ends a run once: a run already ended (e.g. cancelled) keeps its status. With `workerId`, only while that
 * worker holds it (a worker never ends a run it lost to recovery or that was cancelled meanwhile).
 */
export function finishRun(ctx: Context, id: string, end: { status: RunStatus; summary?: RunSummary; error?: { code: string; message: string } }, workerId?: string): boolean {
  return (
    ctx.db
      .prepare(
        `UPDATE eval_runs SET status = ?, summary = COALESCE(?, summary), error = ?, finished_at = ?, worker_id = NULL
         WHERE id = ? AND status IN ('queued', 'in_progress') AND (CAST(? AS TEXT) IS NULL OR worker_id = ?)`,
      )
      .run(end.status, end.summary ? JSON.stringify(end.summary) : null, end.error ? JSON.stringify(end.error) : null, now(), id, workerId ?? null, workerId ?? null).changes === 1
  );
}

export function deleteRun(ctx: Context, id: string): void {
  ctx.db.transaction(() => {
    ctx.db.prepare('DELETE FROM eval_output_items WHERE run_id = ?').run(id);
    ctx.db.prepare('DELETE FROM eval_run_events WHERE run_id = ?').run(id);
    ctx.db.prepare('DELETE FROM eval_runs WHERE id = ?').run(id);
  })();
}

/**
 * Stores a chunk of output items in one transaction, only while `workerId` holds the run in progress: a
 * worker that lost the run (cancelled, deleted, taken over after a stale heartbeat) writes nothing. False then.
 */
export function insertOutputItems(ctx: Context, runId: string, workerId: string, items: OutputItemObject[]): boolean {
  const insert = ctx.db.prepare(
    'INSERT INTO eval_output_items (id, run_id, eval_id, datasource_item_id, datasource_item, sample, results, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  return ctx.db
    .transaction((): boolean => {
      const held = ctx.db.prepare("SELECT 1 FROM eval_runs WHERE id = ? AND worker_id = ? AND status = 'in_progress'").get(runId, workerId);
      if (!held) return false;
      for (const i of items) {
        insert.run(i.id, i.run_id, i.eval_id, i.datasource_item_id, JSON.stringify(i.datasource_item), JSON.stringify(i.sample), JSON.stringify(i.results), i.status, i.created_at);
      }
      return true;
    })
    .immediate();
}

export function getOutputItem(ctx: Context, id: string): OutputItemObject | null {
  const row = ctx.db.prepare('SELECT * FROM eval_output_items WHERE id = ?').get(id) as OutputItemRow | undefined;
  return row ? outputItemFromRow(row) : null;
}

/** An uploaded file's stored content path; `not_found` naming the data source's file id. */
export function requireFile(ctx: Context, id: string): string {
  let file: string | null = null;
  try {
    file = fileContentPath(ctx, id);
  } catch {
    file = null;
  }
  if (!file || !existsSync(file)) throw new WeitiaoError('not_found', `no file '${id}' / 找不到文件 '${id}'`, { param: 'data_source.source.id' });
  return file;
}
