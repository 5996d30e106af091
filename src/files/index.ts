/**
 * Uploaded and prepared data files, in OpenAI's Files shape.
 *
 * ```ts
 * const file = await createFile(ctx, { source: 'train.jsonl', filename: 'train.jsonl', purpose: 'fine-tune' });
 * // {id: 'file-…', object: 'file', bytes, created_at, filename, purpose, status: 'processed'}
 * ```
 * A file is stored once, as the object `files/<id>/<filename>` of the store (src/storage): streamed to a
 * temporary directory while its bytes are counted (never whole in memory), checked, then handed to the
 * store, so a failed or oversized upload leaves nothing behind. With the default local store the object is
 * `<home>/files/<id>/<filename>`; with object storage (`WEITIAO_STORAGE_URL=s3://…`) it is uploaded and
 * that same path is its local copy, which `materializeFile` downloads again where it is missing.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import type { Context } from '../context.js';
import { reportError, runValidationTask } from '../data/index.js';
import { parseOrThrow, WeitiaoError } from '../errors.js';
import { unfinishedJobUsingFile } from '../jobs/repository.js';
import { storageFor } from '../storage/index.js';
import { listPage, newId, now, selectPage, type ListPage } from '../store/index.js';

/** OpenAI's purposes that make sense here; `fine-tune-results` is what jobs write (metrics CSV). */
export const FilePurpose = z.enum(['fine-tune', 'fine-tune-results', 'evals', 'user_data', 'batch', 'assistants', 'vision']);
export type FilePurpose = z.infer<typeof FilePurpose>;

/** What a client may upload with; `fine-tune-results` files are written by jobs only. */
export const CLIENT_PURPOSES = FilePurpose.options.filter((p) => p !== 'fine-tune-results');
/** Data files: re-encoded to UTF-8 at upload (and checked when asked), so the engine never sees another encoding. */
const TEXT_PURPOSES: readonly string[] = ['fine-tune', 'evals'];

/** OpenAI's file object. */
export const FileObject = z.object({
  id: z.string(),
  object: z.literal('file'),
  bytes: z.number().int(),
  created_at: z.number().int(),
  filename: z.string(),
  purpose: FilePurpose,
  status: z.enum(['uploaded', 'processed', 'error']),
  status_details: z.string().nullable().optional(),
});
export type FileObject = z.infer<typeof FileObject>;

export const FileDeleted = z.object({ id: z.string(), object: z.literal('file'), deleted: z.boolean() });
export type FileDeleted = z.infer<typeof FileDeleted>;

export const ListFilesParams = z.object({
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(10000).default(10000),
  order: z.enum(['asc', 'desc']).default('desc'),
  purpose: z.string().optional(),
});
export type ListFilesParams = z.input<typeof ListFilesParams>;

/** OpenAI's upload limit for fine-tuning files. */
export const DEFAULT_MAX_BYTES = 512 * 1024 * 1024;

export interface CreateFileParams {
  /** A path to copy, or a stream (an HTTP upload) to drain. */
  source: string | NodeJS.ReadableStream;
  /** The name to keep; any directory part is dropped. */
  filename: string;
  purpose: string;
  maxBytes?: number;
  /** With a path source: move the file in (a scratch upload of ours) instead of copying it. */
  move?: boolean;
  /**
   * Check a data file's lines as `weitiao data validate` does and refuse it (`invalid_file`, naming
   * file:line: field) when any is wrong; nothing is stored then. Uploads through the API do.
   */
  check?: boolean;
  /** Refuse server-only purposes (`fine-tune-results`) with `invalid_request` naming `purpose`. */
  fromClient?: boolean;
  /** Stops the check; the call rejects with `cancelled` and nothing is stored. */
  signal?: AbortSignal;
}

interface FileRow {
  id: string;
  filename: string;
  purpose: string;
  bytes: number;
  path: string;
  created_at: number;
  status: string;
  status_details: string | null;
}

