/** The models table: registering, listing, retrieving and deleting models, and the not-found message. */
// (the row type and the two lookups stored.ts shares live in rows.ts)
import { readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Context } from '../context.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { now } from '../store/index.js';
import { deleteCheckpointOfModel, unfinishedJobUsingModels } from '../jobs/repository.js';
import { getRow, isDir, type ModelRow } from './rows.js';
import { forgetModelDirs } from './stored.js';
import { ModelKind, ModelSource, type ModelDeleted, type ModelList, type ModelObject } from './wire.js';


export function toObject(row: ModelRow): ModelObject {
  let metadata: Record<string, unknown> = {};
  try {
    metadata = JSON.parse(row.metadata) as Record<string, unknown>;
  } catch {
    /* a hand-edited row must not make the whole list unreadable */
  }
  return {
    id: row.id,
    object: 'model',
    created: row.created_at,
    owned_by: row.owned_by,
    weitiao: {
      kind: row.kind,
      source: row.source,
      base_model: row.base_model,
      job_id: row.job_id,
      path: row.path,
      metadata,
    },
  };
}

/**
 * The model as an API client sees it: `weitiao.path` relative to the home directory and every path in the
 * metadata hidden the same way (src/errors.ts hideServerPaths): a client names models, never server folders.
 */
export function publicModel(model: ModelObject, root: string): ModelObject {
  const hide = (value: unknown): unknown => {
    if (typeof value === 'string') return hideServerPaths(value, root);
    if (Array.isArray(value)) return value.map(hide);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, hide(v)]));
    return value;
  };
  return {
    ...model,
    weitiao: { ...model.weitiao, path: hideServerPaths(model.weitiao.path, root), metadata: hide(model.weitiao.metadata) as Record<string, unknown> },
  };
}


export interface RegisterModelInput {
  id: string;
  kind: ModelKind;
  /** Base: the model directory; fine-tuned/checkpoint: the adapter directory. Stored absolute. */
  path: string;
  base_model?: string | null;
  job_id?: string | null;
  source: ModelSource;
  owned_by?: string;
  metadata?: Record<string, unknown>;
}

/** Adds a model to the registry, or updates it (keeping its creation time) when the id exists. */
export function registerModel(ctx: Context, input: RegisterModelInput): ModelObject {
  if (!input.id.trim()) throw new WeitiaoError('invalid_request', 'a model id cannot be empty / 模型 id 不能为空', { param: 'id' });
  const kind = ModelKind.parse(input.kind);
  const source = ModelSource.parse(input.source);
  if (kind !== 'base' && !input.base_model) {
    throw new WeitiaoError('invalid_request', `a ${kind} model needs base_model / ${kind} 模型须指明基础模型`, { param: 'base_model' });
  }
  ctx.db
    .prepare(
      `INSERT INTO models (id, kind, path, base_model, job_id, source, owned_by, created_at, metadata)
       VALUES (@id, @kind, @path, @base_model, @job_id, @source, @owned_by, @created_at, @metadata)
       ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, path = excluded.path, base_model = excluded.base_model,
         job_id = excluded.job_id, source = excluded.source, owned_by = excluded.owned_by, metadata = excluded.metadata`,
    )
    .run({
      id: input.id,
      kind,
      path: path.resolve(input.path),
      base_model: input.base_model ?? null,
      job_id: input.job_id ?? null,
      source,
      owned_by: input.owned_by ?? 'weitiao',
      created_at: now(),
      metadata: JSON.stringify(input.metadata ?? {}),
    });
  return toObject(getRow(ctx, input.id)!);
}

/** Every registered model, oldest first (OpenAI's list envelope); `kind` filters. */
export function listModels(ctx: Context, options: { kind?: ModelKind } = {}): ModelList {
  const rows = (
    options.kind
      ? ctx.db.prepare('SELECT * FROM models WHERE kind = ? ORDER BY created_at, rowid').all(ModelKind.parse(options.kind))
      : ctx.db.prepare('SELECT * FROM models ORDER BY created_at, rowid').all()
  ) as ModelRow[];
  return { object: 'list', data: rows.map(toObject) };
}

/** One model by id; `not_found` (param `model`) with close names when there is none. */
export function retrieveModel(ctx: Context, id: string): ModelObject {
  const row = getRow(ctx, id);
  if (!row) throw notFound(ctx, id);
  return toObject(row);
}

/**
 * Deletes a fine-tuned model (with its job's checkpoint models) or a checkpoint, removing their adapter
 * directories (and their objects, with object storage). Base models need `force`; their files go only when weitiao downloaded or built them.
 */
