/**
 * Parquet files as a table of located rows, the shape readTable gives for CSV, so they go through the same
 * mapping, checks and split. hyparquet: pure JavaScript, no dependencies, reads snappy (pyarrow's default).
 * "Lines" are 1-based row numbers; values are shown as text (numbers, booleans; nested values as JSON).
 */
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet';
import { WeitiaoError } from '../../errors.js';
import type { Problem } from './check.js';
import type { TableRow } from './source.js';

function cellText(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (typeof value === 'string') return value;
  if (typeof value === 'bigint' || typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (value instanceof Date) return value.toISOString();
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? String(v) : v));
}

export async function readParquetTable(
  file: string,
): Promise<{ header: { line: number; columns: string[]; problems: Problem[] } | null; rows: AsyncGenerator<TableRow> }> {
  let columns: string[];
  let records: Record<string, unknown>[];
  try {
    const buffer = await asyncBufferFromFile(file);
    const metadata = await parquetMetadataAsync(buffer);
    columns = parquetSchema(metadata).children.map((c) => c.element.name);
    records = await parquetReadObjects({ file: buffer, metadata });
  } catch (err) {
    throw new WeitiaoError('invalid_file', `${file}: cannot read as Parquet: ${err instanceof Error ? err.message : String(err)} / 无法读取 Parquet 文件`, {
      file,
      cause: err,
    });
  }
  async function* rows(): AsyncGenerator<TableRow> {
    for (let i = 0; i < records.length; i++) {
      const values: Record<string, string> = Object.create(null);
      for (const c of columns) values[c] = cellText(records[i][c]);
      yield { line: i + 1, values, problems: [] };
    }
  }
  // No header line: row numbers start at 1 with the first record.
  return { header: { line: 0, columns, problems: [] }, rows: rows() };
}
