/** A registered model id to the directories the engine loads, following its lineage down to a base model. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { expandHome, getRow, isDir, notFound, toObject, type ModelRow } from './registry.js';
import { materializeDir, missingFiles, storedInBucket } from './stored.js';
import type { ResolvedModel } from './wire.js';

/**
 * Turns a registered model id into the paths the engine loads. Only names: a path is never looked up on the
 * server's disk (a client could otherwise load or probe any directory); directories are registered first
 * with `weitiao models add`. Fine-tuned models and checkpoints follow `base_model` to their base's directory.
 */
export function resolveModel(ctx: Context, name: string): ResolvedModel {
  const row = getRow(ctx, name);
  if (!row) {
    throw notFound(ctx, name);
  }
  if (row.kind === 'base') {
    requireDir(ctx, row.path, row.id);
    return { id: row.id, kind: 'base', basePath: row.path, adapterPath: null, baseId: row.id };
  }

  requireDir(ctx, row.path, row.id, row);
  // Where the weights live, from the training metadata: `format: 'full'` = the directory is a complete
  // model (full fine-tuning); `base_path` = a continued fine-tune's adapter sits on that merged base.
  const meta = toObject(row).weitiao.metadata;
  const own = (resolved: ResolvedModel): ResolvedModel => {
    if (meta.format === 'full') return { ...resolved, basePath: row.path, adapterPath: null };
    if (typeof meta.base_path === 'string') {
      requireDir(ctx, meta.base_path, row.id, row);
      return { ...resolved, basePath: meta.base_path };
    }
    return resolved;
  };
  // Follow the lineage down to a base model (continued fine-tuning makes fine-tunes of fine-tunes).
  const seen = new Set([row.id]);
  let baseRef = row.base_model!;
  for (;;) {
    const base = getRow(ctx, baseRef);
    if (!base) {
      // A job may have trained on an unregistered local directory: its path is the base's name.
      const dir = expandHome(baseRef);
      if (isDir(dir) && existsSync(path.join(dir, 'config.json'))) {
        const abs = path.resolve(dir);
        return own({ id: row.id, kind: row.kind, basePath: abs, adapterPath: row.path, baseId: abs });
      }
      throw new WeitiaoError(
        'not_found',
        `the base model '${baseRef}' of '${row.id}' is no longer registered / '${row.id}' 的基础模型 '${baseRef}' 已不存在`,
        { param: 'model' },
      );
    }
    if (base.kind === 'base') {
      if (meta.format !== 'full' && typeof meta.base_path !== 'string') requireDir(ctx, base.path, base.id);
      return own({ id: row.id, kind: row.kind, basePath: base.path, adapterPath: row.path, baseId: base.id });
    }
    if (seen.has(base.id) || !base.base_model) {
      throw new WeitiaoError('internal_error', `the lineage of '${row.id}' does not lead to a base model / '${row.id}' 的来源链有误`);
    }
    seen.add(base.id);
    baseRef = base.base_model;
  }
}

/** The directory is here, or (for a trained model's `row`) complete in object storage, to be downloaded by materializeModel. */
function requireDir(ctx: Context, dir: string, id: string, row?: ModelRow): void {
  if (isDir(dir)) return;
  if (row && storedInBucket(ctx, row, dir)) return;
  throw missingFiles(id, dir);
}

/**
 * `resolveModel` with its directories made local: a checkpoint or fine-tuned model whose local copy is missing
 * (another API host trained it, or this one was replaced) is downloaded from object storage and checked first.
 * Everything that hands a model's directories to the engine goes through here.
 */
export async function materializeModel(ctx: Context, name: string): Promise<ResolvedModel> {
  const resolved = resolveModel(ctx, name);
  for (const dir of [resolved.basePath, resolved.adapterPath]) if (dir) await materializeDir(ctx, dir, resolved.id);
  return resolved;
}

/** `resolveModel` for a request's `model` field: a failure names the field (`param: 'model'`) for the 400/404. */
export function resolveModelParam(ctx: Context, name: string): ResolvedModel {
  try {
    return resolveModel(ctx, name);
  } catch (err) {
    const e = WeitiaoError.from(err);
    throw new WeitiaoError(e.code, e.message, { param: 'model', cause: e });
  }
}
