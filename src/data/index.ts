/**
 * Data preparation: read a user's CSV/TSV/JSONL (UTF-8, GBK/GB18030, UTF-16), map columns to chat
 * turns, check every example, split reproducibly and write OpenAI chat fine-tuning JSONL atomically.
 *
 * ```ts
 * const result = await prepareDataset({
 *   input: 'waimai_10k.csv', output_dir: 'out',
 *   system: '你是一位外卖评论好评差评评论专家。', user: '{review}', assistant: '{label}',
 *   label_map: '1=好评,0=差评', validation: 0.3, seed: 100,
 * });
 * if (result.errors.length) process.exitCode = 3; // nothing was written
 * ```
 * Data problems never throw: they come back as `Issue`s (file, line, field, code, bilingual message),
 * all of them, so a person can fix a file in one go. Bad options throw `invalid_request`, a missing
 * file `not_found`.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { runEngine, type ChatExample } from '../engine/index.js';
import { WeitiaoError, formatLocation } from '../errors.js';
import { answerOf, charLength, checkExample, clip, DUPLICATE_CHECK_LIMIT, DuplicateFinder, problem, type Problem } from './internal/check.js';
import { DigestTable, digest64 } from './internal/digests.js';
import { ENCODINGS, resolveEncoding } from './internal/encoding.js';
import { mulberry32, permutation } from './internal/random.js';
import { assertReadable, openSource, readJsonLines, readTable, type OpenedSource } from './internal/source.js';
import { histogram, summarize } from './internal/summary.js';
import { detectShape, shapeToChat, type RecordShape } from './internal/shapes.js';
import { readParquetTable } from './internal/parquet.js';
import { readXlsxTable } from './internal/xlsx.js';
import { parseTemplate, renderTemplate, type Template } from './internal/template.js';
import { writeFilesAtomic } from './internal/atomic.js';
import { IssueList, MAX_REPORTED_ISSUES, validationCancelled } from './internal/issues.js';

export { MAX_REPORTED_ISSUES, validationCancelled } from './internal/issues.js';
/** Validation and upload checks off the event loop (worker thread), cancellable. */
export { IN_PROCESS_MAX_BYTES, runValidationTask, type ThreadTask } from './internal/thread.js';
export type { UploadCheck } from './internal/upload.js';

export { writeFileAtomic, writeFilesAtomic, type AtomicFile } from './internal/atomic.js';
export { detectEncoding } from './internal/encoding.js';
export { mulberry32 } from './internal/random.js';
/** OpenAI's preference format (DPO): `{input: {messages}, preferred_output, non_preferred_output}` per line. */
export { checkPreferencePair, validatePreferenceFile } from './internal/preference.js';
/** Readers for source files, exactly as prepare reads them (the console's preview uses them). */
export { openSource, readJsonLines, readTable, type OpenedSource, type TableRow, type JsonRow } from './internal/source.js';

// ------------------------------------------------------------------------------------------- schemas

export const Encoding = z.enum(ENCODINGS);
export const DataFormat = z.enum(['csv', 'tsv', 'jsonl']);
export type DataFormat = z.infer<typeof DataFormat>;
/** What prepare reads: the text formats and Excel workbooks (.xlsx). */
export const SourceFormat = z.enum([...DataFormat.options, 'xlsx', 'parquet']);
export type SourceFormat = z.infer<typeof SourceFormat>;

/**
 * Issue codes. Errors: data_type, missing_messages_list, message_missing_key, message_unrecognized_key,
 * unrecognized_role, missing_content, example_missing_assistant_message, invalid_weight, too_many_tokens,
 * empty_file, and for source files csv_syntax, field_count, duplicate_column, missing_field,
 * invalid_value, empty_value (when the message would be empty), unknown_label.
 * Warnings: exact_duplicate, conflicting_duplicate (an error with `conflicts: 'error'`), empty_value
 * (when the template still has text around the empty value).
 */
export const Issue = z.object({
  file: z.string(),
  /** 1-based physical line; null for whole-file problems (an empty file). */
  line: z.number().int().nullable(),
  /** The field at fault, e.g. `messages[1].role`, or a source column such as `review`. */
  field: z.string().nullable(),
  code: z.string(),
  severity: z.enum(['error', 'warning']),
  /** English, then Chinese: "unrecognized role 'bot' (allowed: …) / 无法识别的角色 'bot'". */
  message: z.string(),
});
export type Issue = z.infer<typeof Issue>;

