/**
 * The remote worker's HTTP side (issue 19): JSON calls to `/v1/weitiao/workers` with retries and backoff for
 * transient failures (network errors, 429, 502-504), streaming downloads (files with their sha256 checked,
 * directories as tar streams extracted into a temp dir and renamed into place) and uploads of directories as
 * tar (written to a temp file while hashing, so the sha256 header can precede the bytes and a retry can
 * send them again), and the base-model cache under the worker's home.
 *
 * ```ts
 * const client = new WorkerClient('http://api:8000', key);
 * const claim = await client.json('POST', '/claim', body, ClaimResponse);   // null on 204
 * await client.downloadDir(`/leases/${id}/inputs/inputs%2Fbase`, dir);
 * ```
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import type { z } from 'zod';
import { ERROR_CODES, parseOrThrow, WeitiaoError, type ErrorCode } from '../errors.js';
import { newId } from '../store/index.js';
import { SHA256_HEADER, WORKERS_PATH } from './protocol.js';

/** The server said the lease is gone (409 `lease_lost`): kill the engine and drop the job. */
export class LeaseLostError extends WeitiaoError {
  constructor(message: string) {
    super('conflict', message);
    this.name = 'LeaseLostError';
  }
}

export interface RetryOptions {
  /** Give up on a call after retrying this long (the lease is reaped after its expiry anyway). */
  budgetMs: number;
  /** First wait; doubled after each failure up to `maxDelayMs`. */
  firstDelayMs: number;
  maxDelayMs: number;
}

const DEFAULT_RETRY: RetryOptions = { budgetMs: 60_000, firstDelayMs: 250, maxDelayMs: 5_000 };
/** Statuses worth another try: the server or a proxy in front of it is busy or restarting. */
const TRANSIENT_STATUS = new Set([408, 429, 502, 503, 504]);

type Body = { json: unknown } | { file: string; sha256: string; bytes: number } | null;

export class WorkerClient {
  readonly base: string;

  constructor(
    server: string,
    private readonly token: string,
    private readonly retry: RetryOptions = DEFAULT_RETRY,
  ) {
    this.base = server.replace(/\/+$/, '').replace(/\/v1$/, '') + WORKERS_PATH;
  }

  /** A JSON call: the parsed answer, or null on 204. Throws LeaseLostError on 409 lease_lost. */
  async json<S extends z.ZodType>(method: 'POST' | 'GET', route: string, body: unknown, schema: S, budgetMs?: number): Promise<z.output<S> | null> {
    const res = await this.request(method, route, body === undefined ? null : { json: body }, budgetMs);
    if (res.status === 204) return null;
    return parseOrThrow(schema, await res.json(), { code: 'unavailable', where: { en: `answer of ${method} ${route}`, zh: `服务器应答` } });
  }

  /** Downloads a file to `dest` (via `dest.partial`), checking the server's sha256 header and `expectedSha`. */
  async downloadFile(route: string, dest: string, expectedSha: string | null): Promise<void> {
    await mkdir(path.dirname(dest), { recursive: true });
    const partial = `${dest}.partial`;
    const res = await this.request('GET', route, null);
    const hash = createHash('sha256');
    await pipeline(Readable.fromWeb(res.body as never), hashing(hash), createWriteStream(partial));
    const got = hash.digest('hex');
    for (const want of [res.headers.get(SHA256_HEADER), expectedSha]) {
      if (want && want !== got) {
        await rm(partial, { force: true });
        throw new WeitiaoError('unavailable', `download of ${route} is corrupt: sha256 ${got}, expected ${want} / 下载的文件校验失败`);
      }
    }
    await rename(partial, dest);
  }