/** Stores a file under the home directory and records it; `payload_too_large` past `maxBytes`. */
export async function createFile(ctx: Context, params: CreateFileParams): Promise<FileObject> {
  const purpose = FilePurpose.safeParse(params.purpose);
  if (!purpose.success) {
    throw new WeitiaoError(
      'invalid_request',
      `unsupported purpose '${params.purpose}', expected one of ${FilePurpose.options.join(', ')} / 不支持的用途`,
      { param: 'purpose' },
    );
  }
  if (params.fromClient && !(CLIENT_PURPOSES as string[]).includes(purpose.data)) {
    throw new WeitiaoError(
      'invalid_request',
      `purpose '${purpose.data}' is for files the server writes; upload with one of ${CLIENT_PURPOSES.join(', ')} / 该用途仅供服务器写入`,
      { param: 'purpose' },
    );
  }
  const filename = cleanFilename(params.filename);
  const maxBytes = params.maxBytes ?? DEFAULT_MAX_BYTES;

  let input: NodeJS.ReadableStream | null = null; // null: a path moved in as it is
  if (typeof params.source === 'string') {
    const info = await stat(params.source).catch(() => null);
    if (!info?.isFile()) {
      throw new WeitiaoError('not_found', `no such file: ${params.source} / 文件不存在`, { param: 'file', file: params.source });
    }
    if (info.size > maxBytes) throw tooLarge(maxBytes);
    if (!params.move) input = createReadStream(params.source);
  } else {
    input = params.source;
  }

  const id = newId('file');
  const store = storageFor(ctx);
  const key = objectKey({ id, filename });
  const tmpDir = path.join(ctx.home.files, `.tmp-${id}`);
  await mkdir(tmpDir, { recursive: true });
  let bytes = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      if (bytes > maxBytes) done(tooLarge(maxBytes));
      else done(null, chunk);
    },
  });
  try {
    const target = path.join(tmpDir, filename);
    if (input === null) {
      const source = params.source as string;
      bytes = (await stat(source)).size; // within maxBytes: checked above
      await rename(source, target).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EXDEV') throw err; // another filesystem: copy after all
        bytes = 0;
        await pipeline(createReadStream(source), counter, createWriteStream(target, { flags: 'wx' }));
      });
    } else {
      await pipeline(input as Readable, counter, createWriteStream(target, { flags: 'wx' }));
    }
    if (TEXT_PURPOSES.includes(purpose.data)) bytes = await normalizeText(target, filename, params);
    await store.putFile(key, target, { move: true });
  } catch (err) {
    // A stream source must not be left half-read and paused (an HTTP request would hang).
    if (typeof params.source !== 'string') (params.source as Readable).resume?.();
    throw err instanceof WeitiaoError ? err : new WeitiaoError('internal_error', `could not store ${filename}: ${String(err)}`, { cause: err });
  } finally {
    await rm(tmpDir, { recursive: true, force: true });
  }

  const row: FileRow = {
    id,
    filename,
    purpose: purpose.data,
    bytes,
    path: store.localPath(key),
    created_at: now(),
    status: 'processed',
    status_details: null,
  };
  try {
    ctx.db
      .prepare(
        `INSERT INTO files (id, filename, purpose, bytes, path, created_at, status, status_details)
         VALUES (@id, @filename, @purpose, @bytes, @path, @created_at, @status, @status_details)`,
      )
      .run(row);
  } catch (err) {
    await store.delete(key).catch(() => undefined);
    await rm(path.dirname(store.localPath(key)), { recursive: true, force: true });
    throw WeitiaoError.from(err);
  }
  return toWire(row);
}

/** Files, newest first, in OpenAI's cursor pages. */
export function listFiles(ctx: Context, params: ListFilesParams = {}): ListPage<FileObject> {
  const p = parseParams(ListFilesParams, params);
  const where: string[] = [];
  const args: unknown[] = [];
  if (p.purpose !== undefined) {
    where.push('purpose = ?');
    args.push(p.purpose);
  }
  const page = selectPage<FileRow>(ctx.db, { table: 'files', where, params: args, after: p.after, limit: p.limit, order: p.order });
  if (!page) throw new WeitiaoError('not_found', `no such file: ${p.after} / 文件不存在`, { param: 'after' });
  return listPage(page.rows.map(toWire), page.has_more);
}

/** One file; `not_found` (param `file_id`) when there is none. */
export function retrieveFile(ctx: Context, id: string): FileObject {
  return toWire(getRow(ctx, id));
}