/** Options of `prepareDataset`; the CLI and API validate their input with this schema. */
export const PrepareOptions = z.object({
  /** The source file: .csv, .tsv, .jsonl (chat format or plain records). */
  input: z.string().min(1),
  /** Where train.jsonl and validation.jsonl go (created if missing). */
  output_dir: z.string().min(1),
  /** Defaults to the extension (.csv/.tsv/.jsonl), else a look at the first line. */
  format: SourceFormat.optional(),
  /** Excel: the sheet, by name (Chinese names work) or 1-based position; default the first. */
  sheet: z.union([z.string().min(1), z.number().int().min(1)]).optional(),
  /** Excel: the row holding the column names (rows above it, such as a title, are ignored). */
  header_row: z.number().int().min(1).default(1),
  /** `auto`: BOM, else valid UTF-8, else GB18030 (what Chinese Excel writes). */
  encoding: Encoding.default('auto'),
  /** Message templates with `{column}` placeholders; user and assistant are required for CSV/TSV and record JSONL. */
  system: z.string().optional(),
  user: z.string().min(1).optional(),
  assistant: z.string().min(1).optional(),
  /** `1=好评,0=差评` (full-width ＝ and ， too) or an object; applied to the label column. */
  label_map: z.union([z.string(), z.record(z.string(), z.string())]).optional(),
  /** The column the label map applies to; defaults to the assistant template's only placeholder. */
  label_column: z.string().optional(),
  /** Fraction of examples for validation.jsonl; 0 writes train.jsonl only. */
  validation: z.number().min(0).lt(1).default(0),
  seed: z.number().int().default(42),
  /** `auto`: stratify by answer when the answers form a small label set (see detectLabelSet). */
  stratify: z.union([z.literal('auto'), z.boolean()]).default('auto'),
  /** Same prompt, different answer: a warning by default (real data has a few), or an error. */
  conflicts: z.enum(['warning', 'error']).default('warning'),
  /**
   * `error`: any bad row stops the whole file (nothing is written). `skip`: bad rows are left out and
   * listed in `skipped` with their line and reason; whole-file problems (a bad header, no valid row left)
   * still stop it.
   */
  on_invalid: z.enum(['error', 'skip']).default('error'),
  /** A base model directory: examples longer than its max length (real tokenizer) are handled by `long_examples`. */
  model_dir: z.string().optional(),
  /** Overrides the model's max length for the too_many_tokens check. */
  max_length: z.number().int().positive().optional(),
  /**
   * Examples longer than the max length, as a job's `long_examples`: `truncate` keeps them with a warning
   * (training cuts the earliest prompt tokens and keeps the answer), `skip` leaves them out (listed in
   * `skipped`), `error` stops the file.
   */
  long_examples: z.enum(['truncate', 'skip', 'error']).default('truncate'),
  /** Output file names or paths, relative to output_dir. */
  train_file: z.string().min(1).default('train.jsonl'),
  validation_file: z.string().min(1).default('validation.jsonl'),
});
export type PrepareOptions = z.input<typeof PrepareOptions>;

export const ValidateOptions = z.object({
  encoding: Encoding.default('auto'),
  model_dir: z.string().optional(),
  max_length: z.number().int().positive().optional(),
  conflicts: z.enum(['warning', 'error']).default('warning'),
});
export type ValidateOptions = z.input<typeof ValidateOptions>;

export const StatsOptions = z.object({
  encoding: Encoding.default('auto'),
  /** Count with this base model's tokenizer; without it, lengths are in characters. */
  model_dir: z.string().optional(),
  max_length: z.number().int().positive().optional(),
  /** For the estimate of trained tokens (OpenAI bills tokens × epochs). */
  epochs: z.number().int().positive().default(1),
  /** About this many histogram bins. */
  bins: z.number().int().min(1).max(200).default(20),
});
export type StatsOptions = z.input<typeof StatsOptions>;

const SplitPart = z.object({
  file: z.string(),
  examples: z.number().int(),
  /** Examples per answer, when the answers form a label set. */
  label_counts: z.record(z.string(), z.number().int()).nullable(),
});

export const PrepareResult = z.object({
  input: z.string(),
  format: SourceFormat,
  encoding: z.string(),
  /** `chat` for chat-format JSONL; `columns` when templates mapped records; `alpaca`/`sharegpt` for those record shapes, mapped to chat messages. */
  mode: z.enum(['chat', 'columns', 'alpaca', 'sharegpt']),
  /** Source records read (header excluded). */
  rows: z.number().int(),
  /** Examples produced (rows without errors). */
  examples: z.number().int(),
  /** With `on_invalid: 'skip'`: the rows left out, how many, and every reason (file:line, field, code). */
  skipped_rows: z.number().int(),
  skipped: z.array(Issue),
  label_set: z.array(z.string()).nullable(),
  stratified: z.boolean(),
  seed: z.number().int(),
  validation_fraction: z.number(),
  /** False when there were errors: then nothing was written. */
  written: z.boolean(),
  train: SplitPart.nullable(),
  validation: SplitPart.nullable(),
  errors: z.array(Issue),
  warnings: z.array(Issue),
});
export type PrepareResult = z.infer<typeof PrepareResult>;

export const ValidationReport = z.object({
  file: z.string(),
  encoding: z.string(),
  /** Non-blank lines. */
  examples: z.number().int(),
  /** Examples without errors. */
  valid_examples: z.number().int(),
  errors: z.array(Issue),
  warnings: z.array(Issue),
  label_set: z.array(z.string()).nullable(),
  /** All errors and warnings found; `errors`/`warnings` list the first MAX_REPORTED_ISSUES of each. */
  error_count: z.number().int().optional(),
  warning_count: z.number().int().optional(),
  /** With a tokenizer: one count per valid example, in file order (one per line when there are no errors); left out past MAX_TOKEN_COUNTS examples. */
  token_counts: z.array(z.number().int()).optional(),
  max_length: z.number().int().optional(),
});
export type ValidationReport = z.infer<typeof ValidationReport>;

const Summary = z.object({ min: z.number(), mean: z.number(), p50: z.number(), p95: z.number(), max: z.number() });

