/**
 * Limits, all in one place, answered in OpenAI's 429 shape (`{error: {message, type: 'rate_limit_error',
 * code, param}}`) with a `retry-after` header (seconds), so the SDKs back off and retry by themselves:
 * - requests per key: a token bucket (`requests_per_second`, `request_burst`);
 * - chat completions: at most `chat_concurrent_per_key` per key and `chat_concurrent` in all at once, with
 *   `chat_queue` more waiting in line; past that a request is refused at once (never queued without bound);
 * - unfinished fine-tuning jobs per project (`queued_jobs_per_project`);
 * - uploaded bytes per key per UTC day (`upload_bytes_per_day`).
 * Each is configured by an environment variable (`limitsFromEnv`; 0 turns a limit off) or `AppOptions.limits`.
 * Counts live in this process's memory: a restart starts them afresh. Who is counted is `keyOf`, one
 * function (the API key's id today; a project when projects arrive).
 */
import type { Context as HonoContext, MiddlewareHandler } from 'hono';
import { WeitiaoError } from '../../errors.js';
import type { ApiEnv } from './auth.js';

export interface Limits {
  /** Sustained requests per second per key (token bucket refill). */
  requests_per_second: number;
  /** Requests a key may make at once after being idle (bucket size). */
  request_burst: number;
  chat_concurrent_per_key: number;
  chat_concurrent: number;
  /** Chat requests that may wait for a free slot (all keys together). */
  chat_queue: number;
  /** Unfinished (validating, queued, running, paused) fine-tuning jobs a key may have. */
  queued_jobs_per_project: number;
  upload_bytes_per_day: number;
}

/** High enough that one team's normal use (and the test suite) never meets them; each 0 = off. */
export const DEFAULT_LIMITS: Limits = {
  requests_per_second: 50, // the console polls a few routes every second; scripts rarely need more
  request_burst: 200,
  chat_concurrent_per_key: 4, // the CPU engine answers one at a time anyway: more only waits
  chat_concurrent: 8,
  chat_queue: 32,
  queued_jobs_per_project: 50, // one worker runs jobs one after another: 50 is days of work
  upload_bytes_per_day: 20 * 1024 ** 3,
};

/** The environment variable of each limit (README documents them). */
export const LIMIT_ENV: Record<keyof Limits, string> = {
  requests_per_second: 'WEITIAO_RATE_LIMIT_RPS',
  request_burst: 'WEITIAO_RATE_LIMIT_BURST',
  chat_concurrent_per_key: 'WEITIAO_CHAT_CONCURRENCY_PER_KEY',
  chat_concurrent: 'WEITIAO_CHAT_CONCURRENCY',
  chat_queue: 'WEITIAO_CHAT_QUEUE',
  queued_jobs_per_project: 'WEITIAO_MAX_UNFINISHED_JOBS_PER_PROJECT',
  upload_bytes_per_day: 'WEITIAO_UPLOAD_BYTES_PER_DAY',
};

/** DEFAULT_LIMITS with every variable set in `env` applied; a value that is not a number ≥ 0 is refused, naming it. */
export function limitsFromEnv(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Limits> = {}): Limits {
  const limits = { ...DEFAULT_LIMITS };
  for (const [key, name] of Object.entries(LIMIT_ENV) as [keyof Limits, string][]) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    const value = Number(raw);
    if (!Number.isFinite(value) || value < 0) {
      throw new WeitiaoError('invalid_request', `${name}=${raw} is not a number ≥ 0 (0 turns the limit off) / ${name} 必须是非负数`, { param: name });
    }
    limits[key] = value;
  }
  return { ...limits, ...overrides };
}

/** Who a limit counts: the API key's id, or `local` without auth. Projects will replace this one function. */
export type KeyOf = (c: HonoContext<ApiEnv>) => string;
export const keyOf: KeyOf = (c) => c.get('apiKey')?.id ?? 'local';
/** The project of the request's key (the local user's is `default`): what the queued-jobs limit counts. */
export const projectOf: KeyOf = (c) => c.get('apiKey')?.project ?? 'default';

