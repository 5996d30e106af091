/** The default backend: objects are files under a folder (the home), each with its sha256 beside it. */
import { copyFile, rename, stat } from 'node:fs/promises';
import { createReadStream, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { WeitiaoError } from '../../errors.js';
import type { ObjectInfo, ObjectStore } from '../index.js';
import { checksumMismatch, hashFile, verified } from './checksum.js';
import { keyPath, listFiles, readMeta, removeFile, scratchBeside, writeAtomic, writeMeta } from './mirror.js';

export class LocalStore implements ObjectStore {
  readonly kind = 'local' as const;

  constructor(readonly root: string) {}

  get url(): string {
    return `file://${this.root}`;
  }

  async put(key: string, body: Readable): Promise<ObjectInfo> {
    const file = keyPath(this.root, key);
    const { sha256 } = await writeAtomic(file, body);
    await writeMeta(file, sha256);
    return this.info(key, file, sha256);
  }

  async putFile(key: string, source: string, options: { move?: boolean } = {}): Promise<ObjectInfo> {
    const file = keyPath(this.root, key);
    const { sha256 } = await hashFile(source);
    mkdirSync(path.dirname(file), { recursive: true });
    if (options.move) {
      await rename(source, file).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EXDEV') throw err; // another filesystem: copy after all
        await this.copyIn(source, file);
      });
    } else {
      await this.copyIn(source, file);
    }
    await writeMeta(file, sha256);
    return this.info(key, file, sha256);
  }

  async get(key: string): Promise<Readable> {
    const file = this.existing(key);
    return verified(key, readMeta(file)?.sha256 ?? null, createReadStream(file));
  }

  async getToFile(key: string, dest: string): Promise<ObjectInfo> {
    const file = this.existing(key);
    const expected = readMeta(file)?.sha256 ?? null;
    const { sha256 } = await writeAtomic(dest, createReadStream(file), (actual) => {
      if (expected && actual !== expected) throw checksumMismatch(key, expected, actual);
    });
    return this.info(key, file, sha256);
  }

  async head(key: string): Promise<ObjectInfo | null> {
    const file = keyPath(this.root, key);
    if (!existsSync(file)) return null;
    return this.info(key, file, readMeta(file)?.sha256 ?? null);
  }

  async delete(key: string): Promise<void> {
    await removeFile(this.root, keyPath(this.root, key));
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    return listFiles(this.root, prefix).map((f) => ({ key: f.key, size: f.size, sha256: readMeta(f.file)?.sha256 ?? null, modified: f.modified }));
  }

  /** The object is already a local file: its own path. */
  async materialize(key: string): Promise<string> {
    return this.existing(key);
  }

  localPath(key: string): string {
    return keyPath(this.root, key);
  }

  private existing(key: string): string {
    const file = keyPath(this.root, key);
    if (!existsSync(file)) throw notStored(key);
    return file;
  }

  private async copyIn(source: string, file: string): Promise<void> {
    const scratch = scratchBeside(file);
    await copyFile(source, scratch);
    await rename(scratch, file);
  }

  private async info(key: string, file: string, sha256: string | null): Promise<ObjectInfo> {
    const st = await stat(file);
    return { key, size: st.size, sha256, modified: st.mtime };
  }
}

export function notStored(key: string): WeitiaoError {
  return new WeitiaoError('not_found', `no stored object '${key}' / 存储中没有对象 '${key}'`, { param: 'key' });
}
