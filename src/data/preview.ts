/**
 * The console's look at an uploaded file before it is prepared: format, columns, row count, a suggested
 * column mapping, and the first records turned into chat examples by the same mapper `prepareDataset`
 * uses (in memory: nothing is written), with each record's problems at its line.
 */
import type { ChatExample } from '../engine/index.js';
import { checkExample, isObjectValue, problem, type Problem } from './internal/check.js';
import { openSource, readJsonLines, readTable } from './internal/source.js';
import { detectLabelSet } from './labels.js';
import { jsonValue, makeMapper } from './mapper.js';
import { parseOptions, PrepareOptions, type DataFormat, type Issue } from './schemas.js';

/** Column → chat turn templates with `{column}` placeholders (the template syntax of prepare). */
export interface ColumnMapping {
  system?: string;
  user: string;
  assistant: string;
}

export interface PreviewOptions {
  format?: DataFormat;
  encoding?: string;
  /** Absent: a chat file is shown as it is, a table through the suggested mapping. */
  mapping?: ColumnMapping;
  label_map?: string | Record<string, string>;
  label_column?: string;
  /** How many records to show. */
  limit: number;
  /** Start at the record on (or after) this 1-based line. */
  from_line?: number;
}

interface ColumnSummary {
  /** Distinct values, up to LABEL_PROBE + 1 (more means "free text"). */
  distinct: Set<string>;
  totalChars: number;
  values: number;
}

/** Values kept per column to detect a label set; detectLabelSet never accepts more than 20 labels. */
const LABEL_PROBE = 20;

interface FileScan {
  format: DataFormat;
  encoding: string;
  /** A chat-format JSONL file (first object has `messages`). */
  chat: boolean;
  columns: string[];
  rows: number;
  summaries: Map<string, ColumnSummary>;
  /** Every column's values when they form a label set. */
  labelSets: Map<string, string[]>;
}

/** Stored files never change, so a scan is kept per (file, format, encoding). */
const scanCache = new Map<string, FileScan>();
const SCAN_CACHE_SIZE = 32;

/** A JSON value as a table cell. */
export const cellText = (v: unknown): string =>
  typeof v === 'string' ? v : v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);

/** One pass over the file: format, columns, row count, and per-column value summaries. */
async function scanFile(file: string, format: DataFormat | undefined, encoding: string | undefined): Promise<FileScan> {
  const key = `${file}\0${format ?? ''}\0${encoding ?? ''}`;
  const cached = scanCache.get(key);
  if (cached) return cached;

  const source = await openSource(file, format, (encoding ?? 'auto') as Parameters<typeof openSource>[2]);
  const summaries = new Map<string, ColumnSummary>();
  const see = (column: string, value: string) => {
    let s = summaries.get(column);
    if (!s) summaries.set(column, (s = { distinct: new Set(), totalChars: 0, values: 0 }));
    if (s.distinct.size <= LABEL_PROBE) s.distinct.add(value);
    s.totalChars += value.length;
    s.values++;
  };
  let columns: string[] = [];
  let rows = 0;
  let chat = false;
  if (source.format === 'jsonl') {
    let first = true;
    for await (const row of readJsonLines(file, source.encoding)) {
      rows++;
      const v = row.value;
      if (!isObjectValue(v)) continue;
      if (first) {
        first = false;
        chat = Object.hasOwn(v, 'messages');
        columns = Object.keys(v);
      }
      if (!chat) for (const [k, val] of Object.entries(v)) see(k, cellText(val));
    }
  } else {
    const table = await readTable(file, source);
    columns = table.header?.columns ?? [];
    for await (const row of table.rows) {
      rows++;
      for (const c of columns) if (c in row.values) see(c, row.values[c]);
    }
  }
  const labelSets = new Map<string, string[]>();
  for (const [name, s] of summaries) {
    if (s.distinct.size > LABEL_PROBE) continue;
    // detectLabelSet wants every answer (its rule weighs distinct answers against the example count).
    const distinct = [...s.distinct];
    const set = detectLabelSet(Array.from({ length: s.values }, (_, i) => distinct[i % distinct.length]));
    if (set) labelSets.set(name, set);
  }
  const scan: FileScan = { format: source.format, encoding: source.encoding, chat, columns, rows, summaries, labelSets };
  if (scanCache.size >= SCAN_CACHE_SIZE) scanCache.delete(scanCache.keys().next().value!);
  scanCache.set(key, scan);
  return scan;
}

/**
 * A first mapping for a table: the answer is the column whose values form a label set, else the one with
 * the fewest distinct short values, else the last; the user turn is the column with the longest text.
 */
function suggestMapping(scan: FileScan): ColumnMapping | null {
  if (scan.chat || scan.columns.length < 2) return null;
  const wrap = (c: string) => `{${c.replace(/\{/g, '{{').replace(/\}/g, '}}')}}`;
  const distinct = (c: string) => scan.summaries.get(c)?.distinct.size ?? Infinity;
  const avg = (c: string) => {
    const s = scan.summaries.get(c);
    return s && s.values ? s.totalChars / s.values : 0;
  };
  const byDistinct = (a: string, b: string) => distinct(a) - distinct(b);
  const labelColumns = scan.columns.filter((c) => scan.labelSets.has(c));
  const fewValued = scan.columns.filter((c) => distinct(c) <= LABEL_PROBE && avg(c) <= 20);
  const answer = labelColumns.sort(byDistinct)[0] ?? fewValued.sort(byDistinct)[0] ?? scan.columns[scan.columns.length - 1];
  const user = scan.columns.filter((c) => c !== answer).sort((a, b) => avg(b) - avg(a))[0];
  return { user: wrap(user), assistant: wrap(answer) };
}