/** A 429 that carries how long to wait; `retryAfterHeader` puts it on the response. */
export class RateLimitedError extends WeitiaoError {
  constructor(
    message: string,
    readonly retryAfterSeconds: number,
    param?: string,
  ) {
    super('rate_limited', message, { param });
  }
}

/** Adds `retry-after` to any response whose error was a RateLimitedError. Register before the limits. */
export function retryAfterHeader(): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    await next();
    const err = c.error;
    if (err instanceof RateLimitedError) c.res.headers.set('retry-after', String(Math.max(1, Math.ceil(err.retryAfterSeconds))));
  };
}

// ------------------------------------------------------------------------------------ request rate

/** A token bucket per key over every /v1 request. */
export function requestRate(limits: Pick<Limits, 'requests_per_second' | 'request_burst'>, key: KeyOf = keyOf): MiddlewareHandler<ApiEnv> {
  const rate = limits.requests_per_second;
  const burst = Math.max(1, limits.request_burst || rate);
  const buckets = new Map<string, { tokens: number; at: number }>();
  return async (c, next) => {
    if (rate <= 0) return next();
    const k = key(c);
    const now = performance.now();
    if (buckets.size > 10_000) for (const [id, b] of buckets) if (now - b.at > 60_000) buckets.delete(id); // idle keys
    const bucket = buckets.get(k) ?? { tokens: burst, at: now };
    bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    buckets.set(k, bucket);
    if (bucket.tokens < 1) {
      const wait = (1 - bucket.tokens) / rate;
      throw new RateLimitedError(
        `too many requests: more than ${rate} per second (burst ${burst}) for this key; retry after ${Math.ceil(wait)} s / 请求过于频繁，请稍后重试`,
        wait,
      );
    }
    bucket.tokens -= 1;
    return next();
  };
}

// ------------------------------------------------------------------------------------ chat streams

/**
 * Chat completions in flight: per key and in all, plus a bounded FIFO line of waiting requests. A slot is
 * held until the answer (a stream included) has been sent or the client hung up.
 */
export function chatConcurrency(
  limits: Pick<Limits, 'chat_concurrent_per_key' | 'chat_concurrent' | 'chat_queue'>,
  key: KeyOf = keyOf,
): MiddlewareHandler<ApiEnv> {
  const perKey = limits.chat_concurrent_per_key || Number.POSITIVE_INFINITY;
  const global = limits.chat_concurrent || Number.POSITIVE_INFINITY;
  const running = new Map<string, number>();
  let total = 0;
  const waiting: { key: string; go: () => void; abandon: () => void }[] = [];

  const fits = (k: string) => total < global && (running.get(k) ?? 0) < perKey;
  const take = (k: string) => {
    total++;
    running.set(k, (running.get(k) ?? 0) + 1);
  };
  const release = (k: string) => {
    total--;
    const n = (running.get(k) ?? 1) - 1;
    if (n > 0) running.set(k, n);
    else running.delete(k);
    // The first waiter that now fits goes (a key at its own limit does not hold up the others).
    const i = waiting.findIndex((w) => fits(w.key));
    if (i >= 0) waiting.splice(i, 1)[0].go();
  };

  return async (c, next) => {
    const k = key(c);
    if (!fits(k)) {
      if (waiting.length >= limits.chat_queue) {
        const which = (running.get(k) ?? 0) >= perKey ? `${perKey} for this key` : `${global} in all`;
        throw new RateLimitedError(
          `too many chat completions at once (${which}, and ${limits.chat_queue} waiting); retry shortly / 同时进行的对话请求过多，请稍后重试`,
          1,
        );
      }
      await new Promise<void>((resolve, reject) => {
        const entry = {
          key: k,
          go: () => {
            c.req.raw.signal.removeEventListener('abort', entry.abandon);
            resolve();
          },
          abandon: () => {
            const i = waiting.indexOf(entry);
            if (i >= 0) waiting.splice(i, 1);
            reject(new WeitiaoError('cancelled', 'the client went away while waiting / 客户端已断开'));
          },
        };
        waiting.push(entry);
        c.req.raw.signal.addEventListener('abort', entry.abandon, { once: true });
      });
    }
    take(k);
    let released = false;
    const done = () => {
      if (!released) {
        released = true;
        release(k);
      }
    };
    try {
      await next();
    } catch (err) {
      done();
      throw err;
    }
    const body = c.res.body;
    if (!body) return done();
    // Hold the slot while the body streams; free it when it ends or the client cancels.
    const reader = body.getReader();
    const tracked = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { done: end, value } = await reader.read();
          if (end) {
            done();
            controller.close();
          } else {
            controller.enqueue(value);
          }
        } catch (err) {
          done();
          controller.error(err);
        }
      },
      cancel(reason) {
        done();
        return reader.cancel(reason);
      },
    });
    c.res = new Response(tracked, { status: c.res.status, statusText: c.res.statusText, headers: c.res.headers });
  };
}