export const DatasetStats = z.object({
  file: z.string(),
  encoding: z.string(),
  /** Valid examples, the ones every figure below is about. */
  examples: z.number().int(),
  /** Lines skipped because of errors (run validate for the details). */
  invalid_examples: z.number().int(),
  /** `tokens` with the base model's tokenizer (model_dir), else `characters` (Unicode code points, no template). */
  token_unit: z.enum(['tokens', 'characters']),
  messages_per_example: Summary.nullable(),
  tokens_per_example: Summary.nullable(),
  /** What the loss is on: with a tokenizer, every trained assistant turn + its end-of-turn token (null if the template cannot be split); else the final answer's characters. */
  assistant_tokens_per_example: Summary.nullable(),
  total_tokens: z.number().int(),
  total_assistant_tokens: z.number().int(),
  epochs: z.number().int(),
  /** total_tokens × epochs. */
  estimated_trained_tokens: z.number().int(),
  estimated_trained_assistant_tokens: z.number().int(),
  label_set: z.array(z.string()).nullable(),
  distinct_answers: z.number().int(),
  /** Per answer, when the answers form a label set; largest first. */
  answer_distribution: z.array(z.object({ answer: z.string(), count: z.number().int(), share: z.number() })).nullable(),
  histogram: z.object({
    unit: z.enum(['tokens', 'characters']),
    bin_width: z.number(),
    bins: z.array(z.object({ start: z.number(), end: z.number(), count: z.number().int() })),
  }),
  /** With a tokenizer: the max length used and how many examples exceed it. */
  max_length: z.number().int().optional(),
  over_max_length: z.number().int().optional(),
});
export type DatasetStats = z.infer<typeof DatasetStats>;

/** Counts tokens of chat examples with a real tokenizer (chat template applied). Injectable for tests. */
export type TokenCounter = (examples: ChatExample[], options?: { signal?: AbortSignal }) => Promise<TokenCounts>;

/** Per example: all tokens, and the trained ones (assistant answers + end-of-turn; null if unknown). */
export interface TokenCounts {
  counts: number[];
  trained_counts: number[] | null;
  model_max_length: number;
}

export interface DataDeps {
  /** Replaces the engine-backed counter (normally built from `model_dir`). */
  countTokens?: TokenCounter;
  /** Stops reading (and any token count under way): the call rejects with `cancelled`. */
  signal?: AbortSignal;
}

/** Valid examples whose token counts a report lists; past this the list is left out (the checks still run). */
export const MAX_TOKEN_COUNTS = 1_000_000;
/** Valid examples (or ~8 MB of their text) sent to the tokenizer at a time, so a file is never held whole. */
const TOKEN_BATCH_EXAMPLES = 20_000;
const TOKEN_BATCH_CHARS = 8 * 1024 * 1024;

/** The base model's tokenizer, through the engine's `count-tokens` command (one process per call). */
export function engineTokenCounter(modelDir: string): TokenCounter {
  return (examples, options) => runEngine('count-tokens', { model: modelDir, examples }, { signal: options?.signal, killAfterMs: 500 });
}

// ------------------------------------------------------------------------------------------- helpers

/**
 * Parses `1=好评,0=差评` into `{ "1": "好评", "0": "差评" }`. Half- and full-width `=`/`＝` and
 * `,`/`，` both work; spaces around keys and values are dropped. Labels cannot contain a comma.
 */
export function parseLabelMap(text: string): Record<string, string> {
  const map: Record<string, string> = {};
  for (const raw of text.split(/[,，]/)) {
    const entry = raw.trim();
    if (!entry) continue;
    const eq = entry.search(/[=＝]/);
    const key = eq < 0 ? '' : entry.slice(0, eq).trim();
    const value = eq < 0 ? '' : entry.slice(eq + 1).trim();
    if (!key || !value) {
      throw new WeitiaoError('invalid_request', `label map entry '${entry}' is not key=label (e.g. 1=好评,0=差评) / 标签映射项 '${entry}' 格式应为 键=标签`, {
        param: 'label_map',
      });
    }
    if (Object.hasOwn(map, key)) {
      throw new WeitiaoError('invalid_request', `label map has '${key}' twice / 标签映射中 '${key}' 重复`, { param: 'label_map' });
    }
    map[key] = value;
  }
  if (Object.keys(map).length === 0) {
    throw new WeitiaoError('invalid_request', 'label map is empty (e.g. 1=好评,0=差评) / 标签映射为空', { param: 'label_map' });
  }
  return map;
}

/** Limits of detectLabelSet, exported so documentation and tests quote the same numbers. */
export const LABEL_SET_RULE = { max_labels: 20, max_label_chars: 20, max_share_of_examples: 0.05 } as const;

/**
 * The answers' label set, or null when they look like free text. A label set has 2 to 20 distinct
 * answers, each 1–20 characters on one line, and no more distinct answers than 5 % of the examples
 * (at least 2 are always allowed), so every label repeats on average at least 20 times in a large file.
 * Labels come sorted (code-point order), the same however the file is ordered or split.
 */
export function detectLabelSet(answers: readonly string[]): string[] | null {
  const detector = new LabelSetDetector();
  for (const a of answers) detector.add(a);
  return detector.result();
}

/** detectLabelSet over a stream of answers, in bounded memory: it keeps at most 21 distinct answers and a count. */
export class LabelSetDetector {
  private readonly distinct = new Set<string>();
  private possible = true;
  private n = 0;

  add(answer: string): void {
    this.n++;
    if (!this.possible) return;
    const chars = charLength(answer);
    if (chars < 1 || chars > LABEL_SET_RULE.max_label_chars || /[\r\n]/.test(answer) || answer.trim() === '') return this.giveUp();
    this.distinct.add(answer);
    if (this.distinct.size > LABEL_SET_RULE.max_labels) this.giveUp();
  }

