/**
 * The web console's extension routes, under `/v1/weitiao/` (documented in docs/WEB.md): dataset preview,
 * validation, preparation and stats, the pre-launch estimate, and evaluations. Thin shells over the
 * services like every other route: the data rules live in src/data, the `auto` rules in src/train, the
 * scoring in src/eval. Mount next to the OpenAI routes, behind the same key check:
 *
 * ```ts
 * const app = createApp(ctx, { auth: true });
 * app.route('/', extensionRoutes(ctx));
 * ```
 * Bodies are validated with zod; failures are WeitiaoErrors, which the API's error handler turns into
 * OpenAI's `{error: {message, type, param, code}}`.
 */
import { statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Hono } from 'hono';
import { z } from 'zod';
import type { Context } from '../context.js';
import {
  datasetStats,
  detectLabelSet,
  engineTokenCounter,
  openSource,
  prepareDataset,
  readJsonLines,
  readTable,
  validateChatFile,
  type DataDeps,
  type DatasetStats,
  type Issue,
  type PrepareOptions,
  type ValidationReport,
} from '../data/index.js';

import { WeitiaoError } from '../errors.js';
import type { ChatExample } from '../engine/index.js';
import { compareModels, evaluateModel, type EvalReport } from '../eval/index.js';
import { createFile, fileContentPath, retrieveFile, type FileObject } from '../files/index.js';
import { resolveModel, retrieveModel } from '../models/index.js';
import { BASE_LEARNING_RATE, BATCH_RULE, EPOCH_RULE, RequestedHyperparameters, resolveHyperparameters } from '../train/index.js';

// ------------------------------------------------------------------------------------------- schemas

const FileId = z.string().min(1);
const ModelId = z.string().min(1);

/** Column → chat turn templates, `{column}` placeholders (src/data's template syntax). */
const Mapping = z.strictObject({
  system: z.string().optional(),
  user: z.string(),
  assistant: z.string(),
});

const SourceOptions = {
  file_id: FileId,
  format: z.enum(['csv', 'tsv', 'jsonl']).optional(),
  encoding: z.enum(['auto', 'utf8', 'gb18030', 'gbk', 'utf16le', 'utf16be']).optional(),
  /** Absent for a chat-format JSONL file. */
  mapping: Mapping.optional(),
  /** `1=好评,0=差评` or an object, applied to the assistant template's column. */
  label_map: z.union([z.string(), z.record(z.string(), z.string())]).optional(),
  label_column: z.string().optional(),
};

export const PreviewBody = z.strictObject({
  ...SourceOptions,
  /** How many records to show. */
  limit: z.number().int().min(1).max(50).default(5),
  /** Start at the record on (or after) this 1-based line: how a report's issue is shown in context. */
  from_line: z.number().int().min(1).optional(),
});

export const ValidateBody = z.strictObject({
  ...SourceOptions,
  /** Count tokens with this model's tokenizer (too-long examples become errors). */
  model: ModelId.optional(),
});

export const PrepareBody = z.strictObject({
  ...SourceOptions,
  model: ModelId.optional(),
  /** Share of examples for the validation file; 0 writes a training file only. */
  validation: z.number().min(0).lt(1).default(0.2),
  seed: z.number().int().default(42),
  /** The name stem of the created files (`<stem>-train.jsonl`); defaults to the source file's. */
  name: z
    .string()
    .regex(/^[\p{L}\p{N}._ -]{1,100}$/u)
    .optional(),
});

export const StatsQuery = z.object({
  model: ModelId.optional(),
  epochs: z.coerce.number().int().min(1).max(50).default(1),
});

export const EstimateBody = z.strictObject({
  model: ModelId,
  training_file: FileId,
  validation_file: FileId.nullable().optional(),
  hyperparameters: RequestedHyperparameters.optional(),
  lora: z.strictObject({ r: z.number().int().positive().max(1024).optional(), alpha: z.number().positive().optional() }).optional(),
  max_seq_length: z.number().int().positive().optional(),
});

export const EvaluationBody = z.strictObject({
  model: ModelId,
  /** A chat-format JSONL file (e.g. the validation file `prepare` made). */
  file_id: FileId,
  /** A second model on the same file (e.g. the base model of a fine-tune). */
  compare_with: ModelId.optional(),
  /** Only the first N examples. */
  max_examples: z.number().int().positive().optional(),
});

// ------------------------------------------------------------------------------------------- helpers

/** Parses a body or query with a schema: one invalid_request naming the first bad field. */
function parse<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  const [first, ...rest] = parsed.error.issues;
  const param = first?.path.map(String).join('.') || undefined;
  const more = rest.length ? ` (and ${rest.length} more)` : '';
  throw new WeitiaoError('invalid_request', `invalid request / 请求无效: ${param ? `${param}: ` : ''}${first?.message ?? 'failed validation'}${more}`, {
    param,
  });
}

