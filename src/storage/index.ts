/**
 * Where artifacts' bytes live: the home directory (the default) or S3-compatible object storage, chosen by
 * `WEITIAO_STORAGE_URL`:
 *
 * ```ts
 * // WEITIAO_STORAGE_URL=s3://weitiao/team-a  (endpoint: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
 * // region: AWS_REGION, credentials: the AWS SDK's default chain)
 * const store = storageFor(ctx);
 * await store.putFile('files/file-abc/train.jsonl', '/tmp/upload', { move: true });
 * const local = await store.materialize('files/file-abc/train.jsonl'); // a local path the engine can read
 * ```
 * Keys are relative `/` paths laid out like the home (`files/<id>/<name>`, `exports/<id>/…`); the S3
 * backend keeps its local copies at those same paths under the home, so a local path never depends on the
 * backend. Every object carries its sha256, computed while it streams in and checked on every read.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { LocalStore } from './internal/local.js';
import { S3Store } from './internal/s3.js';

export { MIN_PART_SIZE } from './internal/s3.js';
export { hashFile } from './internal/checksum.js';
export { deleteDir, dirManifestKey, getDir, putDir, readDirManifest, DIR_MANIFEST_SUFFIX, type DirManifest } from './internal/dirs.js';

export interface ObjectInfo {
  key: string;
  size: number;
  /** Hex sha256 of the bytes; null when not recorded (a listing, or an object written by something else). */
  sha256: string | null;
  modified: Date;
  /** S3's ETag (a multipart upload's ends in `-<parts>`). */
  etag?: string;
}

export interface ObjectStore {
  readonly kind: 'local' | 's3';
  /** For messages: `file:///…` or `s3://bucket/prefix`. */
  readonly url: string;
  /** Stores a stream's bytes under `key`, hashing as they pass. */
  put(key: string, body: Readable): Promise<ObjectInfo>;
  /** Stores a local file; `move` hands the file over (it becomes the local copy) instead of copying it. */
  putFile(key: string, file: string, options?: { move?: boolean }): Promise<ObjectInfo>;
  /** The bytes as a stream, which errors at its end on a checksum mismatch; `not_found` when absent. */
  get(key: string): Promise<Readable>;
  /** Downloads to `dest` atomically (scratch file, checked, renamed); a mismatch leaves `dest` untouched. */
  getToFile(key: string, dest: string): Promise<ObjectInfo>;
  head(key: string): Promise<ObjectInfo | null>;
  delete(key: string): Promise<void>;
  /** Objects whose key starts with `prefix`, sorted by key. */
  list(prefix: string): Promise<ObjectInfo[]>;
  /** A local path holding the object's checked bytes (downloaded into the cache when missing or stale). */
  materialize(key: string): Promise<string>;
  /** Where `materialize` puts (or finds) `key` locally, without touching the network. */
  localPath(key: string): string;
}

export type StorageConfig = { kind: 'local'; root: string } | { kind: 's3'; bucket: string; prefix: string };

/** Parses a storage URL: unset or empty → the home; `file:///dir`; `s3://bucket[/prefix]`. */
export function parseStorageUrl(url: string | undefined, homeRoot: string): StorageConfig {
  if (!url) return { kind: 'local', root: homeRoot };
  const s3 = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (s3) return { kind: 's3', bucket: s3[1]!, prefix: s3[2]!.replace(/^\/+|\/+$/g, '') };
  if (url.startsWith('file://')) return { kind: 'local', root: path.resolve(fileURLToPath(url)) };
  throw new WeitiaoError(
    'invalid_request',
    `WEITIAO_STORAGE_URL '${url}' is neither s3://bucket/prefix nor file:///dir / WEITIAO_STORAGE_URL 须为 s3://bucket/prefix 或 file:///目录`,
    { param: 'WEITIAO_STORAGE_URL' },
  );
}

/** Opens a store; S3 copies go under `cache` (the home root, so copies sit where local objects would). */
export function openStore(config: StorageConfig, options: { cache: string; partSize?: number }): ObjectStore {
  if (config.kind === 'local') return new LocalStore(config.root);
  return new S3Store({ bucket: config.bucket, prefix: config.prefix, cache: options.cache, partSize: options.partSize });
}

const stores = new WeakMap<Context, ObjectStore>();

/** The context's store, from `WEITIAO_STORAGE_URL` as it is when first asked. */
export function storageFor(ctx: Context): ObjectStore {
  let store = stores.get(ctx);
  if (!store) {
    store = openStore(parseStorageUrl(process.env.WEITIAO_STORAGE_URL, ctx.home.root), { cache: ctx.home.root });
    stores.set(ctx, store);
  }
  return store;
}