  result(): string[] | null {
    const allowed = Math.max(2, Math.floor(this.n * LABEL_SET_RULE.max_share_of_examples));
    if (!this.possible || this.distinct.size < 2 || this.distinct.size > allowed) return null;
    return [...this.distinct].sort();
  }

  private giveUp(): void {
    this.possible = false;
    this.distinct.clear();
  }
}

/**
 * A reproducible train/validation split: one seeded permutation (mulberry32 + Fisher–Yates, so the same
 * seed gives the same split on any machine); both parts keep the permutation's order, which mixes
 * classes even when the source is sorted by label. Validation gets round(n × fraction) examples (at
 * least 1 and at most n − 1 when the fraction is above 0 and n ≥ 2). Stratified, each answer gives
 * floor or ceil of count × fraction (largest remainders first, ties to the answer met first in the
 * permutation), so every answer is within one example of its exact share.
 */
export function splitExamples(
  answers: readonly string[],
  options: { validation: number; seed: number; stratify: boolean },
): { train: number[]; validation: number[] } {
  const n = answers.length;
  const order = permutation(n, mulberry32(options.seed));
  if (options.validation <= 0 || n < 2) return { train: order, validation: [] };
  const k = Math.min(n - 1, Math.max(1, Math.round(n * options.validation)));
  const keyOf = (i: number) => (options.stratify ? answers[i] : '');

  // Classes in order of first appearance in the permutation, with their sizes.
  const counts = new Map<string, number>();
  for (const i of order) counts.set(keyOf(i), (counts.get(keyOf(i)) ?? 0) + 1);
  const quota = new Map<string, number>();
  const remainders: { key: string; rem: number; rank: number }[] = [];
  let assigned = 0;
  let rank = 0;
  for (const [key, count] of counts) {
    const exact = count * options.validation;
    quota.set(key, Math.floor(exact));
    assigned += Math.floor(exact);
    remainders.push({ key, rem: exact - Math.floor(exact), rank: rank++ });
  }
  remainders.sort((a, b) => b.rem - a.rem || a.rank - b.rank);
  for (let j = 0; assigned < k && j < remainders.length; j++, assigned++) quota.set(remainders[j].key, quota.get(remainders[j].key)! + 1);

  const train: number[] = [];
  const validation: number[] = [];
  for (const i of order) {
    const left = quota.get(keyOf(i))!;
    if (left > 0) {
      quota.set(keyOf(i), left - 1);
      validation.push(i);
    } else {
      train.push(i);
    }
  }
  return { train, validation };
}

/** `file:line: field: severity: message [code]`, the one-line form every shell prints. */
export function formatIssue(issue: Issue): string {
  const where = formatLocation(issue.file, issue.line ?? undefined, issue.field ?? undefined);
  return `${where}: ${issue.severity}: ${issue.message} [${issue.code}]`;
}

/**
 * The first error of a report as a WeitiaoError (`invalid_file`, with file, line and field), or null
 * when there is none: what a job or command fails with after validating its files.
 */
export function reportError(report: { errors: Issue[]; error_count?: number }): WeitiaoError | null {
  const first = report.errors[0];
  if (!first) return null;
  const rest = (report.error_count ?? report.errors.length) - 1;
  const more = rest > 0 ? ` (and ${rest} more error(s) / 另有 ${rest} 个错误)` : '';
  return new WeitiaoError('invalid_file', `${formatIssue(first)}${more}`, {
    file: first.file,
    line: first.line ?? undefined,
    param: first.field ?? undefined,
  });
}

function parseOptions<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  const first = parsed.error.issues[0];
  throw new WeitiaoError('invalid_request', `invalid options: ${z.prettifyError(parsed.error)}`, { param: first?.path.join('.') });
}

interface Located {
  line: number;
  example: ChatExample;
}

function tokenCounter(options: { model_dir?: string }, deps: DataDeps): TokenCounter | null {
  return deps.countTokens ?? (options.model_dir ? engineTokenCounter(options.model_dir) : null);
}

async function countTokens(counter: TokenCounter, examples: ChatExample[], signal?: AbortSignal): Promise<TokenCounts> {
  if (examples.length === 0) return { counts: [], trained_counts: [], model_max_length: 0 };
  const result = await counter(examples, signal ? { signal } : undefined);
  for (const counts of [result.counts, result.trained_counts ?? examples]) {
    if (counts.length !== examples.length) {
      throw new WeitiaoError('engine_error', `token counter returned ${counts.length} counts for ${examples.length} examples`);
    }
  }
  return result;
}

/**
 * Adds `too_many_tokens` issues: errors (`error`, and `skip`, whose rows the caller leaves out), or with
 * `truncate` warnings, since training then cuts the earliest prompt tokens and keeps the answer whole.
 */
async function checkLengths(
  items: Located[],
  counter: TokenCounter,
  maxLength: number | undefined,
  issues: IssueList,
  signal?: AbortSignal,
  long: 'truncate' | 'skip' | 'error' = 'error',
): Promise<{ counts: number[]; max_length: number }> {
  const { counts, model_max_length } = await countTokens(counter, items.map((i) => i.example), signal);
  const max = maxLength ?? model_max_length;
  counts.forEach((n, i) => {
    if (n > max) {
      const what = `example has ${n} tokens, more than the maximum length ${max}`;
      const zh = `样本有 ${n} 个 token，超过最大长度 ${max}`;
      issues.add(
        items[i].line,
        long === 'truncate'
          ? problem('too_many_tokens', 'messages', `${what}; training will cut the earliest prompt tokens and keep the answer / ${zh}，训练时将截去最早的提示、保留回答`, 'warning')
          : problem('too_many_tokens', 'messages', `${what} / ${zh}`),
      );
    }
  });
  return { counts, max_length: max };
}

