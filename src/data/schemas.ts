/** The data domain's schemas and types: options, results, reports and the token-counter seam. */
import { z } from 'zod';
import type { ChatExample } from '../engine/index.js';
import { parseOrThrow } from '../errors.js';
import { ENCODINGS } from './internal/encoding.js';

export const Encoding = z.enum(ENCODINGS);
export const DataFormat = z.enum(['csv', 'tsv', 'jsonl']);
export type DataFormat = z.infer<typeof DataFormat>;
/** What prepare reads: the text formats and Excel workbooks (.xlsx). */
export const SourceFormat = z.enum([...DataFormat.options, 'xlsx', 'parquet', 'arrow']);
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
  /** Leave out examples whose prompt is a near duplicate of a kept one's (listed in `skipped`, naming the line kept). */
  dedupe: z.boolean().default(false),
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

/** Parses service options with a schema; bad input throws `invalid_request` naming the first bad field. */
export function parseOptions<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  return parseOrThrow(schema, input, { where: { en: 'options', zh: '选项' } });
}
