/**
 * Trained weights in object storage. With `WEITIAO_STORAGE_URL=s3://…` every checkpoint and fine-tuned model
 * directory a run saves (and a continued fine-tune's merged base) is uploaded in the background after its row
 * is recorded, as the directory objects of src/storage (files under `<key>/`, the manifest written last), with
 * the key its path has in the home (`jobs/<job>/checkpoints/step-N`, `jobs/<job>/model`). The row stays
 * usable from the local copy meanwhile; once the upload is complete the row's metadata says so
 * (`object_storage`), and from then on a host without the local copy downloads it when the engine needs it.
 *
 * ```ts
 * storeModelDirs(ctx, 'ft:tiny:waimai:abc');              // background; the row is marked when complete
 * const resolved = await materializeModel(ctx, 'ft:tiny:waimai:abc:ckpt-step-8'); // local, checked dirs
 * await settledStorage(ctx);                               // every queued upload/delete done (tests, shutdown)
 * ```
 * With the local store the home is the store: nothing here does anything.
 */
import path from 'node:path';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { deleteDir, getDir, putDir, readDirManifest, storageFor } from '../storage/index.js';
import { getRow, isDir, type ModelRow } from './rows.js';

/** What a model row's metadata records once all its directories are complete in object storage. */
export interface ObjectStorageMark {
  /** The stored directories' keys (the model's own, and a continued fine-tune's merged base). */
  keys: string[];
  files: number;
  bytes: number;
  stored_at: number;
}

/** The background work of one context, one task at a time (an upload and a delete of one key never interleave). */
const queues = new WeakMap<Context, Promise<void>>();
const downloads = new WeakMap<Context, Map<string, Promise<void>>>();

function enqueue(ctx: Context, task: () => Promise<void>): Promise<void> {
  const next = (queues.get(ctx) ?? Promise.resolve()).then(task);
  const settled = next.catch(() => undefined);
  queues.set(ctx, settled);
  return next;
}

/** Resolves once every upload and delete queued so far has finished (failed ones included). */
export async function settledStorage(ctx: Context): Promise<void> {
  for (let last: Promise<void> | undefined; last !== queues.get(ctx); ) {
    last = queues.get(ctx);
    await last;
  }
}

/** The key of a directory inside the home (its path there, `/`-separated), or null for one outside it. */
export function homeKey(ctx: Context, dir: string): string | null {
  const rel = path.relative(ctx.home.root, path.resolve(dir));
  if (!rel || rel.startsWith('..') || path.isAbsolute(rel)) return null;
  return rel.split(path.sep).join('/');
}

/** The directories weitiao made for a trained model: its own and a continued fine-tune's merged base (those inside the home). */
function ownedDirs(ctx: Context, row: Pick<ModelRow, 'path' | 'source' | 'metadata'>): string[] {
  if (row.source !== 'training') return [];
  const base = parseMetadata(row.metadata).base_path;
  return [row.path, ...(typeof base === 'string' ? [base] : [])].filter((d) => homeKey(ctx, d) !== null);
}

function parseMetadata(text: string): Record<string, unknown> {
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return {};
  }
}

/** The row's mark when object storage is configured and the row says `dir` is complete there. */
export function storedInBucket(ctx: Context, row: Pick<ModelRow, 'metadata'>, dir: string): boolean {
  if (storageFor(ctx).kind !== 's3') return false;
  const mark = parseMetadata(row.metadata).object_storage as ObjectStorageMark | undefined;
  const key = homeKey(ctx, dir);
  return key !== null && Array.isArray(mark?.keys) && mark.keys.includes(key);
}

/**
 * Uploads a trained model's directories in the background (nothing with the local store), then marks its row.
 * A failure leaves the row unmarked (usable here from the local copy) and goes to `onError`.
 */
export function storeModelDirs(ctx: Context, id: string, onError: (err: WeitiaoError) => void = warn): void {
  if (storageFor(ctx).kind !== 's3') return;
  enqueue(ctx, () => uploadModel(ctx, id)).catch((err: unknown) => onError(WeitiaoError.from(err)));
}

/**
 * Queues the upload of every trained model whose row is not marked stored while its directory is here: uploads
 * a stopped process never finished, or models trained before object storage was configured. Returns their ids.
 */
export function storeUnstoredModels(ctx: Context, onError: (err: WeitiaoError) => void = warn): string[] {
  if (storageFor(ctx).kind !== 's3') return [];
  const rows = ctx.db.prepare("SELECT * FROM models WHERE source = 'training' ORDER BY created_at, rowid").all() as ModelRow[];
  const ids = rows
    .filter((r) => isDir(r.path) && ownedDirs(ctx, r).some((d) => !storedInBucket(ctx, r, d)))
    .map((r) => r.id);
  for (const id of ids) storeModelDirs(ctx, id, onError);
  return ids;
}

