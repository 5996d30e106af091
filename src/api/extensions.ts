/**
 * The web console's extension routes, under `/v1/weitiao/` (documented in docs/WEB.md): dataset preview,
 * validation, preparation and stats, the pre-launch estimate, and evaluations. Thin shells over the
 * services like every other route: the data rules live in src/data, the `auto` rules in src/train, the
 * scoring in src/eval, the estimate in src/train/estimate.ts. createApp declares them in its route table
 * next to the OpenAI routes (behind the same key check, documented in `/openapi.json`):
 *
 * ```ts
 * extensionRoutes(routes, ctx);
 * ```
 * Bodies are validated with zod; failures are WeitiaoErrors, which the API's error handler turns into
 * OpenAI's `{error: {message, type, param, code}}`.
 */
import { statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
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

import { hideErrorPaths, WeitiaoError } from '../errors.js';
import type { ChatExample } from '../engine/index.js';
import { compareModels, evaluateModel, type EvalReport } from '../eval/index.js';
import { createFile, fileContentPath, retrieveFile, type FileObject } from '../files/index.js';
import { resolveModel, retrieveModel } from '../models/index.js';
import { BASE_LEARNING_RATE, BATCH_RULE, EPOCH_RULE, RequestedHyperparameters, resolveHyperparameters } from '../train/index.js';
import { estimateJob } from '../train/estimate.js';
import type { ApiEnv } from './internal/auth.js';
import type { RouteHandler, RouteSpec, RouteTable } from './internal/routes.js';

type Schema = z.ZodType | undefined;

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
  /** `skip`: bad rows are left out and listed in `report.skipped` (file:line, reason); `error` stores nothing. */
  on_invalid: z.enum(['error', 'skip']).default('error'),
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
  /** The recipes the engine's estimate covers (default `lora`). */
  method: z.enum(['lora', 'qlora']).optional(),
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
const tokenCache = new Map<string, { maxLength: number; counts: Map<string, { all: number; trained: number | null }> }>();
const TOKEN_CACHE_ENTRIES = 200_000;
const TOKEN_CACHE_MODELS = 4;

const exampleKey = (e: ChatExample): string => JSON.stringify(e.messages.map((m) => [m.role, m.content, m.weight ?? null]));

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
        const k = exampleKey(e);
        if (!counts.has(k)) missing.set(k, e);
      }
      if (missing.size || !entry.maxLength) {
        const batch = missing.size ? [...missing.values()] : examples.slice(0, 1);
        const result = await count(batch);
        batch.forEach((x, i) => counts.set(exampleKey(x), { all: result.counts[i], trained: result.trained_counts?.[i] ?? null }));
        entry.maxLength = result.model_max_length;
      }
      const found = examples.map((e) => counts.get(exampleKey(e)) ?? { all: 0, trained: null });
      const trained = found.every((c) => c.trained !== null) ? found.map((c) => c.trained!) : null;
      return { counts: found.map((c) => c.all), trained_counts: trained, model_max_length: entry.maxLength };
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
        on_invalid: body.on_invalid,
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
      skipped_rows: result.skipped_rows,
      skipped: result.skipped.map((i) => publicIssue(i, file.filename, [filePath, dir])),
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

/** Starting the engine and loading the model, before the first step (added to the estimate's training time). */
const STARTUP_SECONDS = 15;

/**
 * The console's estimate: src/train's `estimateJob` (the same engine estimate as `weitiao estimate` and a
 * dry-run job), with each resolved hyperparameter explained and the dataset's token counts.
 */
async function estimate(ctx: Context, body: z.infer<typeof EstimateBody>, signal?: AbortSignal) {
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
  const method = body.method ?? 'lora';
  const hp = resolveHyperparameters({ n_examples: stats.examples, requested: body.hyperparameters ?? {}, method });
  const n = stats.examples;
  const isAuto = (k: 'n_epochs' | 'batch_size' | 'learning_rate_multiplier') => hp.auto.includes(k);
  const r = body.lora?.r ?? 8;
  const alpha = body.lora?.alpha ?? 16;
  const e = await estimateJob(
    ctx,
    {
      model: body.model,
      training_file: body.training_file,
      method,
      hyperparameters: { n_epochs: hp.n_epochs, batch_size: hp.batch_size, ...(body.max_seq_length ? { max_seq_length: body.max_seq_length } : {}) },
      lora: { r, alpha },
    },
    { signal },
  );

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
  const base = BASE_LEARNING_RATE[method];
  const name = method === 'qlora' ? 'QLoRA' : 'LoRA';
  const lrWhy: Explanation = isAuto('learning_rate_multiplier')
    ? [`auto: 1 × ${name}'s base rate ${base} = ${lr}`, `自动：1 × ${name} 基础学习率 ${base} = ${lr}`]
    : [`set by you: ${Number(hp.learning_rate_multiplier.toPrecision(4))} × ${base} = ${lr}`, `手动设置：${Number(hp.learning_rate_multiplier.toPrecision(4))} × ${base} = ${lr}`];
  const trainable = e.trainable_parameters >= 1e6 ? `≈ ${(e.trainable_parameters / 1e6).toFixed(1)} M` : `≈ ${Math.round(e.trainable_parameters / 1e3)} k`;
  const scale = Number((alpha / r).toPrecision(3));
  const rWhy: Explanation = [`${name} rank ${r}: ${trainable} trainable parameters`, `${name} 秩 ${r}：可训练参数 ${trainable}`];
  const alphaWhy: Explanation = [`updates are scaled by alpha / rank = ${scale}`, `更新量乘以 alpha / 秩 = ${scale}`];

  // Trained tokens as OpenAI counts them: every token of every example, once per epoch.
  const trained_tokens = stats.total_tokens * hp.n_epochs;
  const notes: string[] = [
    `Memory and time from the engine's estimate on this machine: ${e.steps_per_epoch} steps per epoch, ${e.threads} threads; validation passes are not included / 内存与时间为训练引擎在本机的预估（不含验证）`,
  ];
  if (e.n_truncated) notes.push(`${e.n_truncated} examples will be truncated to max_seq_length / ${e.n_truncated} 条样本将被截断`);
  if (stats.over_max_length) {
    notes.push(`${stats.over_max_length} examples are longer than ${stats.max_length} tokens and will fail validation / ${stats.over_max_length} 个样本超过最大长度`);
  }

  return {
    object: 'weitiao.estimate' as const,
    model: body.model,
    method,
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
    tokens_per_second: Math.round(e.tokens_per_epoch / e.time_per_epoch_seconds),
    throughput_source: 'estimate' as const,
    estimated_seconds: Math.round(STARTUP_SECONDS + e.total_seconds),
    estimated_memory_bytes: e.peak_memory_bytes,
    /** The engine's figures: the memory breakdown, time per epoch, steps. */
    estimate: e,
    notes,
  };
}

