/** A row of the models table and the two lookups registry.ts and stored.ts both need (kept apart: no import cycle). */
import { statSync } from 'node:fs';
import type { Context } from '../context.js';
import type { ModelKind, ModelSource } from './wire.js';

export interface ModelRow {
  id: string;
  kind: ModelKind;
  path: string;
  base_model: string | null;
  job_id: string | null;
  source: ModelSource;
  owned_by: string;
  created_at: number;
  metadata: string;
}

export function getRow(ctx: Context, id: string): ModelRow | undefined {
  return ctx.db.prepare('SELECT * FROM models WHERE id = ?').get(id) as ModelRow | undefined;
}

export function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
