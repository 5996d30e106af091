/**
 * Every SQL statement on the `exports` table (migration 2). Rows hold JSON text; this module parses it, so
 * the service sees plain objects.
 */
import type { Context } from '../../context.js';
import { jsonNumber, now, selectPage } from '../../store/index.js';

export type ExportStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface ExportProgress {
  phase: string;
  current: number;
  total: number;
}

export interface ExportError {
  code: string;
  message: string;
  param: string | null;
}

/** A row as the service uses it (JSON columns parsed). */
export interface ExportRecord {
  id: string;
  model: string;
  format: 'hf' | 'gguf' | 'ollama';
  quantize: string | null;
  options: Record<string, unknown>;
  status: ExportStatus;
  progress: ExportProgress | null;
  path: string | null;
  result: Record<string, unknown> | null;
  check: Record<string, unknown> | null;
  error: ExportError | null;
  created_at: number;
  finished_at: number | null;
}

interface Row {
  id: string;
  model: string;
  format: string;
  quantize: string | null;
  options: string;
  status: string;
  progress: string | null;
  path: string | null;
  result: string | null;
  check: string | null;
  error: string | null;
  created_at: number;
  finished_at: number | null;
}

function parse<T>(text: string | null): T | null {
  if (text === null) return null;
  try {
    return JSON.parse(text) as T;
  } catch {
    return null; // a hand-edited row must not make the list unreadable
  }
}

function toRecord(row: Row): ExportRecord {
  return {
    id: row.id,
    model: row.model,
    format: row.format as ExportRecord['format'],
    quantize: row.quantize,
    options: parse<Record<string, unknown>>(row.options) ?? {},
    status: row.status as ExportStatus,
    progress: parse<ExportProgress>(row.progress),
    path: row.path,
    result: parse<Record<string, unknown>>(row.result),
    check: parse<Record<string, unknown>>(row.check),
    error: parse<ExportError>(row.error),
    created_at: row.created_at,
    finished_at: row.finished_at,
  };
}

export function insertExport(
  ctx: Context,
  input: Pick<ExportRecord, 'id' | 'model' | 'format' | 'quantize' | 'options' | 'path'>,
): ExportRecord {
  ctx.db
    .prepare(
      `INSERT INTO exports (id, model, format, quantize, options, status, path, created_at)
       VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)`,
    )
    .run(input.id, input.model, input.format, input.quantize, JSON.stringify(input.options), input.path, now());
  return getExport(ctx, input.id)!;
}

export function getExport(ctx: Context, id: string): ExportRecord | null {
  const row = ctx.db.prepare('SELECT * FROM exports WHERE id = ?').get(id) as Row | undefined;
  return row ? toRecord(row) : null;
}

/** One page, newest first; null when `after` names no export. */
export function pageExports(
  ctx: Context,
  q: { model?: string; after?: string; limit: number },
): { rows: ExportRecord[]; has_more: boolean } | null {
  const page = selectPage<Row>(ctx.db, {
    table: 'exports',
    where: q.model ? ['model = ?'] : [],
    params: q.model ? [q.model] : [],
    after: q.after,
    limit: q.limit,
  });
  return page && { rows: page.rows.map(toRecord), has_more: page.has_more };
}

/** The oldest queued export, if any. */
export function nextQueued(ctx: Context): ExportRecord | null {
  const row = ctx.db.prepare("SELECT * FROM exports WHERE status = 'queued' ORDER BY rowid LIMIT 1").get() as Row | undefined;
  return row ? toRecord(row) : null;
}

/** queued -> running, recording the process that runs it; false when it was no longer queued (cancelled). */
export function markRunning(ctx: Context, id: string, pid: number): boolean {
  return (
    ctx.db
      .prepare(
        ctx.db.dialect === 'postgres'
          ? `UPDATE exports SET status = 'running', options = jsonb_set(options::jsonb, '{runner_pid}', to_jsonb(?::bigint))::text
             WHERE id = ? AND status = 'queued'`
          : `UPDATE exports SET status = 'running', options = json_set(options, '$.runner_pid', ?)
             WHERE id = ? AND status = 'queued'`,
      )
      .run(pid, id).changes === 1
  );
}

export function setProgress(ctx: Context, id: string, progress: ExportProgress): void {
  ctx.db.prepare("UPDATE exports SET progress = ? WHERE id = ? AND status = 'running'").run(JSON.stringify(progress), id);
}

export function setResult(ctx: Context, id: string, result: Record<string, unknown>): void {
  ctx.db.prepare('UPDATE exports SET result = ? WHERE id = ?').run(JSON.stringify(result), id);
}

export function setCheck(ctx: Context, id: string, check: Record<string, unknown>): void {
  ctx.db.prepare('UPDATE exports SET "check" = ? WHERE id = ?').run(JSON.stringify(check), id);
}

/**
 * Ends an export. Only a queued or running export changes: a cancel that already ended it wins over the
 * runner's late result. Returns whether the row changed.
 */
export function finishExport(ctx: Context, id: string, status: Exclude<ExportStatus, 'queued' | 'running'>, error: ExportError | null = null): boolean {
  return (
    ctx.db
      .prepare(
        `UPDATE exports SET status = ?, error = ?, finished_at = ?
         WHERE id = ? AND status IN ('queued', 'running')`,
      )
      .run(status, error ? JSON.stringify(error) : null, now(), id).changes === 1
  );
}

/** Running exports and the pid of the process that runs each (null for rows without one). */
export function runningExports(ctx: Context): { id: string; pid: number | null }[] {
  return ctx.db
    .prepare(`SELECT id, ${jsonNumber(ctx.db, 'options', 'runner_pid')} AS pid FROM exports WHERE status = 'running'`)
    .all() as { id: string; pid: number | null }[];
}

/** A re-check's verdict on an ended export: succeeded or failed, with its error. */
export function setOutcome(ctx: Context, id: string, status: 'succeeded' | 'failed', error: ExportError | null): void {
  ctx.db.prepare('UPDATE exports SET status = ?, error = ?, finished_at = ? WHERE id = ?').run(status, error ? JSON.stringify(error) : null, now(), id);
}