async function jsonBody(req: { json(): Promise<unknown> }): Promise<unknown> {
  try {
    return await req.json();
  } catch {
    throw new WeitiaoError('invalid_request', 'the body is not valid JSON / 请求体不是有效的 JSON');
  }
}

/** Where a registered model's base directory is; unregistered paths are refused over HTTP. */
function modelDir(ctx: Context, model: string | undefined, param = 'model'): string | undefined {
  if (model === undefined) return undefined;
  try {
    retrieveModel(ctx, model);
    return resolveModel(ctx, model).basePath;
  } catch (err) {
    const e = WeitiaoError.from(err);
    throw new WeitiaoError(e.code, e.message, { param, cause: err });
  }
}

/**
 * Token counts per model directory, kept across requests. The console asks about the same examples
 * several times (validate, prepare, then the estimate), and each count is an engine process that loads
 * the tokenizer: with the cache a dataset costs one engine run, not one per request.
 */
const tokenCache = new Map<string, { maxLength: number; counts: Map<string, number> }>();
const TOKEN_CACHE_ENTRIES = 200_000;
const TOKEN_CACHE_MODELS = 4;

const exampleKey = (e: ChatExample): string => JSON.stringify(e.messages.map((m) => [m.role, m.content, m.weight ?? null]));

/** The messages before the final answer: datasetStats counts these too, so they are counted in the same run. */
function promptPart(e: ChatExample): ChatExample {
  const i = e.messages.map((m) => m.role).lastIndexOf('assistant');
  return { messages: i < 0 ? e.messages : e.messages.slice(0, i) };
}

/** src/data's dependencies for a model's tokenizer (or none, to count characters), counted through the cache. */
function tokenDeps(dir: string | undefined): DataDeps {
  if (!dir) return {};
  const count = engineTokenCounter(dir);
  // A model rebuilt in place (create-tiny --overwrite) has a new tokenizer: its files' times change.
  const version = ['tokenizer.json', 'config.json'].map((f) => statSync(path.join(dir, f), { throwIfNoEntry: false })?.mtimeMs ?? 0).join(':');
  const cacheKey = `${dir}\0${version}`;
  return {
    countTokens: async (examples) => {
      let entry = tokenCache.get(cacheKey);
      if (!entry || entry.counts.size > TOKEN_CACHE_ENTRIES) {
        tokenCache.delete(cacheKey);
        if (tokenCache.size >= TOKEN_CACHE_MODELS) tokenCache.delete(tokenCache.keys().next().value!);
        tokenCache.set(cacheKey, (entry = { maxLength: 0, counts: new Map() }));
      }
      const counts = entry.counts;
      const missing = new Map<string, ChatExample>();
      for (const e of examples) {
        for (const x of [e, promptPart(e)]) {
          const k = exampleKey(x);
          if (x.messages.length && !counts.has(k)) missing.set(k, x);
        }
      }
      if (missing.size || !entry.maxLength) {
        const batch = missing.size ? [...missing.values()] : examples.slice(0, 1);
        const result = await count(batch);
        batch.forEach((x, i) => counts.set(exampleKey(x), result.counts[i]));
        entry.maxLength = result.model_max_length;
      }
      return { counts: examples.map((e) => counts.get(exampleKey(e)) ?? 0), model_max_length: entry.maxLength };
    },
  };
}

interface StoredFile {
  file: FileObject;
  path: string;
}

function storedFile(ctx: Context, id: string, param = 'file_id'): StoredFile {
  try {
    return { file: retrieveFile(ctx, id), path: fileContentPath(ctx, id) };
  } catch (err) {
    const e = WeitiaoError.from(err);
    throw new WeitiaoError(e.code, e.message, { param, cause: err });
  }
}

