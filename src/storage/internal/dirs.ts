/**
 * A directory as objects: one object per file under `<key>/`, then a manifest object `<key>.weitiao-dir.json`
 * listing every file with its size and sha256, written last. A directory counts as stored only when its
 * manifest exists, so an upload cut short is never taken for a complete one; downloads check every file
 * against the manifest and appear at their destination in one rename.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buffer } from 'node:stream/consumers';
import { z } from 'zod';
import { WeitiaoError } from '../../errors.js';
import type { ObjectStore } from '../index.js';

export const DIR_MANIFEST_SUFFIX = '.weitiao-dir.json';

const DirManifest = z.object({
  version: z.literal(1),
  files: z.array(z.object({ path: z.string().min(1), size: z.number().int().nonnegative(), sha256: z.string().regex(/^[0-9a-f]{64}$/) })),
});
export type DirManifest = z.infer<typeof DirManifest>;

/** The manifest object of the directory stored under `key`. */
export const dirManifestKey = (key: string) => `${key}${DIR_MANIFEST_SUFFIX}`;

/** Uploads every file under `dir` as `<key>/<relative path>`, then the manifest that vouches for them. */
export async function putDir(store: ObjectStore, key: string, dir: string): Promise<DirManifest> {
  const files: DirManifest['files'] = [];
  for (const rel of filesUnder(dir)) {
    const info = await store.putFile(`${key}/${rel}`, path.join(dir, ...rel.split('/')));
    files.push({ path: rel, size: info.size, sha256: info.sha256! });
  }
  const manifest: DirManifest = { version: 1, files };
  // Through a scratch file (putFile without move): no local copy of the manifest lands beside the directory.
  const scratch = path.join(path.dirname(dir), `.tmp-${randomBytes(6).toString('hex')}${DIR_MANIFEST_SUFFIX}`);
  await writeFile(scratch, JSON.stringify(manifest));
  try {
    await store.putFile(dirManifestKey(key), scratch);
  } finally {
    await rm(scratch, { force: true });
  }
  return manifest;
}

/** The manifest of the directory stored under `key`, or null when there is none (never stored, or cut short). */
export async function readDirManifest(store: ObjectStore, key: string): Promise<DirManifest | null> {
  if (!(await store.head(dirManifestKey(key)))) return null;
  const parsed = DirManifest.safeParse(JSON.parse((await buffer(await store.get(dirManifestKey(key)))).toString('utf8')));
  if (!parsed.success) {
    throw new WeitiaoError('internal_error', `the stored directory manifest '${dirManifestKey(key)}' is unreadable / 存储的目录清单无法读取：${dirManifestKey(key)}`);
  }
  return parsed.data;
}

/**
 * Downloads the directory stored under `key` to `dest` (which must not exist): every file into a scratch
 * directory beside it, checked against the object's and the manifest's sha256, then one rename. A damaged
 * object fails the whole download with an error naming its key, and `dest` is left untouched.
 */
export async function getDir(store: ObjectStore, key: string, dest: string): Promise<DirManifest> {
  const manifest = await readDirManifest(store, key);
  if (!manifest) throw new WeitiaoError('not_found', `no stored directory '${key}' / 存储中没有目录 '${key}'`, { param: 'key' });
  await mkdir(path.dirname(dest), { recursive: true });
  const scratch = path.join(path.dirname(dest), `.tmp-${randomBytes(6).toString('hex')}-${path.basename(dest)}`);
  try {
    for (const f of manifest.files) {
      const objectKey = `${key}/${f.path}`;
      const got = await store.getToFile(objectKey, path.join(scratch, ...f.path.split('/')));
      if (got.sha256 !== f.sha256 || got.size !== f.size) {
        throw new WeitiaoError(
          'internal_error',
          `checksum mismatch for stored object '${objectKey}': its manifest lists sha256 ${f.sha256} (${f.size} bytes), read ${got.sha256} (${got.size} bytes); the stored copy is damaged / 存储对象 '${objectKey}' 校验和不匹配，存储的副本已损坏`,
        );
      }
    }
    if (manifest.files.length === 0) await mkdir(scratch, { recursive: true });
    if (existsSync(dest)) return manifest; // someone else put it there meanwhile
    await rename(scratch, dest);
    return manifest;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Removes the directory stored under `key`: the manifest first (so what is left never reads as complete), then its files. */
export async function deleteDir(store: ObjectStore, key: string): Promise<number> {
  await store.delete(dirManifestKey(key));
  const objects = await store.list(`${key}/`);
  for (const o of objects) await store.delete(o.key);
  return objects.length;
}

/** Every file under `dir`, as `/` paths relative to it, sorted; scratch files left out. */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(rel ? path.join(dir, rel) : dir, { withFileTypes: true })) {
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.name.startsWith('.tmp-')) continue;
      if (e.isDirectory()) walk(child);
      else if (e.isFile()) out.push(child);
    }
  };
  if (!statSync(dir).isDirectory()) throw new WeitiaoError('invalid_request', `${dir} is not a directory / 不是目录`);
  walk('');
  return out.sort();
}
