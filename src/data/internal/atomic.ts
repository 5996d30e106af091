/**
 * Atomic writes: every file is first written in full to a temporary file in its own directory (so the
 * rename stays on one file system), flushed to disk, and only then renamed over its target. If anything
 * fails, the temporaries are removed and no target is left half-written.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';

export interface AtomicFile {
  path: string;
  /** The content as chunks (e.g. one JSON line each); written in batches, never joined whole. */
  chunks: Iterable<string>;
}

const BATCH_BYTES = 1 << 16;

/**
 * Writes several files as one unit: all temporaries first, then the renames. A failure while writing
 * leaves the targets untouched; a failure while renaming (rare: same directory) removes the targets
 * already renamed, so the set is never left half-updated.
 */
export async function writeFilesAtomic(files: AtomicFile[]): Promise<void> {
  const temps: string[] = [];
  try {
    for (const file of files) {
      const target = path.resolve(file.path);
      const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
      temps.push(temp);
      await writeChunks(temp, file.chunks);
    }
  } catch (err) {
    await Promise.all(temps.map((t) => rm(t, { force: true })));
    throw err;
  }
  const done: string[] = [];
  try {
    for (let i = 0; i < files.length; i++) {
      const target = path.resolve(files[i].path);
      await rename(temps[i], target);
      done.push(target);
    }
  } catch (err) {
    await Promise.all([...temps, ...done].map((t) => rm(t, { force: true }).catch(() => {})));
    throw err;
  }
}

/** Writes one file atomically (see writeFilesAtomic). */
export function writeFileAtomic(file: string, content: string | Iterable<string>): Promise<void> {
  return writeFilesAtomic([{ path: file, chunks: typeof content === 'string' ? [content] : content }]);
}

async function writeChunks(file: string, chunks: Iterable<string>): Promise<void> {
  const fh = await open(file, 'wx'); // wx: never follow or reuse an existing file
  try {
    let batch: string[] = [];
    let size = 0;
    for (const chunk of chunks) {
      batch.push(chunk);
      size += chunk.length;
      if (size >= BATCH_BYTES) {
        await writeAll(fh, batch.join(''));
        batch = [];
        size = 0;
      }
    }
    if (batch.length) await writeAll(fh, batch.join(''));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function writeAll(fh: FileHandle, text: string): Promise<void> {
  const buf = Buffer.from(text, 'utf8');
  for (let off = 0; off < buf.length; ) off += (await fh.write(buf, off, buf.length - off, null)).bytesWritten;
}
