/**
 * Runs a validation task (a chat or preference file, an upload's normalisation and check) where it cannot
 * hold up the HTTP server: in a worker thread, which an abort terminates at once. Small files (under
 * IN_PROCESS_MAX_BYTES) are read in-process: a thread costs more than reading them, and they take
 * milliseconds. Token counts go through the parent's counter (the engine subprocess), one batch at a time.
 */
import { stat } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import type { ChatExample } from '../../engine/protocol.js';
import { WeitiaoError, type ErrorCode } from '../../errors.js';
import type { DataDeps, TokenCounter, TokenCounts, ValidateOptions, ValidationReport } from '../schemas.js';
import { validateChatFile } from '../validate.js';
import { validationCancelled } from './issues.js';
import { validatePreferenceFile } from './preference.js';
import { normalizeUpload, type UploadCheck } from './upload.js';

export type ThreadTask =
  | { kind: 'chat'; file: string; options: ValidateOptions; count_tokens: boolean }
  | { kind: 'preference'; file: string; options: ValidateOptions }
  | { kind: 'upload'; file: string; filename: string; check: boolean };

type ResultOf<T extends ThreadTask> = T extends { kind: 'upload' } ? UploadCheck : ValidationReport;

interface WireError {
  code: ErrorCode;
  message: string;
  param: string | null;
  file: string | null;
  line: number | null;
}

export type TaskMessage =
  | { type: 'count'; id: number; examples: ChatExample[] }
  | { type: 'counted'; id: number; result: TokenCounts }
  | { type: 'count_failed'; id: number; error: WireError }
  | { type: 'done'; result: UploadCheck | ValidationReport }
  | { type: 'failed'; error: WireError };

/** Files up to this size are validated in-process (about 10 ms of work); larger ones in a thread. */
export const IN_PROCESS_MAX_BYTES = 1024 * 1024;

/** Runs the task in this thread (what the worker thread calls too). */
export function runTask(task: ThreadTask, deps: DataDeps): Promise<UploadCheck | ValidationReport> {
  if (task.kind === 'chat') return validateChatFile(task.file, task.options, deps);
  if (task.kind === 'preference') return validatePreferenceFile(task.file, task.options, deps);
  return normalizeUpload(task.file, { filename: task.filename, check: task.check, signal: deps.signal });
}

/**
 * Runs a task off the event loop (see the module note). With `signal`, an abort terminates the thread and
 * any token count under way, and the call rejects with `cancelled`.
 */
export async function runValidationTask<T extends ThreadTask>(
  task: T,
  deps: { signal?: AbortSignal; countTokens?: TokenCounter; inProcessMaxBytes?: number } = {},
): Promise<ResultOf<T>> {
  const { signal } = deps;
  if (signal?.aborted) throw validationCancelled(task.file);
  const info = await stat(task.file).catch(() => null);
  // A missing file is reported in-process (not_found); a pipe or device may never end: a thread, which an abort ends.
  if (!info || (info.isFile() && info.size <= (deps.inProcessMaxBytes ?? IN_PROCESS_MAX_BYTES))) {
    return (await runTask(task, { signal, countTokens: deps.countTokens })) as ResultOf<T>;
  }
  return (await inThread(task, deps)) as ResultOf<T>;
}

/**
 * A small heap makes V8 collect often instead of growing: reading streams through short-lived strings,
 * and what is kept (digest tables, capped issue lists) lives outside the heap or is small. A line of up to
 * MAX_LINE_CHARS must still fit, twice (the text and its parse).
 */
const THREAD_LIMITS = { maxOldGenerationSizeMb: 96, maxYoungGenerationSizeMb: 8 };

function startThread(task: ThreadTask): Worker {
  const here = import.meta.url;
  if (!here.endsWith('.ts')) return new Worker(new URL('./validation-thread.js', here), { workerData: task, resourceLimits: THREAD_LIMITS });
  // From the TypeScript sources (tsx): the thread registers tsx itself before loading its module.
  const boot = `const { workerData } = require('node:worker_threads');
(async () => { const { register } = await import(workerData.tsx); register(); await import(workerData.entry); })()
  .catch((err) => { setImmediate(() => { throw err; }); });`;
  return new Worker(boot, {
    eval: true,
    resourceLimits: THREAD_LIMITS,
    workerData: { ...task, tsx: import.meta.resolve('tsx/esm/api'), entry: new URL('./validation-thread.ts', here).href },
  });
}

function inThread(task: ThreadTask, deps: { signal?: AbortSignal; countTokens?: TokenCounter }): Promise<UploadCheck | ValidationReport> {
  return new Promise((resolve, reject) => {
    if (deps.signal?.aborted) return reject(validationCancelled(task.file));
    const thread = startThread(task);
    const counting = new AbortController();
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      deps.signal?.removeEventListener('abort', onAbort);
      counting.abort();
      fn();
    };
    const onAbort = () => {
      finish(() => reject(validationCancelled(task.file)));
      void thread.terminate();
    };
    deps.signal?.addEventListener('abort', onAbort, { once: true });

    thread.on('message', (m: TaskMessage) => {
      if (m.type === 'count') {
        const counter = deps.countTokens;
        if (!counter) return void thread.postMessage({ type: 'count_failed', id: m.id, error: wire(new WeitiaoError('internal_error', 'no token counter')) });
        counter(m.examples, { signal: counting.signal }).then(
          (result) => !settled && thread.postMessage({ type: 'counted', id: m.id, result } satisfies TaskMessage),
          (err) => !settled && thread.postMessage({ type: 'count_failed', id: m.id, error: wire(WeitiaoError.from(err)) } satisfies TaskMessage),
        );
      } else if (m.type === 'done') {
        finish(() => resolve(m.result));
      } else if (m.type === 'failed') {
        const e = m.error;
        finish(() => reject(new WeitiaoError(e.code, e.message, { param: e.param ?? undefined, file: e.file ?? undefined, line: e.line ?? undefined })));
      }
    });
    thread.on('error', (err) => finish(() => reject(WeitiaoError.from(err))));
    thread.on('exit', (code) => finish(() => reject(new WeitiaoError('internal_error', `validation thread exited with ${code} before answering`))));
  });
}

function wire(e: WeitiaoError): WireError {
  return { code: e.code, message: e.message, param: e.param ?? null, file: e.file ?? null, line: e.line ?? null };
}
