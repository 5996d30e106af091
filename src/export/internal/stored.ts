/**
 * Export artifacts in object storage. With `WEITIAO_STORAGE_URL=s3://…` a finished export's folder is
 * uploaded as `exports/<id>/<path in the folder>` and downloads stream from there (checked against each
 * object's sha256), so the API host need not be the one that ran the export. With the local store the
 * folder the engine wrote is the artifact, as before.
 */
import path from 'node:path';
import { statSync } from 'node:fs';
import type { Readable } from 'node:stream';
import type { Context } from '../../context.js';
import type { ExportResult } from '../../engine/index.js';
import { WeitiaoError } from '../../errors.js';
import { storageFor, type ObjectInfo } from '../../storage/index.js';
import { listFiles, tarEntries } from './tar.js';

const prefixOf = (id: string) => `exports/${id}/`;

/** The folder an export wrote: its result's path, or the folder of a single written file. */
export function exportFolder(result: ExportResult): string {
  return statSync(result.path).isFile() ? path.dirname(result.path) : result.path;
}

/** Uploads an export's folder to object storage (nothing to do with the local store). */
export async function uploadExport(
  ctx: Context,
  id: string,
  result: ExportResult,
  progress: (phase: string, current: number, total: number) => void,
  signal: AbortSignal,
): Promise<void> {
  const store = storageFor(ctx);
  if (store.kind === 'local') return;
  const dir = exportFolder(result);
  const files = listFiles(dir);
  for (const [i, rel] of files.entries()) {
    if (signal.aborted) throw new WeitiaoError('cancelled', 'export cancelled / 导出已取消');
    progress('upload', i, files.length);
    await store.putFile(prefixOf(id) + rel, path.join(dir, rel));
  }
  progress('upload', files.length, files.length);
}

export type StoredDownload = { kind: 'file'; name: string; size: number; body: Readable } | { kind: 'directory'; name: string; body: Readable };

/**
 * An export's download from object storage: the .gguf of a GGUF export, else a tar of its objects; null
 * when nothing is stored (the local store, or an export made before object storage was configured).
 */
export async function openStoredExport(ctx: Context, id: string, format: string, result: ExportResult): Promise<StoredDownload | null> {
  const store = storageFor(ctx);
  if (store.kind === 'local') return null;
  const objects: ObjectInfo[] = await store.list(prefixOf(id));
  if (objects.length === 0) return null;
  const single = format === 'gguf' ? objects.find((o) => o.key === prefixOf(id) + path.basename(result.path) && o.key.endsWith('.gguf')) : undefined;
  if (single) return { kind: 'file', name: path.basename(result.path), size: single.size, body: await store.get(single.key) };
  const body = tarEntries(
    objects.map((o) => ({ name: `${id}/${o.key.slice(prefixOf(id).length)}`, size: o.size, mtimeMs: o.modified.getTime(), open: () => store.get(o.key) })),
  );
  return { kind: 'directory', name: id, body };
}
