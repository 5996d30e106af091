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

export function listFiles(dir: string, rel = ''): string[] {
  return readdirSync(path.join(dir, rel), { withFileTypes: true })
    .sort((a, b) => a.name.localeCompare(b.name))
    .flatMap((e) => {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) return listFiles(dir, p);
      return e.isFile() ? [p] : [];
    });
}

/** One file of a tar: its path inside the tar, size and mtime (for the header), and its bytes, opened when their turn comes. */
export interface TarEntry {
  name: string;
  size: number;
  mtimeMs: number;
  open(): Readable | Promise<Readable>;
}

/** `dir`'s regular files under `root/` in a tar stream. */
export function tarDirectory(dir: string, root: string): Readable {
  return tarEntries(
    listFiles(dir).map((rel) => {
      const file = path.join(dir, rel);
      const st = statSync(file);
      return { name: `${root}/${rel}`, size: st.size, mtimeMs: st.mtimeMs, open: () => createReadStream(file) };
    }),
  );
}

/** Entries (local files or stored objects) in a tar stream, each read one chunk at a time. */
export function tarEntries(entries: TarEntry[]): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    for (const entry of entries) {
      yield header(entry.name, entry.size, entry.mtimeMs / 1000);
      let written = 0;
      for await (const chunk of await entry.open()) {
        written += (chunk as Buffer).length;
        yield chunk as Buffer;
      }
      if (written !== entry.size) throw new Error(`${entry.name} changed while it was being sent`);
      if (entry.size % BLOCK) yield Buffer.alloc(BLOCK - (entry.size % BLOCK));
    }
    yield Buffer.alloc(BLOCK * 2);
  }
  return Readable.from(chunks());
}
