/**
 * Reading user files as a stream of located rows: CSV/TSV records keyed by the header, or JSONL lines
 * parsed to values. Nothing here decides what a row means; prepare and validate do.
 */
import { access } from 'node:fs/promises';
import path from 'node:path';
import { WeitiaoError } from '../../errors.js';
import { parseDelimited } from './csv.js';
import { decodeFile, resolveEncoding, type Encoding, type EncodingOption } from './encoding.js';
import { MAX_LINE_CHARS, splitLines } from './lines.js';
import { parseJsonLine, type Problem, problem } from './check.js';

export type DataFormat = 'csv' | 'tsv' | 'jsonl';

/** One row of a CSV/TSV file: values by column, or the syntax problem that prevents reading it. */
export interface TableRow {
  line: number;
  values: Record<string, string>;
  problems: Problem[];
}

/** One non-blank line of a JSONL file: the parsed value, or the problem that prevents parsing it. */
export interface JsonRow {
  line: number;
  value?: unknown;
  problem?: Problem;
}

/** Fails with `not_found` when the file is missing, naming it. */
export async function assertReadable(file: string, param: string): Promise<void> {
  try {
    await access(file);
  } catch {
    throw new WeitiaoError('not_found', `no such file: ${file} / 文件不存在`, { param, file });
  }
}

/** The format from the extension; for other names, a look at the first line decides. */
export async function guessFormat(file: string, encoding: Encoding): Promise<DataFormat> {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.csv') return 'csv';
  if (ext === '.tsv' || ext === '.tab') return 'tsv';
  if (ext === '.jsonl' || ext === '.ndjson' || ext === '.json') return 'jsonl';
  for await (const { text } of splitLines(decodeFile(file, encoding))) {
    if (text.trim() === '') continue;
    if (text.trimStart().startsWith('{')) return 'jsonl';
    return (text.match(/\t/g)?.length ?? 0) > (text.match(/,/g)?.length ?? 0) ? 'tsv' : 'csv';
  }
  throw new WeitiaoError('invalid_request', `cannot tell the format of ${file}; pass format csv, tsv or jsonl / 无法判断文件格式，请指定 format`, {
    param: 'format',
    file,
  });
}

export interface OpenedSource {
  format: DataFormat;
  encoding: Encoding;
}

export async function openSource(file: string, format: DataFormat | undefined, encoding: EncodingOption): Promise<OpenedSource> {
  const enc = await resolveEncoding(file, encoding);
  return { encoding: enc, format: format ?? (await guessFormat(file, enc)) };
}

/**
 * A CSV/TSV file's header (first non-blank record, names trimmed) and its rows. A row with fewer fields
 * than the header is reported; extra fields are tolerated when empty (spreadsheets pad rows with commas).
 */
export async function readTable(
  file: string,
  source: OpenedSource,
): Promise<{ header: { line: number; columns: string[]; problems: Problem[] } | null; rows: AsyncGenerator<TableRow> }> {
  const records = parseDelimited(decodeFile(file, source.encoding), source.format === 'tsv' ? '\t' : ',');
  const first = await records.next();
  if (first.done) return { header: null, rows: (async function* () {})() };
  const columns = first.value.fields.map((f) => f.trim());
  const problems: Problem[] = [];
  if (first.value.problem) problems.push(problem('csv_syntax', null, first.value.problem));
  const seen = new Set<string>();
  for (const c of columns) {
    if (c !== '' && seen.has(c)) problems.push(problem('duplicate_column', c, `column '${c}' appears twice in the header / 表头中的列 '${c}' 重复`));
    seen.add(c);
  }
  async function* rows(): AsyncGenerator<TableRow> {
    for await (const record of records) {
      const rowProblems: Problem[] = [];
      if (record.problem) rowProblems.push(problem('csv_syntax', null, record.problem));
      const { fields } = record;
      if (fields.length < columns.length || fields.slice(columns.length).some((f) => f !== '')) {
        rowProblems.push(
          problem(
            'field_count',
            null,
            `row has ${fields.length} field(s) but the header has ${columns.length} / 该行有 ${fields.length} 个字段，表头有 ${columns.length} 个`,
          ),
        );
      }
      const values: Record<string, string> = Object.create(null);
      columns.forEach((c, i) => {
        if (i < fields.length) values[c] = fields[i];
      });
      yield { line: record.line, values, problems: rowProblems };
    }
  }
  return { header: { line: first.value.line, columns, problems }, rows: rows() };
}

/** A JSONL file's non-blank lines, each parsed (or with its `data_type` problem). */
export async function* readJsonLines(file: string, encoding: Encoding): AsyncGenerator<JsonRow> {
  for await (const { text, line, tooLong } of splitLines(decodeFile(file, encoding))) {
    if (tooLong) {
      const max = `${MAX_LINE_CHARS / (1024 * 1024)} Mi`;
      yield { line, problem: problem('line_too_long', null, `line is longer than ${max} characters; it was not read / 该行超过 ${max} 个字符，未读取`) };
      continue;
    }
    if (text.trim() === '') continue; // blank lines (often a trailing one) carry no example
    const parsed = parseJsonLine(text);
    yield 'problem' in parsed ? { line, problem: parsed.problem } : { line, value: parsed.value };
  }
}
