/**
 * sha256 while bytes stream past, and the error a mismatch raises. Every object carries the sha256 of its
 * bytes (S3 metadata `x-amz-meta-sha256`, or a `.weitiao-meta` file beside a local object); reads check it.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { WeitiaoError } from '../../errors.js';

/** A pass-through that hashes and counts what flows through it. */
export class Hasher extends Transform {
  private readonly hash = createHash('sha256');
  bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** The sha256 and size of a local file, read once. */
export async function hashFile(file: string): Promise<{ sha256: string; size: number }> {
  const hasher = new Hasher();
  await pipeline(createReadStream(file), hasher, async (source: AsyncIterable<Buffer>) => {
    for await (const _ of source); // drain
  });
  return { sha256: hasher.digest(), size: hasher.bytes };
}

/**
 * `source` as it is, erroring at its end when its bytes do not hash to `expected` (null: nothing recorded,
 * nothing to check). A reader sees the mismatch as a stream error, so nothing it wrote should be trusted.
 */
export function verified(key: string, expected: string | null, source: Readable): Readable {
  if (!expected) return source;
  const hash = createHash('sha256');
  const check = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      const actual = hash.digest('hex');
      done(actual === expected ? null : checksumMismatch(key, expected, actual));
    },
  });
  source.on('error', (err) => check.destroy(err));
  return source.pipe(check);
}

export function checksumMismatch(key: string, expected: string, actual: string): WeitiaoError {
  return new WeitiaoError(
    'internal_error',
    `checksum mismatch for stored object '${key}': expected sha256 ${expected}, read ${actual}; the stored copy is damaged / 存储对象 '${key}' 校验和不匹配，存储的副本已损坏`,
  );
}