/** One line in English and one in Chinese. */
type Explanation = [en: string, zh: string];

/** A resolved value with why: `explanation` bilingual as every message, `explanation_i18n` for a UI that shows one language. */
function explained(value: number, auto: boolean, [en, zh]: Explanation) {
  return { value, auto, explanation: `${en} / ${zh}`, explanation_i18n: { en, zh } };
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

/**
 * The console's routes, declared in the API's route table (so `/openapi.json` documents them from the
 * same zod schemas and they sit behind the same key check): `extensionRoutes(routes, ctx)` in createApp.
 */
export function extensionRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const base = '/v1/weitiao';
  const tag = 'Console (weitiao)';
  // Server paths left in an error message are hidden (src/errors.ts, the policy every API error follows).
  const add = <P extends Schema = undefined, Q extends Schema = undefined, B extends Schema = undefined>(
    spec: RouteSpec<P, Q, B>,
    handler: RouteHandler<ApiEnv, P, Q, B>,
  ) =>
    routes.add(spec, async (c, input) => {
      try {
        return await handler(c, input);
      } catch (err) {
        throw err instanceof WeitiaoError ? hideErrorPaths(err, ctx.home.root) : err;
      }
    });

  add(
    {
      method: 'post',
      path: `${base}/datasets/preview`,
      operationId: 'weitiao_preview_dataset',
      summary: 'The first records of an uploaded CSV/TSV/JSONL file as chat examples, with a suggested column mapping',
      tag,
      body: PreviewBody,
      response: { description: '`weitiao.dataset_preview` (docs/WEB.md)' },
    },
    async (c, { body }) => c.json(await preview(ctx, body)),
  );
  add(
    {
      method: 'post',
      path: `${base}/datasets/validate`,
      operationId: 'weitiao_validate_dataset',
      summary: 'Validate an uploaded file as chat examples: every error and warning with its line and field',
      tag,
      body: ValidateBody,
      response: { description: '`weitiao.dataset_validation` (docs/WEB.md)' },
    },
    async (c, { body }) => c.json(await validate(ctx, body)),
  );
  add(
    {
      method: 'post',
      path: `${base}/datasets/prepare`,
      operationId: 'weitiao_prepare_dataset',
      summary: 'Map, validate and split an uploaded file into stored training and validation chat files',
      tag,
      body: PrepareBody,
      response: { description: '`weitiao.dataset_prepared` (docs/WEB.md)' },
    },
    async (c, { body }) => c.json(await prepare(ctx, body)),
  );
  add(
    {
      method: 'get',
      path: `${base}/datasets/:file_id/stats`,
      operationId: 'weitiao_dataset_stats',
      summary: 'Token and label statistics of a stored chat file',
      tag,
      params: z.object({ file_id: FileId }),
      query: StatsQuery,
      response: { description: '`weitiao.dataset_stats` (docs/WEB.md)' },
    },
    async (c, { params, query }) => {
      const { file, path: filePath } = storedFile(ctx, params.file_id);
      const stats = await datasetStats(filePath, { epochs: query.epochs }, tokenDeps(modelDir(ctx, query.model)));
      return c.json({ object: 'weitiao.dataset_stats', ...publicStats(stats, file.id) });
    },
  );
  add(
    {
      method: 'post',
      path: `${base}/estimate`,
      operationId: 'weitiao_estimate',
      summary: "What a job would do before launching it: `auto` resolved and explained, steps, tokens, and the engine's memory and time estimate",
      tag,
      body: EstimateBody,
      response: { description: '`weitiao.estimate` (docs/WEB.md)' },
    },
    // The client going away stops the engine's estimate.
    async (c, { body }) => c.json(await estimate(ctx, body, c.req.raw.signal)),
  );
  add(
    {
      method: 'post',
      path: `${base}/evaluations`,
      operationId: 'weitiao_create_evaluation',
      summary: 'Evaluate a model (or two side by side) on a stored chat file: accuracy, confusion matrix, misclassified examples',
      tag,
      body: EvaluationBody,
      response: { description: '`weitiao.evaluation_result` (docs/WEB.md)' },
    },
    // The client going away stops the engine (its signal aborts the evaluation).
    async (c, { body }) => c.json(await evaluate(ctx, body, c.req.raw.signal)),
  );
}