export function deleteModel(ctx: Context, id: string, options: { force?: boolean } = {}): ModelDeleted {
  const row = getRow(ctx, id);
  if (!row) throw notFound(ctx, id);
  requireNotInUse(ctx, row);

  let rows: ModelRow[] = [row];
  if (row.kind === 'base') {
    if (!options.force) {
      throw new WeitiaoError(
        'permission_denied',
        `'${id}' is a base model; delete it with force (\`weitiao models delete ${id} --force\`) / '${id}' 是基础模型，须加 --force 才能删除`,
        { param: 'model' },
      );
    }
    const dependents = ctx.db.prepare('SELECT id FROM models WHERE base_model = ? ORDER BY created_at').all(id) as { id: string }[];
    if (dependents.length) {
      throw new WeitiaoError(
        'conflict',
        `base model '${id}' is used by ${dependents.map((d) => `'${d.id}'`).join(', ')}; delete those first / 仍有模型基于 '${id}'，请先删除它们`,
        { param: 'model' },
      );
    }
  } else if (row.kind === 'fine-tuned' && row.job_id) {
    const checkpoints = ctx.db
      .prepare("SELECT * FROM models WHERE job_id = ? AND kind = 'checkpoint' AND id != ?")
      .all(row.job_id, id) as ModelRow[];
    rows = rows.concat(checkpoints);
  }

  const del = ctx.db.prepare('DELETE FROM models WHERE id = ?');
  // A job's checkpoint list must not offer a model whose folder is gone: its row goes with the model.
  ctx.db.transaction(() =>
    rows.forEach((r) => {
      del.run(r.id);
      if (r.kind === 'checkpoint') deleteCheckpointOfModel(ctx.db, r.id);
    }),
  )();
  // With object storage their objects go too (in the background, after any upload still running).
  forgetModelDirs(ctx, rows);
  // Rows first, files after: a crash in between leaves stray files, never a model whose files are gone.
  for (const r of rows) {
    if (r.source === 'local') continue; // the user's own directory, only registered here
    if (!isOwnedPath(ctx, r.path)) continue;
    rmSync(r.path, { recursive: true, force: true });
    // `models/org/name`: drop `org/` too once its last model is gone.
    const parent = path.dirname(r.path);
    if (path.dirname(parent) === ctx.home.models && isDir(parent) && readdirSync(parent).length === 0) rmSync(parent, { recursive: true });
  }
  return { id, object: 'model', deleted: true };
}

/**
 * `conflict` naming the job when an unfinished job trains from this model (its `model`, or the model
 * the job's base was fine-tuned from) or, for a fine-tuned model or checkpoint, when the job it came
 * from has not finished (a paused job resumes from its checkpoints).
 */
function requireNotInUse(ctx: Context, row: ModelRow): void {
  // The models deleted with this one (a fine-tune takes its job's checkpoints along) count too.
  const ids = [row.id];
  if (row.kind === 'fine-tuned' && row.job_id) {
    for (const c of ctx.db.prepare("SELECT id FROM models WHERE job_id = ? AND kind = 'checkpoint'").all(row.job_id) as { id: string }[]) ids.push(c.id);
  }
  // An unfinished job: what it trains from and what it saved must stay.
  const user = unfinishedJobUsingModels(ctx.db, ids, row.job_id);
  if (!user) return;
  const how = user.id === row.job_id ? 'was saved by' : 'is the base of';
  throw new WeitiaoError(
    'conflict',
    `model '${row.id}' ${how} job ${user.id}, which has not finished (status '${user.status}'); cancel the job or let it finish first / 模型 '${row.id}' 正被未结束的任务 ${user.id} 使用，请先取消或等待任务结束`,
    { param: 'model' },
  );
}

/** True for a directory weitiao made inside its home (never the home's top-level folders themselves). */
function isOwnedPath(ctx: Context, p: string): boolean {
  const rel = path.relative(ctx.home.root, path.resolve(p));
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) && rel.split(path.sep).length >= 2;
}


export function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

function looksLikePath(p: string): boolean {
  return p.startsWith('/') || p.startsWith('./') || p.startsWith('../') || p.startsWith('~') || p === '.' || p === '..';
}

/** `not_found` naming up to three registered ids close to what was asked for. */
export function notFound(ctx: Context, id: string): WeitiaoError {
  if (looksLikePath(id)) return pathGiven();
  const ids = (ctx.db.prepare('SELECT id FROM models').all() as { id: string }[]).map((r) => r.id);
  const q = id.toLowerCase();
  const close = ids
    .map((candidate) => {
      const c = candidate.toLowerCase();
      return { candidate, d: levenshtein(q, c), contains: c.includes(q) || q.includes(c) };
    })
    .filter(({ d, candidate, contains }) => contains || d <= Math.max(2, Math.floor(candidate.length / 3)))
    .sort((a, b) => a.d - b.d)
    .slice(0, 3)
    .map(({ candidate }) => `'${candidate}'`);
  const hint = close.length ? ` Did you mean ${close.join(', ')}?` : ids.length ? '' : ' No models are registered yet.';
  return new WeitiaoError(
    'not_found',
    `model '${id}' not found.${hint} See \`weitiao models list\`. / 找不到模型 '${id}'${close.length ? `，是否指 ${close.join('、')}？` : ''}`,
    { param: 'model' },
  );
}

/** A path where a model id belongs. The value is not echoed: cut to its last segment (as every path in an API answer), it would read as a model name. */
function pathGiven(): WeitiaoError {
  return new WeitiaoError(
    'not_found',
    'models are named by their registered id, not a path: see `weitiao models list`, or register a model directory with `weitiao models add <dir> --name <id>` / 模型须使用已注册的名称而非路径，请先用 weitiao models add 注册',
    { param: 'model' },
  );
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

export { getRow, isDir, type ModelRow };