// ------------------------------------------------------------------------------------ jobs

/**
 * Unfinished fine-tuning jobs per key, on job creation. `isUnfinished` asks the store; the ids a key
 * created are remembered from the answers (dry runs create nothing and are not counted).
 */
export function unfinishedJobs(
  limits: Pick<Limits, 'queued_jobs_per_project'>,
  isUnfinished: (jobId: string) => boolean,
  key: KeyOf = projectOf,
): MiddlewareHandler<ApiEnv> {
  const owned = new Map<string, Set<string>>();
  return async (c, next) => {
    const max = limits.queued_jobs_per_project;
    if (max <= 0) return next();
    const k = key(c);
    const ids = owned.get(k) ?? new Set<string>();
    for (const id of ids) if (!isUnfinished(id)) ids.delete(id);
    if (ids.size >= max) {
      throw new RateLimitedError(
        `this project already has ${ids.size} unfinished fine-tuning jobs (the limit is ${max}); wait for one to finish or cancel one / 未完成的微调任务已达上限 ${max}`,
        60,
      );
    }
    await next();
    if (c.res.status !== 200) return;
    const created = (await c.res.clone().json().catch(() => null)) as { id?: unknown; object?: unknown } | null;
    if (created?.object === 'fine_tuning.job' && typeof created.id === 'string') {
      ids.add(created.id);
      owned.set(k, ids);
    }
  };
}

// ------------------------------------------------------------------------------------ uploads

const FORM_FRAMING_BYTES = 1024;

/**
 * Bytes uploaded per key per UTC day: refused up front when the declared size does not fit what is left,
 * and, for a body of undeclared length, once stored: then `remove` deletes it again before the 429.
 */
export function uploadQuota(
  limits: Pick<Limits, 'upload_bytes_per_day'>,
  remove: (fileId: string) => Promise<unknown>,
  key: KeyOf = keyOf,
): MiddlewareHandler<ApiEnv> {
  const used = new Map<string, { day: string; bytes: number }>();
  const usage = (k: string) => {
    const day = new Date().toISOString().slice(0, 10);
    const u = used.get(k);
    if (u && u.day === day) return u;
    const fresh = { day, bytes: 0 };
    used.set(k, fresh);
    return fresh;
  };
  const untilMidnight = () => {
    const now = new Date();
    return (Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1) - now.getTime()) / 1000;
  };
  return async (c, next) => {
    const max = limits.upload_bytes_per_day;
    if (max <= 0) return next();
    const k = key(c);
    const u = usage(k);
    const declared = Number(c.req.header('content-length') ?? 0) || 0;
    // The declared length stands for the file's size, less the form's framing (boundaries, part headers).
    const refuse = (size: number) =>
      new RateLimitedError(
        `daily upload limit reached: ${u.bytes} of ${max} bytes used today (UTC) by this key, this upload is ${size} bytes / 今日上传量已达上限`,
        untilMidnight(),
        'file',
      );
    const size = Math.max(0, declared - FORM_FRAMING_BYTES);
    if (u.bytes >= max || u.bytes + size > max) throw refuse(size);
    await next();
    if (c.res.status !== 200) return;
    const stored = (await c.res.clone().json().catch(() => null)) as { id?: unknown; bytes?: unknown } | null;
    if (typeof stored?.bytes !== 'number' || typeof stored.id !== 'string') return;
    const now = usage(k);
    if (now.bytes + stored.bytes > max) {
      await remove(stored.id);
      throw refuse(stored.bytes);
    }
    now.bytes += stored.bytes;
  };
}
