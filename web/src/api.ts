/**
 * The console's only way to the server: `/v1` (OpenAI-shaped) and `/v1/weitiao` (the console's extension
 * routes), with the API key from localStorage. Every failure becomes an ApiError whose message is readable
 * (the server's `error.message`, or a one-line description), never a stack trace or an HTML page.
 */

const KEY_STORAGE = 'weitiao.apiKey';
/** Ordinary requests give up after this long, so no spinner can turn forever. */
const DEFAULT_TIMEOUT_MS = 60_000;

export const getKey = (): string => localStorage.getItem(KEY_STORAGE) ?? '';
export const setKey = (key: string): void => localStorage.setItem(KEY_STORAGE, key);
export const clearKey = (): void => localStorage.removeItem(KEY_STORAGE);

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Listeners told when the server rejects the key (the app then shows the sign-in page). */
const unauthorizedListeners = new Set<() => void>();
export function onUnauthorized(listener: () => void): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

export interface RequestOptions {
  method?: string;
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as multipart/form-data (uploads). */
  form?: FormData;
  signal?: AbortSignal;
  timeoutMs?: number;
  /** Query parameters; undefined values are left out. */
  query?: Record<string, string | number | boolean | undefined>;
}

/** Turns any failed response into an ApiError carrying the server's `error.message` when there is one. */
async function errorFrom(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown; code?: unknown; param?: unknown } | string };
    const err = body.error;
    if (typeof err === 'string') return new ApiError(err, res.status);
    if (err && typeof err.message === 'string' && err.message) {
      return new ApiError(
        err.message,
        res.status,
        typeof err.code === 'string' ? err.code : null,
        typeof err.param === 'string' ? err.param : null,
      );
    }
  } catch {
    // Not JSON (a proxy's HTML page, a plain-text trace): never show it, describe the status instead.
  }
  return new ApiError(`HTTP ${res.status} ${res.statusText || 'error'}`.trim(), res.status);
}

/** Sends a request with the key and a time limit; resolves with the response once it is known to be OK. */
export async function send(path: string, options: RequestOptions = {}): Promise<Response> {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(options.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));

  const headers: Record<string, string> = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let body: BodyInit | undefined;
  if (options.form) body = options.form;
  else if (options.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(options.json);
  }

  // One controller combines the caller's signal with the time limit.
  const controller = new AbortController();
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let timedOut = false;
  const timer = timeoutMs > 0 ? setTimeout(() => ((timedOut = true), controller.abort()), timeoutMs) : undefined;
  const onAbort = () => controller.abort();
  options.signal?.addEventListener('abort', onAbort);

  let res: Response;
  try {
    res = await fetch(url, { method: options.method ?? (body ? 'POST' : 'GET'), headers, body, signal: controller.signal });
  } catch (err) {
    if (timedOut) throw new ApiError(`the server did not answer within ${Math.round(timeoutMs / 1000)} s`, 0, 'timeout');
    if (options.signal?.aborted) throw err; // the caller gave up: not an error to show
    throw new ApiError(`cannot reach the server (${err instanceof Error ? err.message : String(err)})`, 0, 'network');
  } finally {
    if (timer) clearTimeout(timer);
    options.signal?.removeEventListener('abort', onAbort);
  }
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401) unauthorizedListeners.forEach((l) => l());
    throw err;
  }
  return res;
}

/** A JSON request: `api<Job>('/v1/fine_tuning/jobs/ftjob-1')`. */
export async function api<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const res = await send(path, options);
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ApiError(`the server sent a response that is not JSON (HTTP ${res.status})`, res.status);
  }
}

/**
 * Reads a server-sent-events stream with fetch + ReadableStream (EventSource cannot send the key).
 * Calls `onData` with each event's `data` (joined lines); stops at `[DONE]` or the end of the stream.
 */
