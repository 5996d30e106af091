/**
 * Every SQL statement on the evals tables (migration 3). Rows hold JSON text; this module parses it, so the
 * service sees OpenAI's wire objects.
 */
import { existsSync } from 'node:fs';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { fileContentPath } from '../../files/index.js';
import { now } from '../../store/index.js';

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
  /** weitiao's additions: progress while it runs, criteria means with intervals. */
  weitiao: { progress: { phase: string; current: number; total: number } | null; metrics: RunSummary['metrics']; finished_at: number | null };
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
    weitiao: { progress: json(r.progress, null), metrics: s.metrics, finished_at: r.finished_at },
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
    ctx.db.prepare('DELETE FROM eval_runs WHERE eval_id = ?').run(id);
    ctx.db.prepare('DELETE FROM evals WHERE id = ?').run(id);
  })();
}

export function runsOf(ctx: Context, evalId: string): RunObject[] {
  return (ctx.db.prepare('SELECT * FROM eval_runs WHERE eval_id = ?').all(evalId) as RunRow[]).map(runFromRow);
}

export function insertRun(ctx: Context, r: RunObject): void {
  ctx.db
    .prepare('INSERT INTO eval_runs (id, eval_id, name, model, data_source, status, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
    .run(r.id, r.eval_id, r.name, r.model, JSON.stringify(r.data_source), r.status, r.metadata ? JSON.stringify(r.metadata) : null, r.created_at);
}

export function getRun(ctx: Context, id: string): RunObject | null {
  const row = ctx.db.prepare('SELECT * FROM eval_runs WHERE id = ?').get(id) as RunRow | undefined;
  return row ? runFromRow(row) : null;
}

/** Moves a queued run to in_progress; false when it is no longer queued (cancelled meanwhile). */
export function markRunning(ctx: Context, id: string): boolean {
  return ctx.db.prepare("UPDATE eval_runs SET status = 'in_progress' WHERE id = ? AND status = 'queued'").run(id).changes === 1;
}

export function setProgress(ctx: Context, id: string, progress: { phase: string; current: number; total: number }): void {
  ctx.db.prepare("UPDATE eval_runs SET progress = ? WHERE id = ? AND status = 'in_progress'").run(JSON.stringify(progress), id);
}

/** Ends a run once: a run already ended (e.g. cancelled) keeps its status. */
export function finishRun(ctx: Context, id: string, end: { status: RunStatus; summary?: RunSummary; error?: { code: string; message: string } }): boolean {
  return (
    ctx.db
      .prepare("UPDATE eval_runs SET status = ?, summary = COALESCE(?, summary), error = ?, finished_at = ? WHERE id = ? AND status IN ('queued', 'in_progress')")
      .run(end.status, end.summary ? JSON.stringify(end.summary) : null, end.error ? JSON.stringify(end.error) : null, now(), id).changes === 1
  );
}

export function deleteRun(ctx: Context, id: string): void {
  ctx.db.transaction(() => {
    ctx.db.prepare('DELETE FROM eval_output_items WHERE run_id = ?').run(id);
    ctx.db.prepare('DELETE FROM eval_runs WHERE id = ?').run(id);
  })();
}

export function insertOutputItems(ctx: Context, items: OutputItemObject[]): void {
  const insert = ctx.db.prepare(
    'INSERT INTO eval_output_items (id, run_id, eval_id, datasource_item_id, datasource_item, sample, results, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  ctx.db.transaction(() => {
    for (const i of items) {
      insert.run(i.id, i.run_id, i.eval_id, i.datasource_item_id, JSON.stringify(i.datasource_item), JSON.stringify(i.sample), JSON.stringify(i.results), i.status, i.created_at);
    }
  })();
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
