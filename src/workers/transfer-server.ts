/**
 * The server's half of moving files to and from remote workers: a directory sent as a tar stream, a file's
 * sha256, and an uploaded tar received whole — its bytes hashed while they arrive, compared with the sha256 the
 * worker sent, extracted into a temporary directory beside the target and only then renamed into place, so a
 * refused or broken upload leaves nothing behind.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import { WeitiaoError } from '../errors.js';
import { hashFile } from '../storage/index.js';

/** A directory as a tar stream (every entry relative to it). */
export function tarStream(dir: string): Readable {
  // tar's Pack is a minipass stream, not a node one: wrapped, so Readable.toWeb and pipeline take it.
  return Readable.from(tar.c({ cwd: dir, portable: true }, ['.']) as AsyncIterable<Buffer>);
}

const fileHashes = new Map<string, { key: string; sha256: string }>();

/** A file's size and sha256 (kept per path while its size and mtime stay the same: training files are hashed once). */
export async function fileDigest(file: string): Promise<{ bytes: number; sha256: string }> {
  const s = await stat(file);
  const key = `${s.size}:${s.mtimeMs}`;
  const known = fileHashes.get(file);
  if (known?.key === key) return { bytes: s.size, sha256: known.sha256 };
  const { sha256 } = await hashFile(file);
  fileHashes.set(file, { key, sha256 });
  return { bytes: s.size, sha256 };
}

/** A short fingerprint of a directory's files (relative path, size, mtime): changes whenever a file does. */
export async function dirFingerprint(dir: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const entries = (await readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      const p = path.join(rel, e.name);
      if (e.isDirectory()) await walk(p);
      else {
        const s = await stat(path.join(dir, p));
        hash.update(`${p}\0${s.size}\0${Math.floor(s.mtimeMs)}\n`);
      }
    }
  };
  await walk('');
  return hash.digest('hex').slice(0, 16);
}

export interface ReceiveOptions {
  /** The sha256 (hex) the sender computed over the tar's bytes. */
  sha256: string | undefined;
  /** Called as bytes arrive (at most once a second): the lease is renewed while a large upload runs. */
  onProgress?: () => void;
  /** Called after the tar verified and was extracted, right before the rename: throws when the upload may no longer land (lease lost). */
  beforeCommit?: () => void;
}

/**
 * Receives a tar stream into `target` (a directory; an existing one is replaced): verified against
 * `options.sha256`, extracted beside it, renamed into place. Returns the byte count and the sha256.
 */
export async function receiveTar(body: Readable, target: string, options: ReceiveOptions): Promise<{ bytes: number; sha256: string }> {
  const expected = options.sha256?.trim().toLowerCase();
  if (!expected || !/^[0-9a-f]{64}$/.test(expected)) {
    body.resume();
    throw new WeitiaoError('invalid_request', 'an upload needs the hex sha256 of its bytes in header x-weitiao-sha256 / 上传须在 x-weitiao-sha256 头中给出 sha256', {
      param: 'x-weitiao-sha256',
    });
  }
  const parent = path.dirname(target);
  await mkdir(parent, { recursive: true });
  const tag = `.upload-${path.basename(target)}-${randomBytes(6).toString('hex')}`;
  const tarFile = path.join(parent, `${tag}.tar`);
  const staging = path.join(parent, tag);
  const trash = path.join(parent, `${tag}.old`);
  try {
    const hash = createHash('sha256');
    let bytes = 0;
    let lastProgress = Date.now();
    const count = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        bytes += chunk.length;
        if (options.onProgress && Date.now() - lastProgress > 1000) {
          lastProgress = Date.now();
          options.onProgress();
        }
        done(null, chunk);
      },
    });
    await pipeline(body, count, createWriteStream(tarFile));
    const sha256 = hash.digest('hex');
    if (sha256 !== expected) {
      throw new WeitiaoError(
        'invalid_request',
        `upload corrupted: its sha256 is ${sha256}, the sender said ${expected}; send it again / 上传内容校验失败（sha256 不符），请重新上传`,
        { param: 'x-weitiao-sha256' },
      );
    }
    await mkdir(staging);
    // Plain files and directories only, inside the staging directory (tar drops absolute paths and `..` itself).
    await tar.x({ file: tarFile, cwd: staging, filter: (_p, entry) => ['File', 'Directory', 'OldFile', 'ContiguousFile'].includes((entry as tar.ReadEntry).type) });
    options.beforeCommit?.();
    if (existsSync(target)) await rename(target, trash); // a resumed run saving the same step again
    await rename(staging, target);
    return { bytes, sha256 };
  } finally {
    await rm(tarFile, { force: true });
    await rm(staging, { recursive: true, force: true });
    await rm(trash, { recursive: true, force: true });
  }
}