function labelCounts(answers: string[], labelSet: string[] | null): Record<string, number> | null {
  if (!labelSet) return null;
  const counts: Record<string, number> = Object.fromEntries(labelSet.map((l) => [l, 0]));
  for (const a of answers) counts[a] = (counts[a] ?? 0) + 1;
  return counts;
}

// ------------------------------------------------------------------------------------------- mapping

interface Mapper {
  /** The columns templates read, for the record JSONL per-row check. */
  columns: string[];
  map(get: (column: string) => { value: string } | { problem: Problem }): { example: ChatExample | null; problems: Problem[] };
}

/** The templates and label map as one function from a record's columns to a chat example (also the console's preview). */
export function makeMapper(options: z.infer<typeof PrepareOptions>, available: string[], where: string): Mapper {
  for (const param of ['user', 'assistant'] as const) {
    if (options[param] === undefined) {
      throw new WeitiaoError(
        'invalid_request',
        `a ${param} template is required to turn ${where} into chat examples, e.g. user "{review}", assistant "{label}" / 需要 ${param} 模板`,
        { param },
      );
    }
  }
  const templates: { role: 'system' | 'user' | 'assistant'; template: Template }[] = [];
  for (const role of ['system', 'user', 'assistant'] as const) {
    const source = options[role];
    if (source === undefined || (role === 'system' && source === '')) continue;
    templates.push({ role, template: parseTemplate(source, role) });
  }
  const list = available.map((c) => `'${c}'`).join(', ');
  for (const { role, template } of templates) {
    for (const column of template.columns) {
      if (!available.includes(column)) {
        throw new WeitiaoError(
          'invalid_request',
          `${role} template uses column '${column}', which ${where} does not have; available columns: ${list} / ` +
            `${role} 模板中的列 '${column}' 不存在，可用的列：${list}`,
          { param: role },
        );
      }
    }
  }

  const assistant = templates.find((t) => t.role === 'assistant')!.template;
  const labelMap = options.label_map === undefined ? null : typeof options.label_map === 'string' ? parseLabelMap(options.label_map) : options.label_map;
  let labelColumn: string | null = null;
  if (options.label_column !== undefined) {
    if (!available.includes(options.label_column)) {
      throw new WeitiaoError('invalid_request', `label column '${options.label_column}' is not in ${where}; available columns: ${list} / 标签列不存在`, {
        param: 'label_column',
      });
    }
    labelColumn = options.label_column;
  } else if (labelMap) {
    if (assistant.columns.length !== 1) {
      throw new WeitiaoError(
        'invalid_request',
        `the assistant template has ${assistant.columns.length} placeholders; name the one the label map applies to with label_column / 请用 label_column 指定标签列`,
        { param: 'label_column' },
      );
    }
    labelColumn = assistant.columns[0];
  }
  const labelKeys = labelMap ? Object.keys(labelMap).map((k) => `'${k}'`).join(', ') : '';
  const columns = [...new Set(templates.flatMap((t) => t.template.columns))];

  return {
    columns,
    map(get) {
      const problems: Problem[] = [];
      const values = new Map<string, string>();
      for (const column of columns) {
        const got = get(column);
        if ('problem' in got) {
          problems.push(got.problem);
          continue;
        }
        let value = got.value;
        if (column === labelColumn && labelMap) {
          const key = value.trim();
          if (!Object.hasOwn(labelMap, key)) {
            problems.push(
              problem('unknown_label', column, `value '${clip(value)}' is not in the label map (${labelKeys}) / 值 '${clip(value)}' 不在标签映射中`),
            );
            continue;
          }
          value = labelMap[key];
        }
        values.set(column, value);
      }
      if (problems.length) return { example: null, problems };

      const messages: ChatExample['messages'] = [];
      for (const { role, template } of templates) {
        const content = renderTemplate(template, (c) => values.get(c)!);
        const empty = template.columns.filter((c) => values.get(c)!.trim() === '');
        // An empty value is fatal when the whole message ends up empty, else worth a warning.
        const severity = content.trim() === '' ? 'error' : 'warning';
        for (const c of empty) {
          problems.push(problem('empty_value', c, `column '${c}' is empty${severity === 'error' ? `, so the ${role} message would be empty` : ''} / 列 '${c}' 为空`, severity));
        }
        messages.push({ role, content });
      }
      if (problems.some((p) => p.severity === 'error')) return { example: null, problems };
      // The same structural checks a chat file gets, so prepare can never write what validate rejects.
      const checked = checkExample({ messages });
      return { example: checked.example, problems: [...problems, ...checked.problems] };
    },
  };
}