/** A scratch directory under the home's cache, removed when `fn` ends, whatever happens. */
async function withScratch<T>(ctx: Context, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(ctx.home.cache, 'web-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** `text` with every path under one of `dirs` replaced by the uploaded file's name: server paths stay on the server. */
function scrub(text: string, dirs: string[], filename: string): string {
  let out = text;
  for (const dir of dirs) {
    const escaped = dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    out = out.replace(new RegExp(`${escaped}[^\\s,;:'")]*`, 'g'), filename);
  }
  return out;
}

/** The same error with server paths scrubbed from its message. */
function scrubError(err: unknown, dirs: string[], filename: string): unknown {
  if (!(err instanceof WeitiaoError)) return err;
  const message = scrub(err.message, dirs, filename);
  if (message === err.message && !err.file) return err;
  return new WeitiaoError(err.code, message, { param: err.param, line: err.line, file: err.file ? filename : undefined, cause: err });
}

/** The error with every path under the home directory cut to its last segment. */
function hideHome(err: WeitiaoError, root: string): WeitiaoError {
  const escaped = root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const message = err.message.replace(new RegExp(`${escaped}[^\\s,;:'")]*`, 'g'), (p) => path.basename(p));
  if (message === err.message) return err;
  return new WeitiaoError(err.code, message, { param: err.param, line: err.line, file: err.file && path.basename(err.file), cause: err });
}

/** Issues name the uploaded file, never a server path. */
const publicIssue = (issue: Issue, filename: string, dirs: string[] = []): Issue => ({
  ...issue,
  file: filename,
  message: scrub(issue.message, dirs, filename),
});

function publicReport(report: { errors: Issue[]; warnings: Issue[] }, filename: string, dirs: string[] = []) {
  return {
    errors: report.errors.map((i) => publicIssue(i, filename, dirs)),
    warnings: report.warnings.map((i) => publicIssue(i, filename, dirs)),
  };
}

/** The stats without server paths. */
function publicStats(stats: DatasetStats, fileId: string): Omit<DatasetStats, 'file'> & { file_id: string } {
  const { file: _, ...rest } = stats;
  return { ...rest, file_id: fileId };
}

function prepareOptions(body: z.infer<typeof PrepareBody> | z.infer<typeof ValidateBody>, input: string, outputDir: string): PrepareOptions {
  return {
    input,
    output_dir: outputDir,
    ...(body.format ? { format: body.format } : {}),
    ...(body.encoding ? { encoding: body.encoding } : {}),
    ...(body.mapping ? { system: body.mapping.system, user: body.mapping.user, assistant: body.mapping.assistant } : {}),
    ...(body.label_map !== undefined ? { label_map: body.label_map } : {}),
    ...(body.label_column !== undefined ? { label_column: body.label_column } : {}),
  };
}

// ------------------------------------------------------------------------------------------- preview

interface ColumnSummary {
  name: string;
  /** Distinct values, up to LABEL_PROBE + 1 (more means "free text"). */
  distinct: Set<string>;
  totalChars: number;
  values: number;
}

/** Values kept per column to detect a label set; detectLabelSet never accepts more than 20 labels. */
const LABEL_PROBE = 20;

interface FileScan {
  format: 'csv' | 'tsv' | 'jsonl';
  encoding: string;
  /** A chat-format JSONL file (first object has `messages`). */
  chat: boolean;
  columns: string[];
  rows: number;
  summaries: Map<string, ColumnSummary>;
  /** Every column's values when they form a label set (for the label-map hint and the suggested mapping). */
  labelSets: Map<string, string[]>;
}

/** Files never change once stored, so a scan is kept per (file, format, encoding). */
const scanCache = new Map<string, FileScan>();
const SCAN_CACHE_SIZE = 32;

const cellText = (v: unknown): string => (typeof v === 'string' ? v : v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v));

/** One pass over the file: format, columns, row count, and per-column value summaries. */
async function scanFile(file: string, format: FileScan['format'] | undefined, encoding: string | undefined): Promise<FileScan> {
  const key = `${file}\0${format ?? ''}\0${encoding ?? ''}`;
  const cached = scanCache.get(key);
  if (cached) return cached;

  const source = await openSource(file, format, (encoding ?? 'auto') as Parameters<typeof openSource>[2]);
  const summaries = new Map<string, ColumnSummary>();
  const see = (column: string, value: string) => {
    let s = summaries.get(column);
    if (!s) summaries.set(column, (s = { name: column, distinct: new Set(), totalChars: 0, values: 0 }));
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
      if (!v || typeof v !== 'object' || Array.isArray(v)) continue;
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
  for (const s of summaries.values()) {
    if (s.distinct.size > LABEL_PROBE) continue;
    // detectLabelSet wants every answer (its rule weighs distinct answers against the example count).
    const sample: string[] = [];
    const distinct = [...s.distinct];
    for (let i = 0; i < s.values; i++) sample.push(distinct[i % distinct.length]);
    const set = detectLabelSet(sample);
    if (set) labelSets.set(s.name, set);
  }
  const scan: FileScan = { format: source.format, encoding: source.encoding, chat, columns, rows, summaries, labelSets };
  if (scanCache.size >= SCAN_CACHE_SIZE) scanCache.delete(scanCache.keys().next().value!);
  scanCache.set(key, scan);
  return scan;
}

/**
 * A first mapping for a table: the answer is the column whose values form a label set, else the one with
 * the fewest distinct short values, else the last; the user turn is the column with the longest text
 * among the rest.
 */
function suggestMapping(scan: FileScan): { system?: string; user: string; assistant: string } | null {
  if (scan.chat || scan.columns.length < 2) return null;
  const wrap = (c: string) => `{${c.replace(/\{/g, '{{').replace(/\}/g, '}}')}}`;
  const distinct = (c: string) => scan.summaries.get(c)?.distinct.size ?? Infinity;
  const avg = (c: string) => {
    const s = scan.summaries.get(c);
    return s && s.values ? s.totalChars / s.values : 0;
  };
  const labelColumns = scan.columns.filter((c) => scan.labelSets.has(c));
  const fewValued = scan.columns.filter((c) => distinct(c) <= LABEL_PROBE && avg(c) <= 20);
  const byDistinct = (a: string, b: string) => distinct(a) - distinct(b);
  const answer = labelColumns.sort(byDistinct)[0] ?? fewValued.sort(byDistinct)[0] ?? scan.columns[scan.columns.length - 1];
  const user = scan.columns.filter((c) => c !== answer).sort((a, b) => avg(b) - avg(a))[0];
  return { user: wrap(user), assistant: wrap(answer) };
}

/** A CSV field, always quoted (so commas, quotes and line breaks survive). */
const csvField = (v: string): string => `"${v.replace(/"/g, '""')}"`;

type RawRecord = {
  line: number;
  values: Record<string, unknown>;
  problems: { code: string; field: string | null; message: string; severity: 'error' | 'warning' }[];
};

/**
 * Raw records for the preview: `limit` of them from the record containing line `fromLine` (a CSV record
 * may span several lines, so that is the last record starting at or before it).
 */
async function readRecords(file: string, scan: FileScan, fromLine: number, limit: number): Promise<RawRecord[]> {
  const rows: AsyncIterable<RawRecord> =
    scan.format === 'jsonl'
      ? (async function* () {
          for await (const row of readJsonLines(file, scan.encoding as never)) {
            yield { line: row.line, values: (row.value ?? {}) as Record<string, unknown>, problems: row.problem ? [row.problem] : [] };
          }
        })()
      : (async function* () {
          const table = await readTable(file, { format: scan.format, encoding: scan.encoding as never });
          for await (const row of table.rows) yield { line: row.line, values: row.values, problems: row.problems };
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

async function preview(ctx: Context, body: z.infer<typeof PreviewBody>) {
  const { file, path: filePath } = storedFile(ctx, body.file_id);
  const scan = await scanFile(filePath, body.format, body.encoding);
  const records = await readRecords(filePath, scan, body.from_line ?? 1, body.limit);

  const issues: Issue[] = [];
  const examples: { line: number; messages: { role: string; content: string }[] }[] = [];
  const suggested = suggestMapping(scan);
  const mapping = body.mapping ?? (scan.chat ? undefined : suggested ?? undefined);

  if (scan.chat) {
    // Chat files: show the messages as they are, with what validation says about these lines.
    await withScratch(ctx, async (dir) => {
      const head = path.join(dir, 'head.jsonl');
      // Blank lines keep each record on its own line number, so reported lines match the file's.
      const lines: string[] = [];
      for (const r of records) {
        while (lines.length < r.line - 1) lines.push('');
        lines.push(JSON.stringify(r.values));
      }
      await writeFile(head, lines.join('\n') + '\n');
      const report = await validateChatFile(head, { encoding: 'utf8' });
      const bad = new Set(report.errors.map((i) => i.line));
      for (const i of [...report.errors, ...report.warnings]) issues.push(publicIssue(i, file.filename, [dir]));
      for (const r of records) {
        const msgs = (r.values as { messages?: unknown }).messages;
        if (!bad.has(r.line) && Array.isArray(msgs)) {
          examples.push({
            line: r.line,
            messages: msgs.map((m: { role?: unknown; content?: unknown }) => ({ role: String(m?.role ?? ''), content: cellText(m?.content) })),
          });
        }
      }
    });
  } else if (mapping) {
    // Tables: each record through prepareDataset on its own (a one-row CSV with the real header), so the
    // preview applies exactly the templates, label map and checks that prepare will.
    await withScratch(ctx, async (dir) => {
      try {
      const header = scan.columns.map(csvField).join(',');
      for (const [i, r] of records.entries()) {
        if (r.problems.length) {
          r.problems.forEach((p) => issues.push({ file: file.filename, line: r.line, ...p }));
          continue;
        }
        const one = path.join(dir, `row-${i}.csv`);
        await writeFile(one, `${header}\n${scan.columns.map((c) => csvField(cellText(r.values[c]))).join(',')}\n`);
        const out = path.join(dir, `out-${i}`);
        const result = await prepareDataset({
          input: one,
          output_dir: out,
          format: 'csv',
          encoding: 'utf8',
          ...(mapping.system ? { system: mapping.system } : {}),
          user: mapping.user,
          assistant: mapping.assistant,
          ...(body.label_map !== undefined ? { label_map: body.label_map } : {}),
          ...(body.label_column !== undefined ? { label_column: body.label_column } : {}),
        });
        for (const issue of [...result.errors, ...result.warnings]) issues.push({ ...issue, file: file.filename, line: r.line });
        if (result.written && result.train) {
          const text = await readFile(result.train.file, 'utf8');
          const example = JSON.parse(text.split('\n')[0]) as { messages: { role: string; content: string }[] };
          examples.push({ line: r.line, messages: example.messages });
        }
      }
      } catch (err) {
        throw scrubError(err, [dir], file.filename);
      }
    });
  }

  // Raw values of the answer column, to help write a label map.
  const answerColumn = mapping && /^\{([^{}]+)\}$/.exec(mapping.assistant.trim())?.[1]?.trim();
  const answerSummary = answerColumn ? scan.summaries.get(answerColumn) : undefined;
  const answers = answerSummary && answerSummary.distinct.size <= LABEL_PROBE ? [...answerSummary.distinct].sort() : [];

  return {
    object: 'weitiao.dataset_preview' as const,
    file_id: file.id,
    filename: file.filename,
    format: scan.chat ? 'chat' : scan.format,
    encoding: scan.encoding,
    columns: scan.chat ? [] : scan.columns,
    suggested_mapping: suggested,
    answers,
    label_set: answerColumn ? (scan.labelSets.get(answerColumn) ?? null) : null,
    total_rows: scan.rows,
    rows: records.map((r) =>
      Object.fromEntries(Object.entries(r.values).map(([k, v]) => [k, cellText(v)])),
    ),
    examples,
    issues,
  };
}

// ------------------------------------------------------------------------------- validate, prepare, stats

/** Validation report and stats for a chat file, or for a table as the mapping would convert it. */
async function validate(ctx: Context, body: z.infer<typeof ValidateBody>) {
  const { file, path: filePath } = storedFile(ctx, body.file_id);
  const model_dir = modelDir(ctx, body.model);
  const scan = await scanFile(filePath, body.format, body.encoding);
  if (scan.chat && !body.mapping) {
    const report: ValidationReport = await validateChatFile(filePath, body.encoding ? { encoding: body.encoding } : {}, tokenDeps(model_dir));
    const stats = await datasetStats(filePath, body.encoding ? { encoding: body.encoding } : {}, tokenDeps(model_dir));
    return {
      object: 'weitiao.dataset_validation' as const,
      file_id: file.id,
      examples: report.examples,
      valid_examples: report.valid_examples,
      label_set: report.label_set,
      report: publicReport(report, file.filename, [filePath]),
      stats: publicStats(stats, file.id),
    };
  }
  return withScratch(ctx, async (dir) => {
    const result = await prepareDataset(prepareOptions(body, filePath, dir), tokenDeps(model_dir));
    const stats = result.written && result.train ? await datasetStats(result.train.file, {}, tokenDeps(model_dir)) : null;
    return {
      object: 'weitiao.dataset_validation' as const,
      file_id: file.id,
      examples: result.rows,
      valid_examples: result.examples,
      label_set: result.label_set,
      report: publicReport(result, file.filename, [filePath, dir]),
      stats: stats ? publicStats(stats, file.id) : null,
    };
  });
}

/**
 * Converts (tables) or re-splits (chat files), checks, and stores train/validation files as file objects.
 * With errors nothing is stored: the response has `written: false`, null files and the report.
 */
async function prepare(ctx: Context, body: z.infer<typeof PrepareBody>) {
  const { file, path: filePath } = storedFile(ctx, body.file_id);
  const model_dir = modelDir(ctx, body.model);
  const stem = body.name ?? (file.filename.replace(/\.[^.]+$/, '') || 'dataset');
  return withScratch(ctx, async (dir) => {
    const result = await prepareDataset(
      {
        ...prepareOptions(body, filePath, dir),
        validation: body.validation,
        seed: body.seed,
        train_file: `${stem}-train.jsonl`,
        validation_file: `${stem}-validation.jsonl`,
      },
      tokenDeps(model_dir),
    );
    const base = {
      object: 'weitiao.dataset' as const,
      source_file: file.id,
      written: result.written,
      rows: result.rows,
      examples: result.examples,
      label_set: result.label_set,
      stratified: result.stratified,
      seed: result.seed,
      validation_fraction: result.validation_fraction,
      report: publicReport(result, file.filename, [filePath, dir]),
    };
    if (!result.written || !result.train) return { ...base, training_file: null, validation_file: null, stats: null };
    const stats = await datasetStats(result.train.file, {}, tokenDeps(model_dir));
    const training_file = await createFile(ctx, { source: result.train.file, filename: path.basename(result.train.file), purpose: 'fine-tune' });
    const validation_file = result.validation
      ? await createFile(ctx, { source: result.validation.file, filename: path.basename(result.validation.file), purpose: 'fine-tune' })
      : null;
    return {
      ...base,
      training_file,
      validation_file,
      train_label_counts: result.train.label_counts,
      validation_label_counts: result.validation?.label_counts ?? null,
      stats: publicStats(stats, training_file.id),
    };
  });
}

// ------------------------------------------------------------------------------------------- estimate

/** Throughput assumed for a model with no finished run yet: a rough CPU figure, said to be rough. */
const FALLBACK_FLOPS_PER_SECOND = 2e10;
/** Starting the engine and loading the model, before the first step. */
const STARTUP_SECONDS = 15;

interface ModelShape {
  hidden_size?: number;
  num_hidden_layers?: number;
  vocab_size?: number;
  intermediate_size?: number;
  num_attention_heads?: number;
  torch_dtype?: string;
}

async function readConfig(dir: string): Promise<ModelShape | null> {
  try {
    return JSON.parse(await readFile(path.join(dir, 'config.json'), 'utf8')) as ModelShape;
  } catch {
    return null;
  }
}

/** Parameters of a decoder from its config: embeddings + per layer attention and MLP (tied head not counted twice). */
function parameterCount(c: ModelShape): number | null {
  if (!c.hidden_size || !c.num_hidden_layers || !c.vocab_size) return null;
  const h = c.hidden_size;
  const inter = c.intermediate_size ?? 4 * h;
  return c.vocab_size * h + c.num_hidden_layers * (4 * h * h + 3 * h * inter);
}

/** The newest tokens/s a finished or running job on the same base model reported, if any. */
function measuredThroughput(ctx: Context, baseModel: string): number | null {
  const row = ctx.db
    .prepare(
      `SELECT e.data AS data FROM job_events e JOIN jobs j ON j.id = e.job_id
       WHERE j.model = ? AND e.type = 'metrics' AND e.data LIKE '%tokens_per_second%'
       ORDER BY e.seq DESC LIMIT 1`,
    )
    .get(baseModel) as { data: string } | undefined;
  if (!row) return null;
  try {
    const v = (JSON.parse(row.data) as { tokens_per_second?: unknown }).tokens_per_second;
    return typeof v === 'number' && v > 0 ? v : null;
  } catch {
    return null;
  }
}

async function estimate(ctx: Context, body: z.infer<typeof EstimateBody>) {
  const baseDir = modelDir(ctx, body.model)!;
  const train = storedFile(ctx, body.training_file, 'training_file');
  const valid = body.validation_file ? storedFile(ctx, body.validation_file, 'validation_file') : null;
  const stats = await datasetStats(train.path, body.max_seq_length ? { max_length: body.max_seq_length } : {}, tokenDeps(baseDir));
  if (stats.examples === 0) {
    throw new WeitiaoError('invalid_file', `${train.file.filename} has no valid chat examples: validate it first / 训练文件中没有有效的对话样本`, {
      param: 'training_file',
    });
  }
  const validStats = valid ? await datasetStats(valid.path, {}, tokenDeps(baseDir)) : null;
  const hp = resolveHyperparameters({ n_examples: stats.examples, requested: body.hyperparameters ?? {}, method: 'lora' });
  const n = stats.examples;
  const isAuto = (k: 'n_epochs' | 'batch_size' | 'learning_rate_multiplier') => hp.auto.includes(k);

  const config = await readConfig(baseDir);
  const passes = (k: number) => `${k} pass${k === 1 ? '' : 'es'}`;
  const epochsWhy: Explanation = isAuto('n_epochs')
    ? n * EPOCH_RULE.default < EPOCH_RULE.minTrainedExamples
      ? [
          `auto: ⌈${EPOCH_RULE.minTrainedExamples} / ${n} examples⌉, so the model sees at least ${EPOCH_RULE.minTrainedExamples} examples (at most ${EPOCH_RULE.max} epochs)`,
          `自动：⌈${EPOCH_RULE.minTrainedExamples} / ${n}⌉，保证至少训练 ${EPOCH_RULE.minTrainedExamples} 个样本（最多 ${EPOCH_RULE.max} 轮）`,
        ]
      : n * EPOCH_RULE.default > EPOCH_RULE.maxTrainedExamples
        ? [
            `auto: ⌊${EPOCH_RULE.maxTrainedExamples} / ${n} examples⌋, so training stops after about ${EPOCH_RULE.maxTrainedExamples} examples (at least 1 epoch)`,
            `自动：⌊${EPOCH_RULE.maxTrainedExamples} / ${n}⌋，总训练样本约 ${EPOCH_RULE.maxTrainedExamples} 个（至少 1 轮）`,
          ]
        : [
            `auto: ${passes(EPOCH_RULE.default)} over ${n} examples (${EPOCH_RULE.minTrainedExamples}–${EPOCH_RULE.maxTrainedExamples} examples in all)`,
            `自动：${n} 个样本训练 ${EPOCH_RULE.default} 轮（总样本数在 ${EPOCH_RULE.minTrainedExamples}–${EPOCH_RULE.maxTrainedExamples} 之间）`,
          ]
    : [`set by you: ${passes(hp.n_epochs)} over ${n} examples`, `手动设置：${n} 个样本训练 ${hp.n_epochs} 轮`];
  const requestedBatch = body.hyperparameters?.batch_size;
  const batchWhy: Explanation = isAuto('batch_size')
    ? [
        `auto: ${BATCH_RULE.fraction * 100} % of ${n} examples to the nearest power of two, ${BATCH_RULE.min}–${BATCH_RULE.maxCpu} on CPU; ${hp.estimated_total_steps} steps`,
        `自动：样本数 ${n} 的 ${BATCH_RULE.fraction * 100}%，取最接近的 2 的幂（CPU 上 ${BATCH_RULE.min}–${BATCH_RULE.maxCpu}）；共 ${hp.estimated_total_steps} 步`,
      ]
    : typeof requestedBatch === 'number' && hp.batch_size < requestedBatch
      ? [`set by you, cut to the ${n} examples there are`, `手动设置，已减为样本数 ${n}`]
      : [`set by you: ${hp.estimated_total_steps} steps`, `手动设置：共 ${hp.estimated_total_steps} 步`];
  const lr = Number(hp.learning_rate.toPrecision(4));
  const lrWhy: Explanation = isAuto('learning_rate_multiplier')
    ? [`auto: 1 × LoRA's base rate ${BASE_LEARNING_RATE.lora} = ${lr}`, `自动：1 × LoRA 基础学习率 ${BASE_LEARNING_RATE.lora} = ${lr}`]
    : [`set by you: ${hp.learning_rate_multiplier} × ${BASE_LEARNING_RATE.lora} = ${lr}`, `手动设置：${hp.learning_rate_multiplier} × ${BASE_LEARNING_RATE.lora} = ${lr}`];
  const r = body.lora?.r ?? 8;
  const alpha = body.lora?.alpha ?? 16;
  const scale = Number((alpha / r).toPrecision(3));
  const rWhy: Explanation = [`LoRA rank ${r}: ${loraParamText(config, r)} trainable parameters`, `LoRA 秩 ${r}：可训练参数 ${loraParamText(config, r)}`];
  const alphaWhy: Explanation = [`updates are scaled by alpha / rank = ${scale}`, `更新量乘以 alpha / 秩 = ${scale}`];

  // Trained tokens as OpenAI counts them: every token of every example, once per epoch.
  const trained_tokens = stats.total_tokens * hp.n_epochs;
  const params = config ? parameterCount(config) : null;
  const measured = measuredThroughput(ctx, body.model);
  // Training costs about 6 FLOPs per parameter per token (forward + backward).
  const tokensPerSecond = measured ?? (params ? FALLBACK_FLOPS_PER_SECOND / (6 * params) : null);
  const validTokens = validStats ? validStats.total_tokens * hp.n_epochs : 0;
  const estimated_seconds = tokensPerSecond ? Math.round(STARTUP_SECONDS + (trained_tokens + validTokens / 3) / tokensPerSecond) : null;

  // Memory: fp32 weights, LoRA weights with Adam's two moments and gradients, activations of one batch.
  let estimated_memory_bytes: number | null = null;
  if (config && params && config.hidden_size && config.num_hidden_layers && config.vocab_size) {
    const h = config.hidden_size;
    const L = config.num_hidden_layers;
    const seq = Math.min(stats.tokens_per_example?.max ?? 512, body.max_seq_length ?? 1024);
    const loraParams = L * 7 * r * (h + (config.intermediate_size ?? 4 * h)); // all-linear targets
    const activations = hp.batch_size * seq * (L * h * 34 + config.vocab_size * 2) * 4;
    estimated_memory_bytes = Math.round(params * 4 + loraParams * 4 * 4 + activations + 300 * 1024 * 1024 /* Python, torch */);
  }

  const notes: string[] = [];
  if (!measured && estimated_seconds !== null) {
    notes.push(
      'Time is a rough figure from the model size until a job on this base model has run; then it uses the measured speed. / 在该基础模型上跑过任务之前，时间只是按模型大小的粗略估计。',
    );
  }
  if (stats.over_max_length) {
    notes.push(`${stats.over_max_length} examples are longer than ${stats.max_length} tokens and will fail validation / ${stats.over_max_length} 个样本超过最大长度`);
  }

  return {
    object: 'weitiao.estimate' as const,
    model: body.model,
    method: 'lora' as const,
    examples: n,
    validation_examples: validStats?.examples ?? null,
    tokens_per_example: stats.tokens_per_example,
    label_set: stats.label_set,
    hyperparameters: {
      n_epochs: explained(hp.n_epochs, isAuto('n_epochs'), epochsWhy),
      batch_size: explained(hp.batch_size, isAuto('batch_size'), batchWhy),
      learning_rate_multiplier: explained(hp.learning_rate_multiplier, isAuto('learning_rate_multiplier'), lrWhy),
      learning_rate: explained(hp.learning_rate, isAuto('learning_rate_multiplier'), lrWhy),
      lora_r: explained(r, body.lora?.r === undefined, rWhy),
      lora_alpha: explained(alpha, body.lora?.alpha === undefined, alphaWhy),
    },
    total_steps: hp.estimated_total_steps,
    trained_tokens,
    tokens_per_second: tokensPerSecond === null ? null : Math.round(tokensPerSecond),
    throughput_source: measured ? ('measured' as const) : tokensPerSecond ? ('model_size' as const) : null,
    estimated_seconds,
    estimated_memory_bytes,
    notes,
  };
}

/** One line in English and one in Chinese. */
type Explanation = [en: string, zh: string];

/** A resolved value with why: `explanation` bilingual as every message, `explanation_i18n` for a UI that shows one language. */
function explained(value: number, auto: boolean, [en, zh]: Explanation) {
  return { value, auto, explanation: `${en} / ${zh}`, explanation_i18n: { en, zh } };
}

function loraParamText(config: ModelShape | null, r: number): string {
  if (!config?.hidden_size || !config.num_hidden_layers) return '?';
  const h = config.hidden_size;
  const n = config.num_hidden_layers * 7 * r * (h + (config.intermediate_size ?? 4 * h));
  return n >= 1e6 ? `≈ ${(n / 1e6).toFixed(1)} M` : `≈ ${Math.round(n / 1e3)} k`;
}

// ------------------------------------------------------------------------------------------- evaluations

/** Misclassified examples listed per report; the counts are in the confusion matrix anyway. */
const MAX_MISCLASSIFIED = 200;

/** Each example's physical line and prompt (its last user message), by example index. */
async function examplePrompts(file: string): Promise<{ line: number; prompt: string }[]> {
  const out: { line: number; prompt: string }[] = [];
  for await (const row of readJsonLines(file, 'utf8')) {
    const messages = (row.value as { messages?: { role?: string; content?: unknown }[] } | undefined)?.messages;
    const user = Array.isArray(messages) ? messages.filter((m) => m?.role === 'user').at(-1) : undefined;
    out.push({ line: row.line, prompt: cellText(user?.content) });
  }
  return out;
}

function publicEvalReport(report: EvalReport, fileId: string, prompts: { line: number; prompt: string }[]) {
  const { file: _, predictions, ...rest } = report;
  const wrong = predictions.filter((p) => p.predicted !== p.expected);
  return {
    object: 'weitiao.evaluation' as const,
    ...rest,
    file_id: fileId,
    misclassified_count: wrong.length,
    misclassified: wrong.slice(0, MAX_MISCLASSIFIED).map((p) => ({
      index: p.index,
      line: prompts[p.index]?.line ?? null,
      prompt: prompts[p.index]?.prompt ?? '',
      expected: p.expected,
      predicted: p.predicted,
    })),
  };
}

/** Evaluates a model on an uploaded chat file, or two models on it side by side. */
async function evaluate(ctx: Context, body: z.infer<typeof EvaluationBody>, signal: AbortSignal) {
  const { file, path: filePath } = storedFile(ctx, body.file_id);
  // Registered models only: over HTTP a model name is never taken as a server path.
  modelDir(ctx, body.model);
  if (body.compare_with !== undefined) modelDir(ctx, body.compare_with, 'compare_with');
  const options = { file: filePath, maxExamples: body.max_examples ?? null, signal };
  try {
    const prompts = await examplePrompts(filePath);
    if (body.compare_with === undefined) {
      const report = await evaluateModel(ctx, { ...options, model: body.model });
      return { object: 'weitiao.evaluation_result' as const, file_id: file.id, reports: [publicEvalReport(report, file.id, prompts)], comparison: null };
    }
    const both = await compareModels(ctx, { ...options, models: [body.model, body.compare_with] });
    return {
      object: 'weitiao.evaluation_result' as const,
      file_id: file.id,
      reports: both.reports.map((r) => publicEvalReport(r, file.id, prompts)),
      comparison: {
        ...both.summary,
        disagreements: both.disagreements.slice(0, MAX_MISCLASSIFIED).map((d) => ({ ...d, line: prompts[d.index]?.line ?? null, prompt: prompts[d.index]?.prompt ?? '' })),
      },
    };
  } catch (err) {
    throw scrubError(err, [filePath], file.filename);
  }
}

// ------------------------------------------------------------------------------------------- routes

/** The console's routes; mount on the API app (`app.route('/', extensionRoutes(ctx))`) after its auth middleware. */
export function extensionRoutes(ctx: Context): Hono {
  const app = new Hono();
  const base = '/v1/weitiao';
  // Any path under the home directory left in an error message is cut to its file name.
  app.onError((err) => {
    throw err instanceof WeitiaoError ? hideHome(err, ctx.home.root) : err;
  });

  app.post(`${base}/datasets/preview`, async (c) => c.json(await preview(ctx, parse(PreviewBody, await jsonBody(c.req)))));
  app.post(`${base}/datasets/validate`, async (c) => c.json(await validate(ctx, parse(ValidateBody, await jsonBody(c.req)))));
  app.post(`${base}/datasets/prepare`, async (c) => c.json(await prepare(ctx, parse(PrepareBody, await jsonBody(c.req)))));
  app.get(`${base}/datasets/:file_id/stats`, async (c) => {
    const query = parse(StatsQuery, c.req.query());
    const { file, path: filePath } = storedFile(ctx, c.req.param('file_id'));
    const stats = await datasetStats(filePath, { epochs: query.epochs }, tokenDeps(modelDir(ctx, query.model)));
    return c.json({ object: 'weitiao.dataset_stats', ...publicStats(stats, file.id) });
  });
  app.post(`${base}/estimate`, async (c) => c.json(await estimate(ctx, parse(EstimateBody, await jsonBody(c.req)))));
  // The client going away stops the engine (its signal aborts the evaluation).
  app.post(`${base}/evaluations`, async (c) => c.json(await evaluate(ctx, parse(EvaluationBody, await jsonBody(c.req)), c.req.raw.signal)));
  return app;
}