export async function readSSE(res: Response, onData: (data: string, event: string | null) => void): Promise<void> {
  if (!res.body) throw new ApiError('the server sent an empty stream', res.status);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let dataLines: string[] = [];
  let eventName: string | null = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        // A blank line ends one event.
        if (dataLines.length) {
          const data = dataLines.join('\n');
          dataLines = [];
          if (data === '[DONE]') {
            await reader.cancel().catch(() => {});
            return;
          }
          onData(data, eventName);
        }
        eventName = null;
      } else if (line.startsWith('data:')) dataLines.push(line.slice(5).replace(/^ /, ''));
      else if (line.startsWith('event:')) eventName = line.slice(6).trim();
      // `id:`, `retry:` and `:` comments (keep-alives) need nothing here.
    }
  }
}

/** The readable message of anything thrown; `undefined` for a cancelled request. */
export function messageOf(err: unknown): string | undefined {
  if (err instanceof DOMException && err.name === 'AbortError') return undefined;
  if (err instanceof Error) return err.message;
  return String(err);
}

// ------------------------------------------------------------------------------------------ wire types
// Only the fields the console reads; the server may send more.

export interface List<T> {
  object: 'list';
  data: T[];
  has_more?: boolean;
  first_id?: string | null;
  last_id?: string | null;
}

export interface FileObject {
  id: string;
  object: 'file';
  filename: string;
  purpose: string;
  bytes: number;
  created_at: number;
  status?: string;
}

export type JobStatus = 'validating_files' | 'queued' | 'running' | 'pausing' | 'paused' | 'succeeded' | 'failed' | 'cancelled';

export interface Job {
  id: string;
  object: 'fine_tuning.job';
  model: string;
  status: JobStatus;
  created_at: number;
  finished_at: number | null;
  fine_tuned_model: string | null;
  training_file: string;
  validation_file: string | null;
  trained_tokens: number | null;
  estimated_finish: number | null;
  suffix?: string | null;
  seed?: number;
  result_files?: string[];
  error: { code: string; message: string; param: string | null } | null;
  hyperparameters?: Record<string, unknown>;
  method?: { type: string; supervised?: { hyperparameters?: Record<string, unknown> } };
  metadata?: Record<string, string> | null;
  /** weitiao's own fields (progress, LoRA settings); optional so older servers still render. */
  weitiao?: {
    progress?: { step: number; total_steps: number; epoch: number } | null;
    /** Everything the engine was given, `auto` resolved once the files were read. */
    hyperparameters?: (Record<string, number | string | string[]> & { auto?: string[] }) | null;
    /** Gradient accumulation/checkpointing, early stopping, bf16, length grouping, nproc (engine defaults filled in). */
    controls?: Record<string, number | string | boolean | null>;
    label_set?: string[] | 'auto' | null;
    label_metrics?: LabelMetrics | null;
    max_steps?: number | null;
    [k: string]: unknown;
  } | null;
}

export interface JobEvent {
  id: string;
  object: 'fine_tuning.job.event';
  created_at: number;
  level: string;
  message: string;
  type?: string;
  data?: Record<string, unknown> | null;
}

export interface Checkpoint {
  id: string;
  object: 'fine_tuning.job.checkpoint';
  created_at: number;
  fine_tuned_model_checkpoint: string;
  step_number: number;
  metrics: Record<string, number | null | undefined>;
  fine_tuning_job_id: string;
}

