/**
 * Objects as files under a root folder (`<root>/<key>`), each with a `<file>.weitiao-meta` beside it that
 * records its sha256 and size. The local backend keeps its objects this way; the S3 backend keeps its
 * downloaded copies (the cache the engine reads) the same way, so both lay out the home alike.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { WeitiaoError } from '../../errors.js';
import { Hasher } from './checksum.js';

export const META_SUFFIX = '.weitiao-meta';
const TMP_PREFIX = '.tmp-';

/** What is recorded beside a file: its sha256, size and mtime when recorded (a later edit shows as another mtime). */
export interface FileMeta {
  sha256: string;
  size: number;
  mtimeMs: number;
}

/** `<root>/<key>`; keys are relative `/`-separated paths that stay inside the root. */
export function keyPath(root: string, key: string): string {
  const parts = key.split('/');
  if (!key || key.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..') || key.includes('\\') || key.endsWith(META_SUFFIX)) {
    throw new WeitiaoError('invalid_request', `invalid object key '${key}' / 对象键无效`, { param: 'key' });
  }
  return path.join(root, ...parts);
}

export function readMeta(file: string): FileMeta | null {
  try {
    return JSON.parse(readFileSync(file + META_SUFFIX, 'utf8')) as FileMeta;
  } catch {
    return null;
  }
}

/** Records `sha256` for `file` as it is now on disk. */
export async function writeMeta(file: string, sha256: string): Promise<FileMeta> {
  const st = await stat(file);
  const meta: FileMeta = { sha256, size: st.size, mtimeMs: st.mtimeMs };
  await writeFile(file + META_SUFFIX, JSON.stringify(meta));
  return meta;
}

/** The recorded meta when the file is still the one it was recorded for (same size and mtime). */
export function currentMeta(file: string): FileMeta | null {
  const meta = readMeta(file);
  if (!meta) return null;
  const st = statSync(file, { throwIfNoEntry: false });
  return st?.isFile() && st.size === meta.size && st.mtimeMs === meta.mtimeMs ? meta : null;
}

/** A scratch name beside `file` (same filesystem, so the final rename is atomic). */
export function scratchBeside(file: string): string {
  return path.join(path.dirname(file), `${TMP_PREFIX}${randomBytes(6).toString('hex')}-${path.basename(file)}`.slice(0, 255));
}

/**
 * Streams `body` to `file` through a scratch file, hashing as it goes, then renames it into place; `check`
 * sees the hash before the rename and may refuse it (the scratch file is removed then).
 */
export async function writeAtomic(
  file: string,
  body: Readable,
  check?: (sha256: string, size: number) => void,
): Promise<{ sha256: string; size: number }> {
  await mkdir(path.dirname(file), { recursive: true });
  const scratch = scratchBeside(file);
  const hasher = new Hasher();
  try {
    await pipeline(body, hasher, createWriteStream(scratch, { flags: 'wx' }));
    const sha256 = hasher.digest();
    check?.(sha256, hasher.bytes);
    await rename(scratch, file);
    return { sha256, size: hasher.bytes };
  } catch (err) {
    await rm(scratch, { force: true });
    throw err;
  }
}

/**
 * Removes `file`, its meta, and the folders it leaves empty, short of the key's top folder (`files/`,
 * `exports/`: the home's standard folders stay).
 */
export async function removeFile(root: string, file: string): Promise<void> {
  await rm(file, { force: true });
  await rm(file + META_SUFFIX, { force: true });
  for (let dir = path.dirname(file); dir.startsWith(root + path.sep) && path.dirname(dir) !== root; dir = path.dirname(dir)) {
    if (!(await rmdir(dir).then(() => true, () => false))) break; // not empty (or gone): stop
  }
}

/** Keys under `root` starting with `prefix`, with their sizes; metas and scratch files left out. */
export function listFiles(root: string, prefix: string): { key: string; file: string; size: number; modified: Date }[] {
  const cut = prefix.lastIndexOf('/');
  const start = cut < 0 ? '' : prefix.slice(0, cut);
  const out: { key: string; file: string; size: number; modified: Date }[] = [];
  const walk = (rel: string) => {
    const dir = rel ? path.join(root, ...rel.split('/')) : root;
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const key = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory() && (prefix.startsWith(key + '/') || key.startsWith(prefix))) walk(key);
      if (!e.isFile() || !key.startsWith(prefix) || e.name.endsWith(META_SUFFIX) || e.name.startsWith(TMP_PREFIX)) continue;
      const st = statSync(path.join(dir, e.name));
      out.push({ key, file: path.join(dir, e.name), size: st.size, modified: st.mtime });
    }
  };
  walk(start);
  return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}