async function uploadModel(ctx: Context, id: string): Promise<void> {
  const row = getRow(ctx, id);
  if (!row) return; // deleted before its turn
  const store = storageFor(ctx);
  const dirs = ownedDirs(ctx, row);
  const mark: ObjectStorageMark = { keys: [], files: 0, bytes: 0, stored_at: 0 };
  try {
    for (const dir of dirs) {
      const key = homeKey(ctx, dir)!;
      // The merged base is shared by a job's checkpoints and model and never changes: stored once.
      const manifest = (dir !== row.path && (await readDirManifest(store, key))) || (await putDir(store, key, dir));
      mark.keys.push(key);
      mark.files += manifest.files.length;
      mark.bytes += manifest.files.reduce((n, f) => n + f.size, 0);
    }
  } catch (err) {
    // Deleted meanwhile (its folder went with it): not a failure; the delete queued after this removes what got up.
    if (getRow(ctx, id)?.path !== row.path) return;
    throw err;
  }
  mark.stored_at = Math.floor(Date.now() / 1000);
  const now = getRow(ctx, id);
  if (!now || now.path !== row.path) {
    // Deleted (or moved) while uploading: its objects must not outlive it.
    for (const key of mark.keys) if (!keyInUse(ctx, key)) await deleteDir(store, key);
    return;
  }
  const metadata = { ...parseMetadata(now.metadata), object_storage: mark };
  ctx.db.prepare('UPDATE models SET metadata = ? WHERE id = ?').run(JSON.stringify(metadata), id);
}

/** Whether a remaining model row still needs the directory stored under `key`. */
function keyInUse(ctx: Context, key: string): boolean {
  const rows = ctx.db.prepare("SELECT path, source, metadata FROM models WHERE source = 'training'").all() as Pick<ModelRow, 'path' | 'source' | 'metadata'>[];
  return rows.some((r) => ownedDirs(ctx, r).some((d) => homeKey(ctx, d) === key));
}

/**
 * Deletes the stored directories of model rows that were just deleted (in the background, after any upload
 * queued before): their own directories, and a merged base no remaining model uses.
 */
export function forgetModelDirs(ctx: Context, rows: Pick<ModelRow, 'path' | 'source' | 'metadata'>[], onError: (err: WeitiaoError) => void = warn): void {
  if (storageFor(ctx).kind !== 's3') return;
  const keys = [...new Set(rows.flatMap((r) => ownedDirs(ctx, r).map((d) => homeKey(ctx, d)!)))].filter((k) => !keyInUse(ctx, k));
  if (!keys.length) return;
  const store = storageFor(ctx);
  enqueue(ctx, async () => {
    for (const key of keys) await deleteDir(store, key);
  }).catch((err: unknown) => onError(WeitiaoError.from(err)));
}

/**
 * Makes `dir` (a trained model's directory inside the home) local: downloaded from object storage when it is
 * missing here, every file checked. Nothing to do when it exists or storage is local; `not_found` when it is
 * neither here nor complete in the bucket.
 */
export async function materializeDir(ctx: Context, dir: string, id: string): Promise<void> {
  if (isDir(dir)) return;
  const store = storageFor(ctx);
  const key = homeKey(ctx, dir);
  if (store.kind !== 's3' || key === null) throw missingFiles(id, dir);
  let inFlight = downloads.get(ctx);
  if (!inFlight) downloads.set(ctx, (inFlight = new Map()));
  let pending = inFlight.get(key);
  if (!pending) {
    pending = (async () => {
      if (!(await readDirManifest(store, key))) throw missingFiles(id, dir, store.url);
      await getDir(store, key, dir);
    })().finally(() => inFlight!.delete(key));
    inFlight.set(key, pending);
  }
  await pending;
}

export function missingFiles(id: string, dir: string, storeUrl?: string): WeitiaoError {
  return new WeitiaoError(
    'not_found',
    `the files of model '${id}' are missing at ${dir}${storeUrl ? ` and not complete in ${storeUrl}` : ''}; pull or create it again, or delete it / 模型 '${id}' 的文件不存在：${dir}`,
    { param: 'model' },
  );
}

/** Whether a trained model's directory `dir` can be used: here, or complete in object storage (row `model` says so). */
export function trainedDirAvailable(ctx: Context, model: string, dir: string): boolean {
  if (isDir(dir)) return true;
  const row = getRow(ctx, model);
  return row !== undefined && storedInBucket(ctx, row, dir);
}

/**
 * The newest recorded checkpoint of a job made local for a resume (a replaced host, or a remote worker's input):
 * downloaded from object storage when its directory is missing here and the bucket holds it complete.
 * Returns whether a download happened; a damaged object fails with an error naming its key.
 */
export async function materializeCheckpointDir(ctx: Context, dir: string, model: string): Promise<boolean> {
  const store = storageFor(ctx);
  const key = homeKey(ctx, dir);
  if (isDir(dir) || store.kind !== 's3' || key === null) return false;
  if (!trainedDirAvailable(ctx, model, dir)) return false; // not stored: the engine resumes from what is here
  await materializeDir(ctx, dir, model);
  return true;
}

function warn(err: WeitiaoError): void {
  process.emitWarning(`object storage: ${err.message}`);
}