export interface Model {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  /** weitiao's lineage fields, when the server sends them. */
  weitiao?: {
    kind?: string;
    base_model?: string | null;
    job_id?: string | null;
    training_file?: string | null;
    validation_file?: string | null;
    source?: string;
    [k: string]: unknown;
  } | null;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

// -------------------------------------------------------------------------------- extension wire types

export interface ColumnMapping {
  system?: string;
  user: string;
  assistant: string;
}

export interface DataIssue {
  file?: string;
  line: number | null;
  field: string | null;
  code: string;
  severity: 'error' | 'warning';
  message: string;
}

export interface ValidationReport {
  errors: DataIssue[];
  warnings: DataIssue[];
}

export interface Summary {
  min: number;
  mean: number;
  p50: number;
  p95: number;
  max: number;
}

/** src/data's DatasetStats (without the server path). */
export interface DatasetStats {
  file_id: string;
  examples: number;
  invalid_examples: number;
  /** `tokens` when counted with a model's tokenizer, else `characters`. */
  token_unit: 'tokens' | 'characters';
  tokens_per_example: Summary | null;
  assistant_tokens_per_example: Summary | null;
  total_tokens: number;
  estimated_trained_tokens: number;
  label_set: string[] | null;
  distinct_answers: number;
  answer_distribution: { answer: string; count: number; share: number }[] | null;
  histogram: { unit: string; bin_width: number; bins: { start: number; end: number; count: number }[] };
  max_length?: number;
  over_max_length?: number;
}

export interface ValidateResponse {
  object: 'weitiao.dataset_validation';
  file_id: string;
  examples: number;
  valid_examples: number;
  label_set: string[] | null;
  report: ValidationReport;
  stats: DatasetStats | null;
}

export interface PreviewResponse {
  object: 'weitiao.dataset_preview';
  file_id: string;
  filename: string;
  /** `chat` for JSONL already in chat format; otherwise a table (`csv`, `tsv`, `jsonl` records). */
  format: string;
  encoding: string | null;
  columns: string[];
  suggested_mapping: { system?: string; user: string; assistant: string } | null;
  /** Distinct raw values of the assistant template (before the label map), to help write one. */
  answers: string[];
  label_set: string[] | null;
  total_rows: number;
  rows: Record<string, string>[];
  examples: { line: number | null; messages: ChatMessage[] }[];
  issues: DataIssue[];
}

export interface PrepareResponse {
  object: 'weitiao.dataset';
  /** False when the report has errors: then no file was created. */
  written: boolean;
  rows: number;
  examples: number;
  training_file: FileObject | null;
  validation_file: FileObject | null;
  report: ValidationReport;
  stats: DatasetStats | null;
  label_set: string[] | null;
  stratified: boolean;
  train_label_counts?: Record<string, number> | null;
  validation_label_counts?: Record<string, number> | null;
}

export interface HyperparameterExplanation {
  value: number | string;
  auto: boolean;
  /** English, then Chinese. */
  explanation: string;
  explanation_i18n?: { en: string; zh: string };
}

export interface EstimateResponse {
  object: 'weitiao.estimate';
  model: string;
  examples: number;
  validation_examples: number | null;
  label_set: string[] | null;
  hyperparameters: Record<string, HyperparameterExplanation>;
  total_steps: number;
  trained_tokens: number;
  tokens_per_second: number | null;
  /** `estimate`: the engine's estimate on this machine (src/train/estimate.ts), the same as `weitiao estimate`. */
  throughput_source: 'estimate';
  method: 'lora' | 'qlora';
  estimated_seconds: number | null;
  estimated_memory_bytes: number | null;
  /** The engine's figures behind the totals: memory breakdown, time per epoch, steps per epoch. */
  estimate: { peak_memory_bytes: number; time_per_epoch_seconds: number; steps_per_epoch: number; total_seconds: number; memory: Record<string, number> };
  notes: string[];
}

export interface LabelMetrics {
  n: number;
  accuracy: number;
  macro_f1: number;
  labels: string[];
  per_class: Record<string, { precision: number; recall: number; f1: number; support: number }>;
  confusion_matrix: number[][];
}

export interface EvalReport {
  object: 'weitiao.evaluation';
  model: string;
  base_model: string;
  file_id: string;
  /** `labels`: each label scored directly; `generation`: free text compared with the answer. */
  mode: 'labels' | 'generation';
  n: number;
  valid_loss: number | null;
  label_metrics: LabelMetrics | null;
  examples_per_second: number;
  misclassified_count: number;
  misclassified: { index: number; line: number | null; prompt: string; expected: string; predicted: string }[];
}

export interface EvaluationResponse {
  object: 'weitiao.evaluation_result';
  file_id: string;
  reports: EvalReport[];
  comparison: {
    n: number;
    both_correct: number;
    only_first_correct: number;
    only_second_correct: number;
    both_wrong: number;
    agreement: number;
  } | null;
}