/**
 * Where a file's bytes are on this host, without checking that they are there. With the local store they
 * always are; with object storage only where the local copy exists (the host that uploaded the file, or
 * one that called `materializeFile`): code that may run elsewhere should call `materializeFile`.
 */
export function fileContentPath(ctx: Context, id: string): string {
  return getRow(ctx, id).path;
}

/** A local path holding the file's checked bytes, downloaded from object storage when missing or stale. */
export async function materializeFile(ctx: Context, id: string): Promise<string> {
  const row = getRow(ctx, id);
  const store = storageFor(ctx);
  if (store.kind === 'local') return row.path; // the stored file itself (also for rows from before the store)
  return store.materialize(objectKey(row));
}

/** The file's bytes as a stream, checked against their sha256 as they are read (the stream errors at its end on a mismatch). */
export async function openFileContent(ctx: Context, id: string): Promise<Readable> {
  const row = getRow(ctx, id);
  const store = storageFor(ctx);
  const key = objectKey(row);
  if (store.kind === 'local' && store.localPath(key) !== row.path) return createReadStream(row.path); // a row from before the store
  return store.get(key);
}

/** Deletes a file and its bytes; `conflict` while an unfinished job still needs it. */
export async function deleteFile(ctx: Context, id: string): Promise<FileDeleted> {
  const row = getRow(ctx, id);
  const user = unfinishedJobUsingFile(ctx.db, id);
  if (user) {
    throw new WeitiaoError('conflict', `file ${id} is used by job ${user}, which has not finished / 该文件正被未结束的任务使用`, {
      param: 'file_id',
    });
  }
  // The object first: should object storage fail, the file is still listed and the delete can be retried.
  await storageFor(ctx).delete(objectKey(row));
  ctx.db.prepare('DELETE FROM files WHERE id = ?').run(id);
  await rm(path.dirname(row.path), { recursive: true, force: true });
  return { id, object: 'file', deleted: true };
}

function getRow(ctx: Context, id: string): FileRow {
  const row = ctx.db.prepare('SELECT * FROM files WHERE id = ?').get(id) as FileRow | undefined;
  if (!row) throw new WeitiaoError('not_found', `no such file: ${id} / 文件不存在`, { param: 'file_id' });
  return row;
}

/** The file's key in the store: the home's layout, `files/<id>/<filename>`. */
function objectKey(row: { id: string; filename: string }): string {
  return `files/${row.id}/${row.filename}`;
}

function toWire(row: FileRow): FileObject {
  return {
    id: row.id,
    object: 'file',
    bytes: row.bytes,
    created_at: row.created_at,
    filename: row.filename,
    purpose: row.purpose as FilePurpose,
    status: row.status as FileObject['status'],
    ...(row.status_details ? { status_details: row.status_details } : {}),
  };
}

/** Keeps the last path segment (browsers may send `C:\\data\\train.csv`) and refuses names that cannot be a file. */
function cleanFilename(raw: string): string {
  const name = raw.split(/[\\/]/).pop()?.trim() ?? '';
  // eslint-disable-next-line no-control-regex
  if (!name || name === '.' || name === '..' || /[\u0000-\u001f]/.test(name) || Buffer.byteLength(name) > 255) {
    throw new WeitiaoError('invalid_request', `invalid filename '${raw}' / 文件名无效`, { param: 'filename' });
  }
  return name;
}

/** Re-encodes a stored data file to UTF-8 and, when asked, refuses it for its first bad line; its new size. */
async function normalizeText(file: string, filename: string, params: CreateFileParams): Promise<number> {
  const result = await runValidationTask({ kind: 'upload', file, filename, check: params.check ?? false }, { signal: params.signal });
  const error = result.report ? reportError(result.report) : null;
  if (error) throw error;
  return result.bytes;
}

function tooLarge(maxBytes: number): WeitiaoError {
  return new WeitiaoError('payload_too_large', `file is larger than the limit of ${maxBytes} bytes / 文件超过大小上限 ${maxBytes} 字节`, {
    param: 'file',
  });
}

/** Parses service parameters with a schema; every problem is reported at once, the first one's path as `param`. */
function parseParams<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  return parseOrThrow(schema, input);
}