/** A record as read: a table row's cells or a JSONL line's value, with the problems that stop reading it. */
interface RawRecord {
  line: number;
  value: unknown;
  problems: Problem[];
}

/**
 * `limit` records from the one containing line `fromLine` (a CSV record may span several lines, so that
 * is the last record starting at or before it).
 */
async function readRecords(file: string, scan: FileScan, fromLine: number, limit: number): Promise<RawRecord[]> {
  const rows: AsyncIterable<RawRecord> =
    scan.format === 'jsonl'
      ? (async function* () {
          for await (const row of readJsonLines(file, scan.encoding as never)) yield { line: row.line, value: row.value, problems: row.problem ? [row.problem] : [] };
        })()
      : (async function* () {
          const table = await readTable(file, { format: scan.format, encoding: scan.encoding as never });
          for await (const row of table.rows) yield { line: row.line, value: row.values, problems: row.problems };
        })();
  const out: RawRecord[] = [];
  let previous: RawRecord | undefined;
  for await (const row of rows) {
    if (out.length === 0 && row.line < fromLine) {
      previous = row;
      continue;
    }
    if (out.length === 0 && row.line > fromLine && previous) out.push(previous);
    if (out.length < limit) out.push(row);
    if (out.length >= limit) break;
  }
  if (out.length === 0 && previous) out.push(previous);
  return out;
}

/** The mapper `prepareDataset` would build for this mapping; options are checked as prepare checks them. */
function mapperFor(scan: FileScan, filename: string, mapping: ColumnMapping, options: PreviewOptions) {
  const prepare = parseOptions(PrepareOptions, { input: filename, output_dir: '.', ...mapping, label_map: options.label_map, label_column: options.label_column });
  const where = scan.format === 'jsonl' ? `${filename} (keys of its first record)` : `the header of ${filename}`;
  return makeMapper(prepare, scan.columns, where);
}

/** The preview of a stored file (`file` on disk, `filename` as the user named it; issues name only the latter). */
export async function previewDataset(file: string, filename: string, options: PreviewOptions) {
  const scan = await scanFile(file, options.format, options.encoding as DataFormat | undefined);
  const records = await readRecords(file, scan, options.from_line ?? 1, options.limit);
  const suggested = suggestMapping(scan);
  const mapping = options.mapping ?? (scan.chat ? undefined : (suggested ?? undefined));

  const issues: Issue[] = [];
  const examples: { line: number; messages: ChatExample['messages'] }[] = [];
  const report = (line: number, problems: Problem[]) => problems.forEach((p) => issues.push({ file: filename, line, ...p }));
  // A chat file is shown as it is, with the checks validation makes; a table goes through the mapper.
  const mapper = scan.chat ? null : mapping ? mapperFor(scan, filename, mapping, options) : undefined;
  if (mapper !== undefined) {
    for (const r of records) {
      if (r.problems.length) {
        report(r.line, r.problems);
        continue;
      }
      const record = r.value;
      const mapped =
        mapper === null
          ? checkExample(record)
          : isObjectValue(record)
            ? mapper.map((c) => (scan.format === 'jsonl' ? jsonValue(record, c) : { value: String(record[c] ?? '') }))
            : { example: null, problems: [problem('data_type', null, 'record is not a JSON object / 记录不是 JSON 对象')] };
      report(r.line, mapped.problems);
      if (mapped.example && !mapped.problems.some((p) => p.severity === 'error')) examples.push({ line: r.line, messages: mapped.example.messages });
    }
  }

  // Raw values of the answer column, to help write a label map.
  const answerColumn = mapping && /^\{([^{}]+)\}$/.exec(mapping.assistant.trim())?.[1]?.trim();
  const answerSummary = answerColumn ? scan.summaries.get(answerColumn) : undefined;
  const answers = answerSummary && answerSummary.distinct.size <= LABEL_PROBE ? [...answerSummary.distinct].sort() : [];
  return {
    format: scan.chat ? ('chat' as const) : scan.format,
    encoding: scan.encoding,
    columns: scan.chat ? [] : scan.columns,
    suggested_mapping: suggested,
    answers,
    label_set: answerColumn ? (scan.labelSets.get(answerColumn) ?? null) : null,
    total_rows: scan.rows,
    rows: records.map((r) => Object.fromEntries(Object.entries(isObjectValue(r.value) ? r.value : {}).map(([k, v]) => [k, cellText(v)]))),
    examples,
    issues,
  };
}

/** Whether a stored file is already chat-format JSONL (validated as it is, not through a mapping). */
export async function isChatFile(file: string, format?: DataFormat, encoding?: string): Promise<boolean> {
  return (await scanFile(file, format, encoding)).chat;
}