export function jsonValue(record: Record<string, unknown>, column: string): { value: string } | { problem: Problem } {
  if (!Object.hasOwn(record, column)) return { problem: problem('missing_field', column, `record has no '${column}' field / 记录缺少 '${column}' 字段`) };
  const v = record[column];
  if (typeof v === 'string') return { value: v };
  if (typeof v === 'number' || typeof v === 'boolean') return { value: String(v) };
  if (v === null) return { value: '' };
  return {
    problem: problem('invalid_value', column, `field '${column}' is ${Array.isArray(v) ? 'an array' : 'an object'}; templates take text, numbers or booleans / 字段 '${column}' 不是文本`),
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ------------------------------------------------------------------------------------------- services

/**
 * Turns a CSV/TSV/JSONL file into train.jsonl (and validation.jsonl) in OpenAI's chat format. Every
 * problem is reported at its source line; when there is any error nothing is written. Output is UTF-8
 * without BOM, Chinese unescaped, one `{"messages":[…]}` per line; both files are written atomically.
 */
export async function prepareDataset(input: PrepareOptions, deps: DataDeps = {}): Promise<PrepareResult> {
  const options = parseOptions(PrepareOptions, input);
  const file = options.input;
  await assertReadable(file, 'input');
  const binary = options.format === 'xlsx' || options.format === 'parquet' ? options.format : options.format === undefined ? /\.(xlsx|parquet)$/i.exec(file)?.[1].toLowerCase() : undefined;
  const source: { format: SourceFormat; encoding: string } = binary
    ? { format: binary as 'xlsx' | 'parquet', encoding: binary }
    : await openSource(file, options.format as Exclude<DataFormat, 'xlsx'> | undefined, options.encoding);
  const issues = new IssueList(file);
  const duplicates = new DuplicateFinder(options.conflicts);
  /** The object written per example: the mapped example, or a chat line as it was (keeping e.g. `name`). */
  let items: (Located & { output: unknown })[] = [];
  let rows = 0;
  /** Problems on this line are the file's, not a row's: `skip` cannot leave them out. */
  let headerLine: number | null = null;
  let mode: PrepareResult['mode'] = 'columns';

  const accept = (line: number, example: ChatExample, output: unknown) => {
    const dup = duplicates.check(example, line);
    if (dup) issues.add(line, dup);
    items.push({ line, example, output });
  };

  if (source.format === 'jsonl') {
    const hasTemplates = options.user !== undefined || options.assistant !== undefined || options.system !== undefined;
    let decided = false;
    let mapper: Mapper | null = null;
    let shape: RecordShape | null = null;
    for await (const row of readJsonLines(file, (source as OpenedSource).encoding)) {
      rows++;
      if (row.problem) {
        issues.add(row.line, row.problem);
        continue;
      }
      const value = row.value;
      if (!decided && isObject(value)) {
        decided = true;
        shape = hasTemplates ? null : detectShape(value);
        mode = shape ?? (Object.hasOwn(value, 'messages') && !hasTemplates ? 'chat' : 'columns');
        if (shape && options.label_map !== undefined) {
          throw new WeitiaoError('invalid_request', `a label map applies to CSV/TSV and plain-record JSONL, not ${shape} records / ${shape} 格式不使用标签映射`, {
            param: 'label_map',
          });
        }
        if (Object.hasOwn(value, 'messages') && hasTemplates) {
          throw new WeitiaoError(
            'invalid_request',
            `${file} is already in chat format ("messages" on line ${row.line}); templates apply to CSV/TSV and plain-record JSONL / 文件已是对话格式，无需模板`,
            { param: options.user !== undefined ? 'user' : options.assistant !== undefined ? 'assistant' : 'system', file, line: row.line },
          );
        }
        if (mode === 'columns') mapper = makeMapper(options, Object.keys(value), `${file} (keys of the record on line ${row.line})`);
      }
      if (shape) {
        // Alpaca/ShareGPT: mapped to messages, then the checks every chat example gets.
        const mapped = shapeToChat(shape, value);
        if ('problems' in mapped) {
          mapped.problems.forEach((p) => issues.add(row.line, p));
          continue;
        }
        const { example, problems } = checkExample(mapped.value);
        problems.forEach((p) => issues.add(row.line, p));
        if (example) accept(row.line, example, example);
      } else if (mapper) {
        if (!isObject(value)) {
          issues.add(row.line, problem('data_type', null, 'record is not a JSON object / 记录不是 JSON 对象'));
          continue;
        }
        const { example, problems } = mapper.map((c) => jsonValue(value, c));
        problems.forEach((p) => issues.add(row.line, p));
        if (example) accept(row.line, example, example);
      } else {
        mode = 'chat';
        if (options.label_map !== undefined) {
          throw new WeitiaoError('invalid_request', 'a label map applies to CSV/TSV and plain-record JSONL, not chat files / 对话格式文件不使用标签映射', {
            param: 'label_map',
          });
        }
        const { example, problems } = checkExample(value);
        problems.forEach((p) => issues.add(row.line, p));
        if (example) accept(row.line, example, value);
      }
    }
  } else {
    const table =
      source.format === 'xlsx'
        ? await readXlsxTable(file, { sheet: options.sheet, header_row: options.header_row })
        : source.format === 'parquet'
          ? await readParquetTable(file)
          : await readTable(file, source as OpenedSource);
    if (table.header) {
      headerLine = table.header.line;
      table.header.problems.forEach((p) => issues.add(table.header!.line, p));
      const mapper = makeMapper(options, table.header.columns, `the header of ${file}`);
      if (table.header.problems.length === 0) {
        for await (const row of table.rows) {
          rows++;
          if (row.problems.length) {
            row.problems.forEach((p) => issues.add(row.line, p));
            continue;
          }
          const { example, problems } = mapper.map((c) => ({ value: row.values[c] }));
          problems.forEach((p) => issues.add(row.line, p));
          if (example) accept(row.line, example, example);
        }
      }
    }
  }
  if (rows === 0 && issues.errors.length === 0) {
    issues.add(null, problem('empty_file', null, `${file} has no ${source.format === 'jsonl' ? 'lines' : 'rows'} / 文件中没有数据`));
  }

  const counter = tokenCounter(options, deps);
  if (counter && items.length) await checkLengths(items, counter, options.max_length, issues, undefined, options.long_examples);

  let { errors, warnings } = issues.sorted();
  let skipped: Issue[] = [];
  let skippedRows = 0;
  const tooLong = (e: Issue) => e.code === 'too_many_tokens';
  const skippable = (e: Issue) =>
    tooLong(e) ? options.long_examples === 'skip' || (options.on_invalid === 'skip' && options.long_examples !== 'error') : options.on_invalid === 'skip' && e.line !== null && e.line !== headerLine;
  if (errors.some(skippable)) {
    skipped = errors.filter(skippable);
    errors = errors.filter((e) => !skippable(e));
    const badLines = new Set(skipped.map((e) => e.line));
    skippedRows = badLines.size;
    if (errors.length === 0) {
      // A row is one example: any error on its line leaves the whole row out (a conflicting duplicate too).
      items = items.filter((i) => !badLines.has(i.line));
      if (items.length === 0) {
        errors = [
          { file, line: null, field: null, code: 'empty_file', severity: 'error',
            message: `no valid rows left after skipping ${skippedRows} / 跳过 ${skippedRows} 行后没有有效数据` }, // prettier-ignore
        ];
      }
    }
  }
  const answers = items.map((i) => answerOf(i.example));
  const labelSet = detectLabelSet(answers);
  const stratified = options.stratify === 'auto' ? labelSet !== null : options.stratify;
  const result: PrepareResult = {
    input: file,
    format: source.format,
    encoding: source.encoding,
    mode,
    rows,
    examples: items.length,
    skipped_rows: skippedRows,
    skipped,
    label_set: labelSet,
    stratified,
    seed: options.seed,
    validation_fraction: options.validation,
    written: false,
    train: null,
    validation: null,
    errors,
    warnings,
  };
  if (errors.length) return result;

  const split = splitExamples(answers, { validation: options.validation, seed: options.seed, stratify: stratified });
  const trainPath = path.resolve(options.output_dir, options.train_file);
  const validationPath = path.resolve(options.output_dir, options.validation_file);
  const lines = (indices: number[]) => indices.map((i) => JSON.stringify(items[i].output) + '\n');
  const files = [{ path: trainPath, chunks: lines(split.train) }];
  if (split.validation.length) files.push({ path: validationPath, chunks: lines(split.validation) });
  try {
    await mkdir(path.resolve(options.output_dir), { recursive: true });
    await writeFilesAtomic(files);
  } catch (err) {
    throw new WeitiaoError('internal_error', `cannot write the prepared files: ${err instanceof Error ? err.message : String(err)} / 无法写入文件`, {
      cause: err,
      file: (err as { path?: string }).path,
    });
  }
  const part = (file: string, indices: number[]) => ({
    file,
    examples: indices.length,
    label_counts: labelCounts(
      indices.map((i) => answers[i]),
      labelSet,
    ),
  });
  result.written = true;
  result.train = part(trainPath, split.train);
  result.validation = split.validation.length ? part(validationPath, split.validation) : null;
  return result;
}

/**
 * Checks a chat-format JSONL file and reports every problem (OpenAI cookbook categories, weights,
 * duplicates, conflicting answers, and with a model the token length). Errors mean the file must not be
 * trained on; warnings are for a person to look at.
 */
export async function validateChatFile(file: string, options: ValidateOptions = {}, deps: DataDeps = {}): Promise<ValidationReport> {
  const opts = parseOptions(ValidateOptions, options);
  const { signal } = deps;
  await assertReadable(file, 'file');
  const encoding = await resolveEncoding(file, opts.encoding);
  const issues = new IssueList(file, MAX_REPORTED_ISSUES);
  const duplicates = new DuplicateFinder(opts.conflicts);
  const labels = new LabelSetDetector();
  const counter = tokenCounter(opts, deps);
  let tokenCounts: number[] | null = counter ? [] : null;
  let maxLength: number | undefined;
  let examples = 0;
  let valid = 0;

  // Valid examples wait here for the tokenizer, a batch at a time: never the whole file.
  let batch: Located[] = [];
  let batchChars = 0;
  const countBatch = async () => {
    if (!counter || batch.length === 0) return;
    const { counts, max_length } = await checkLengths(batch, counter, opts.max_length, issues, signal);
    maxLength = max_length;
    if (tokenCounts && tokenCounts.length + counts.length <= MAX_TOKEN_COUNTS) for (const n of counts) tokenCounts.push(n);
    else tokenCounts = null;
    batch = [];
    batchChars = 0;
  };

  for await (const row of readJsonLines(file, encoding)) {
    if (signal?.aborted) throw validationCancelled(file);
    examples++;
    if (row.problem) {
      issues.add(row.line, row.problem);
      continue;
    }
    const { example, problems } = checkExample(row.value);
    problems.forEach((p) => issues.add(row.line, p));
    if (!example) continue;
    const dup = duplicates.check(example, row.line);
    if (dup) issues.add(row.line, dup);
    labels.add(answerOf(example));
    valid++;
    if (counter) {
      batch.push({ line: row.line, example });
      for (const m of example.messages) batchChars += m.content.length;
      if (batch.length >= TOKEN_BATCH_EXAMPLES || batchChars >= TOKEN_BATCH_CHARS) await countBatch();
    }
  }
  await countBatch();
  if (signal?.aborted) throw validationCancelled(file);
  if (examples === 0) issues.add(null, problem('empty_file', null, `${file} has no examples / 文件中没有样本`));

  const report: ValidationReport = {
    file,
    encoding,
    examples,
    valid_examples: valid,
    errors: [],
    warnings: [],
    label_set: labels.result(),
  };
  if (counter && valid) {
    if (tokenCounts) report.token_counts = tokenCounts;
    report.max_length = maxLength;
  }
  Object.assign(report, issues.sorted(), { error_count: issues.errorCount, warning_count: issues.warningCount });
  return report;
}

/**
 * Figures about a chat-format JSONL file: sizes, lengths (real tokens with model_dir, else characters),
 * answer distribution, the trained-token estimate for some epochs and a length histogram. Lines with
 * errors are skipped and counted in `invalid_examples`.
 */
export async function datasetStats(file: string, options: StatsOptions = {}, deps: DataDeps = {}): Promise<DatasetStats> {
  const opts = parseOptions(StatsOptions, options);
  const { signal } = deps;
  await assertReadable(file, 'file');
  const encoding = await resolveEncoding(file, opts.encoding);
  const counter = tokenCounter(opts, deps);
  // Three numbers per valid example (for exact percentiles) and the answers' label set: never the examples.
  const sizes: number[] = [];
  let assistantSizes: number[] | null = [];
  const messageCounts: number[] = [];
  const labels = new LabelSetDetector();
  const answerCounts = new Map<string, number>(); // while the answers may still be a label set
  const distinctAnswers = new DigestTable(DUPLICATE_CHECK_LIMIT, 1);
  let maxLength: number | undefined;
  let invalid = 0;

  let batch: ChatExample[] = [];
  let batchChars = 0;
  const countBatch = async () => {
    if (!counter || batch.length === 0) return;
    // Trained tokens are the ones training labels (every assistant turn + its end-of-turn token), not
    // the template's role headers around them.
    const { counts, trained_counts, model_max_length } = await countTokens(counter, batch, signal);
    for (const n of counts) sizes.push(n);
    if (trained_counts && assistantSizes) for (const n of trained_counts) assistantSizes.push(n);
    else assistantSizes = null;
    maxLength = opts.max_length ?? model_max_length;
    batch = [];
    batchChars = 0;
  };

  for await (const row of readJsonLines(file, encoding)) {
    if (signal?.aborted) throw validationCancelled(file);
    const example = row.problem ? null : checkExample(row.value).example;
    if (!example) {
      invalid++;
      continue;
    }
    const answer = answerOf(example);
    labels.add(answer);
    if (answerCounts.size <= LABEL_SET_RULE.max_labels || answerCounts.has(answer)) answerCounts.set(answer, (answerCounts.get(answer) ?? 0) + 1);
    distinctAnswers.add(digest64(answer), 0, 0);
    messageCounts.push(example.messages.length);
    if (counter) {
      batch.push(example);
      for (const m of example.messages) batchChars += m.content.length;
      if (batch.length >= TOKEN_BATCH_EXAMPLES || batchChars >= TOKEN_BATCH_CHARS) await countBatch();
    } else {
      sizes.push(example.messages.reduce((n, m) => n + charLength(m.content), 0));
      assistantSizes!.push(charLength(answer));
    }
  }
  await countBatch();

  const n = messageCounts.length;
  const unit: 'tokens' | 'characters' = counter && n > 0 ? 'tokens' : 'characters';
  const labelSet = labels.result();
  const counts = labelSet ? Object.fromEntries(labelSet.map((l) => [l, answerCounts.get(l) ?? 0])) : null;
  const sum = (xs: number[]) => xs.reduce((s, x) => s + x, 0);
  const total = sum(sizes);
  const totalAssistant = assistantSizes ? sum(assistantSizes) : 0;
  const hist = histogram(sizes, opts.bins);
  const stats: DatasetStats = {
    file,
    encoding,
    examples: n,
    invalid_examples: invalid,
    token_unit: unit,
    messages_per_example: summarize(messageCounts),
    tokens_per_example: summarize(sizes),
    assistant_tokens_per_example: assistantSizes ? summarize(assistantSizes) : null,
    total_tokens: total,
    total_assistant_tokens: totalAssistant,
    epochs: opts.epochs,
    estimated_trained_tokens: total * opts.epochs,
    estimated_trained_assistant_tokens: totalAssistant * opts.epochs,
    label_set: labelSet,
    /** Exact up to DUPLICATE_CHECK_LIMIT distinct answers (the set's bound). */
    distinct_answers: distinctAnswers.size,
    answer_distribution: counts
      ? Object.entries(counts)
          .map(([answer, count]) => ({ answer, count, share: count / n }))
          .sort((a, b) => b.count - a.count || (a.answer < b.answer ? -1 : 1))
      : null,
    histogram: { unit, ...hist },
  };
  if (maxLength !== undefined) {
    stats.max_length = maxLength;
    stats.over_max_length = sizes.filter((s) => s > maxLength!).length;
  }
  return stats;
}