  /** Downloads a directory's tar stream and extracts it into a temp dir that is then renamed to `dest` (atomic). */
  async downloadDir(route: string, dest: string): Promise<void> {
    await mkdir(path.dirname(dest), { recursive: true });
    const tmp = `${dest}.partial-${newId('dl')}`;
    await mkdir(tmp, { recursive: true });
    try {
      const res = await this.request('GET', route, null);
      const hash = createHash('sha256');
      // tar refuses absolute names and `..` by default: an archive cannot write outside `tmp`.
      await pipeline(Readable.fromWeb(res.body as never), hashing(hash), tar.x({ cwd: tmp, strict: true }) as unknown as NodeJS.WritableStream);
      const want = res.headers.get(SHA256_HEADER);
      const got = hash.digest('hex');
      if (want && want !== got) throw new WeitiaoError('unavailable', `download of ${route} is corrupt: sha256 ${got}, expected ${want} / 下载的目录校验失败`);
      await rm(dest, { recursive: true, force: true });
      await rename(tmp, dest);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /** Uploads directory `dir` as a tar (built in `scratch`, hashed on the way); the server's answer. */
  async uploadDir<S extends z.ZodType>(route: string, dir: string, scratch: string, schema: S, budgetMs?: number): Promise<z.output<S>> {
    await mkdir(scratch, { recursive: true });
    const file = path.join(scratch, `${newId('up')}.tar`);
    try {
      const hash = createHash('sha256');
      await pipeline(tar.c({ cwd: dir, portable: true }, ['.']) as unknown as AsyncIterable<Buffer>, hashing(hash), createWriteStream(file));
      const body = { file, sha256: hash.digest('hex'), bytes: (await stat(file)).size };
      const res = await this.request('PUT', route, body, budgetMs);
      return parseOrThrow(schema, await res.json(), { code: 'unavailable', where: { en: `answer of PUT ${route}`, zh: '服务器应答' } });
    } finally {
      await rm(file, { force: true });
    }
  }

  /** One call with retries for transient failures; a non-2xx answer becomes a WeitiaoError (LeaseLostError for lease_lost). */
  private async request(method: string, route: string, body: Body, budgetMs = this.retry.budgetMs): Promise<Response> {
    const deadline = Date.now() + budgetMs;
    let delay = this.retry.firstDelayMs;
    for (let attempt = 1; ; attempt++) {
      let res: Response | null = null;
      let failure: WeitiaoError;
      try {
        res = await fetch(this.base + route, this.init(method, body));
        if (res.ok) return res;
        failure = await errorOf(res, method, route);
        if (!TRANSIENT_STATUS.has(res.status)) throw failure;
      } catch (err) {
        if (err instanceof WeitiaoError) throw err;
        // fetch failed: refused, reset, DNS… (the server may be restarting)
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        failure = new WeitiaoError('unavailable', `cannot reach ${this.base}: ${cause?.code ?? cause?.message ?? (err as Error).message} / 无法连接服务器`, { cause: err });
      }
      if (Date.now() + delay > deadline) throw failure;
      await new Promise((r) => setTimeout(r, delay * (0.75 + Math.random() / 2)));
      delay = Math.min(delay * 2, this.retry.maxDelayMs);
    }
  }

  private init(method: string, body: Body): RequestInit {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (!body) return { method, headers };
    if ('json' in body) return { method, headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(body.json) };
    return {
      method,
      headers: { ...headers, 'content-type': 'application/x-tar', 'content-length': String(body.bytes), [SHA256_HEADER]: body.sha256 },
      body: Readable.toWeb(createReadStream(body.file)) as ReadableStream,
      duplex: 'half',
    } as RequestInit;
  }
}

/** The server's `{error: {code, message}}` as a WeitiaoError (unknown codes as `unavailable`). */
async function errorOf(res: Response, method: string, route: string): Promise<WeitiaoError> {
  const text = await res.text().catch(() => '');
  let code: string | undefined;
  let message = `${method} ${route}: HTTP ${res.status} ${text.slice(0, 300)}`;
  try {
    const e = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
    code = e?.code;
    if (e?.message) message = e.message;
  } catch {
    /* not JSON: a proxy's page */
  }
  if (code === 'lease_lost') return new LeaseLostError(message);
  const known = code && code in ERROR_CODES ? (code as ErrorCode) : res.status >= 500 || TRANSIENT_STATUS.has(res.status) ? 'unavailable' : 'invalid_request';
  return new WeitiaoError(known, message);
}

/** A pass-through that feeds every chunk to `hash`. */
function hashing(hash: Hash): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
}

/**
 * The directory cached under `key` in `root` (a base model several jobs train on): downloaded with `fetch`
 * the first time, reused after. The name is the key made file-safe plus a hash of it, so keys never collide.
 */
export async function cachedDir(root: string, key: string, fetch: (dest: string) => Promise<void>): Promise<{ dir: string; hit: boolean }> {
  const safe = key.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);
  const dir = path.join(root, `${safe}-${createHash('sha256').update(key).digest('hex').slice(0, 16)}`);
  if (existsSync(dir)) return { dir, hit: true };
  await fetch(dir); // downloadDir renames into place only once complete
  return { dir, hit: false };
}
