/**
 * Hugging Face `datasets` folders (`save_to_disk`: state.json + data-*.arrow in Arrow IPC stream format)
 * and plain .arrow files as a table of located rows, the shape readTable gives for CSV, so they go through
 * the same mapping, checks and split. Read by the engine's pyarrow (engine/weitiao_engine/arrow_rows.py,
 * one JSON line per row, streamed): no Arrow package on the TypeScript side. "Lines" are 1-based row
 * numbers across the shards; values are text (numbers, booleans; nested values such as ShareGPT's
 * `conversations` as JSON).
 */
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { ENGINE_DIR, enginePython } from '../../engine/index.js';
import { WeitiaoError } from '../../errors.js';
import type { Problem } from './check.js';
import type { TableRow } from './source.js';

/** True for a `save_to_disk` folder (one dataset or a DatasetDict) or a file named *.arrow. */
export function isArrowSource(file: string): boolean {
  if (/\.arrow$/i.test(file)) return true;
  try {
    return statSync(file).isDirectory() && (existsSync(path.join(file, 'state.json')) || existsSync(path.join(file, 'dataset_dict.json')));
  } catch {
    return false;
  }
}

function cellText(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return JSON.stringify(value);
}

function unreadable(file: string, why: string, cause?: unknown): WeitiaoError {
  return new WeitiaoError('invalid_file', `${file}: cannot read as a datasets folder or Arrow file: ${why} / 无法读取 datasets 目录或 Arrow 文件`, {
    file,
    cause,
  });
}

export async function readArrowTable(
  file: string,
  options: { signal?: AbortSignal } = {},
): Promise<{ header: { line: number; columns: string[]; problems: Problem[] } | null; rows: AsyncGenerator<TableRow> }> {
  const child = spawn(enginePython(), ['-m', 'weitiao_engine.arrow_rows', path.resolve(file)], {
    cwd: ENGINE_DIR,
    env: { ...process.env, PYTHONPATH: ENGINE_DIR, PYTHONUNBUFFERED: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    signal: options.signal,
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4000)));
  const exited = new Promise<number | null>((resolve) => {
    child.on('close', (code) => resolve(code));
    child.on('error', () => resolve(null));
  });
  const lines = readline.createInterface({ input: child.stdout, crlfDelay: Infinity })[Symbol.asyncIterator]();
  const failure = (line: string | undefined): WeitiaoError => {
    if (line) {
      try {
        const parsed = JSON.parse(line) as { error?: string };
        if (parsed.error) return unreadable(file, parsed.error);
      } catch {
        // not one of ours: fall through to stderr
      }
    }
    return unreadable(file, stderr.trim().split('\n').at(-1) || 'the reader stopped');
  };

  const first = await lines.next();
  let columns: string[];
  try {
    const head = first.done ? null : (JSON.parse(first.value) as { columns?: string[] });
    if (!head?.columns) throw failure(first.done ? undefined : first.value);
    columns = head.columns;
  } catch (err) {
    child.kill();
    await exited;
    throw err instanceof WeitiaoError ? err : failure(undefined);
  }

  // A caller that never reads the rows (say, a template naming a missing column) must not leave the
  // reader blocked on a full pipe for ever.
  const unread = setTimeout(() => child.kill(), 60_000);
  unread.unref();
  async function* rows(): AsyncGenerator<TableRow> {
    clearTimeout(unread);
    let line = 0;
    try {
      for (;;) {
        const next = await lines.next();
        if (next.done) break;
        const values = JSON.parse(next.value) as unknown[] | { error: string };
        if (!Array.isArray(values)) throw failure(next.value);
        line++;
        const row: Record<string, string> = Object.create(null);
        columns.forEach((c, i) => (row[c] = cellText(values[i])));
        yield { line, values: row, problems: [] };
      }
      const code = await exited;
      if (code !== 0) throw failure(undefined);
    } finally {
      if (child.exitCode === null) child.kill(); // a caller that stops reading early
    }
  }
  // No header line: row numbers start at 1 with the first record, as for Parquet.
  return { header: { line: 0, columns, problems: [] }, rows: rows() };
}
