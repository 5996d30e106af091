/**
 * A folder as a tar stream (POSIX ustar), written with node builtins: a 512-byte header per file, its
 * bytes padded to 512, two zero blocks at the end. Files are read one chunk at a time, so a multi-GB
 * export streams without being held in memory.
 */
import { createReadStream, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';

const BLOCK = 512;

function header(name: string, size: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  let prefix = '';
  let base = name;
  if (Buffer.byteLength(name) > 100) {
    // ustar: a name up to 255 bytes split at a '/' into prefix (155) + name (100).
    const cut = name.lastIndexOf('/', 155);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new Error(`path too long for tar: ${name}`);
    prefix = name.slice(0, cut);
    base = name.slice(cut + 1);
  }
  h.write(base, 0, 100, 'utf8');
  h.write('0000644\0', 100, 'ascii'); // mode
  h.write('0000000\0', 108, 'ascii'); // uid
  h.write('0000000\0', 116, 'ascii'); // gid
  h.write(size.toString(8).padStart(11, '0') + '\0', 124, 'ascii');
  h.write(Math.floor(mtime).toString(8).padStart(11, '0') + '\0', 136, 'ascii');
  h.write('        ', 148, 'ascii'); // checksum placeholder: spaces while summing
  h.write('0', 156, 'ascii'); // regular file
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

function listFiles(dir: string, rel = ''): string[] {
  return readdirSync(path.join(dir, rel), { withFileTypes: true })
    .sort((a, b) => a.name.localeCompare(b.name))
    .flatMap((e) => {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) return listFiles(dir, p);
      return e.isFile() ? [p] : [];
    });
}

/** `dir`'s regular files under `root/` in a tar stream. */
export function tarDirectory(dir: string, root: string): Readable {
  const files = listFiles(dir);
  async function* chunks(): AsyncGenerator<Buffer> {
    for (const rel of files) {
      const file = path.join(dir, rel);
      const st = statSync(file);
      yield header(`${root}/${rel}`, st.size, st.mtimeMs / 1000);
      let written = 0;
      for await (const chunk of createReadStream(file)) {
        written += (chunk as Buffer).length;
        yield chunk as Buffer;
      }
      if (written !== st.size) throw new Error(`${rel} changed while it was being sent`);
      if (st.size % BLOCK) yield Buffer.alloc(BLOCK - (st.size % BLOCK));
    }
    yield Buffer.alloc(BLOCK * 2);
  }
  return Readable.from(chunks());
}
