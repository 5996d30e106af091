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
// Never retyped here: `import type` from the server's zod schemas (z.infer) and the console routes' answers.
// Type-only imports are erased by the build, so no server code enters the bundle.

import type { ListPage } from '../../src/store/index';
import type { FileObject } from '../../src/files/index';
import type { FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent, JobStatus } from '../../src/jobs/index';
import type { ModelObject } from '../../src/models/index';
import type { ChatMessage, LabelMetrics } from '../../src/engine/protocol';
import type { Issue } from '../../src/data/index';
import type { EstimateResponse, EvaluationResponse, PrepareResponse, PreviewResponse, ValidateResponse } from '../../src/api/routes/console';
import type { MeObject } from '../../src/api/routes/projects';

export type { ChatMessage, MeObject, EstimateResponse, EvaluationResponse, FileObject, JobStatus, LabelMetrics, PrepareResponse, PreviewResponse, ValidateResponse };
export type List<T extends { id: string }> = ListPage<T>;
export type Job = FineTuningJob;
export type JobEvent = FineTuningJobEvent;
export type Checkpoint = FineTuningJobCheckpoint;
export type Model = ModelObject;
export type ColumnMapping = NonNullable<PreviewResponse['suggested_mapping']>;
export type HyperparameterExplanation = EstimateResponse['hyperparameters'][keyof EstimateResponse['hyperparameters']];
export type EvalReport = EvaluationResponse['reports'][number];
export type DataIssue = Issue;
export type ValidationReport = ValidateResponse['report'];
export type DatasetStats = NonNullable<ValidateResponse['stats']>;
