/**
 * A teacher: any OpenAI-compatible chat endpoint (`weitiao serve`, Ollama, vLLM, a hosted API), called
 * with plain fetch. Requests respect a concurrency cap and a requests-per-second limit, and 429/5xx
 * answers are retried with backoff, honouring `retry-after`.
 *
 * The API key is never written anywhere by weitiao: it is read from an environment variable the user
 * names (`api_key_env`, default WEITIAO_TEACHER_API_KEY). An outbound key cannot be stored hashed like
 * weitiao's own keys (it must be sent in clear), and keeping it out of the home means backups, run state
 * and provenance files never carry it.
 */
import { z } from 'zod';
import { parseOrThrow, WeitiaoError } from '../../errors.js';

export const DEFAULT_API_KEY_ENV = 'WEITIAO_TEACHER_API_KEY';

export const TeacherConfig = z.object({
  /** e.g. http://127.0.0.1:8000/v1 (weitiao serve), http://127.0.0.1:11434/v1 (Ollama). */
  base_url: z.string().url(),
  model: z.string().min(1),
  /** Name of the environment variable holding the key; unset or empty variable = no Authorization header. */
  api_key_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).default(DEFAULT_API_KEY_ENV),
  /** Requests in flight at once. */
  concurrency: z.number().int().min(1).max(256).default(4),
  /** Requests started per second (0 = no limit). */
  rps: z.number().min(0).default(0),
  /** Attempts after the first on 429, 5xx or a network error. */
  retries: z.number().int().min(0).max(20).default(6),
  /** Per-request timeout. */
  timeout_ms: z.number().int().min(100).default(120_000),
});
export type TeacherConfig = z.infer<typeof TeacherConfig>;
export type TeacherConfigInput = z.input<typeof TeacherConfig>;

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** The OpenAI chat request fields weitiao's teacher tools send. */
export interface ChatRequest {
  messages: ChatMessage[];
  max_tokens?: number;
  temperature?: number;
  seed?: number;
  logprobs?: boolean;
  top_logprobs?: number;
}

export interface TopLogprob {
  token: string;
  logprob: number;
}
export interface ChatAnswer {
  content: string;
  /** The first tokens' alternatives when logprobs were asked for and given. */
  logprobs: { token: string; logprob: number; top_logprobs: TopLogprob[] }[] | null;
  usage: { prompt_tokens: number; completion_tokens: number } | null;
}

const AnswerBody = z.object({
  choices: z
    .array(
      z.object({
        message: z.object({ content: z.string().nullable().optional() }),
        logprobs: z
          .object({
            content: z
              .array(z.object({ token: z.string(), logprob: z.number(), top_logprobs: z.array(z.object({ token: z.string(), logprob: z.number() })).default([]) }))
              .nullable()
              .optional(),
          })
          .nullable()
          .optional(),
      }),
    )
    .min(1),
  usage: z.object({ prompt_tokens: z.number(), completion_tokens: z.number() }).nullable().optional(),
});

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => (signal?.removeEventListener('abort', onAbort), resolve()), ms);
    const onAbort = () => (clearTimeout(t), reject(signal!.reason));
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** `retry-after` as seconds or an HTTP date, in milliseconds; null when absent or unreadable. */
export function retryAfterMs(header: string | null, now = Date.now()): number | null {
  if (!header) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** Status codes worth another attempt: rate limits, timeouts and server errors. */
function retryable(status: number): boolean {
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

export class TeacherClient {
  readonly config: TeacherConfig;
  private readonly apiKey: string | undefined;
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  private nextStart = 0;
  /** Requests sent, retries included (for the summary). */
  requestsSent = 0;
  retriesDone = 0;

  constructor(config: TeacherConfigInput, env: NodeJS.ProcessEnv = process.env) {
    this.config = parseOrThrow(TeacherConfig, config, { where: { en: 'teacher settings', zh: '教师模型配置' }, param: 'teacher' });
    this.apiKey = env[this.config.api_key_env] || undefined;
  }

  /** What provenance records about the teacher (never the key). */
  describe(): { base_url: string; model: string } {
    return { base_url: this.config.base_url, model: this.config.model };
  }

  private async acquire(): Promise<void> {
    if (this.active >= this.config.concurrency) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
  }

  private release(): void {
    this.active--;
    this.waiting.shift()?.();
  }

  /** Waits for the next start slot under the rps limit (slots are handed out in order). */
  private async pace(signal?: AbortSignal): Promise<void> {
    if (this.config.rps <= 0) return;
    const now = Date.now();
    const at = Math.max(now, this.nextStart);
    this.nextStart = at + 1000 / this.config.rps;
    if (at > now) await sleep(at - now, signal);
  }

  /**
   * One GET below the base URL (e.g. `models/<id>`), sent once with a short timeout: for look-ups that are
   * optional (an endpoint other than weitiao's answers 404), so any failure is null, never an error.
   */
  async get(pathBelowBase: string, signal?: AbortSignal, timeoutMs = 15_000): Promise<Response | null> {
    const timeout = AbortSignal.timeout(timeoutMs);
    try {
      const res = await fetch(`${this.config.base_url.replace(/\/+$/, '')}/${pathBelowBase}`, {
        headers: this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {},
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
      if (res.ok) return res;
      await res.body?.cancel();
      return null;
    } catch (err) {
      if (signal?.aborted) throw err;
      return null;
    }
  }

  /** One chat completion, retried on 429/5xx/network errors; a 4xx other than those is thrown at once. */
  async chat(request: ChatRequest, signal?: AbortSignal): Promise<ChatAnswer> {
    await this.acquire();
    try {
      for (let attempt = 0; ; attempt++) {
        await this.pace(signal);
        let status = 0;
        let waitMs: number | null = null;
        let detail = '';
        try {
          this.requestsSent++;
          const res = await fetch(`${this.config.base_url.replace(/\/+$/, '')}/chat/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', ...(this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {}) },
            body: JSON.stringify({ model: this.config.model, ...request }),
            signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(this.config.timeout_ms)]) : AbortSignal.timeout(this.config.timeout_ms),
          });
          status = res.status;
          const text = await res.text();
          if (res.ok) return parseAnswer(text, this.config.base_url);
          detail = errorMessage(text);
          if (!retryable(status)) {
            throw new WeitiaoError(status === 401 || status === 403 ? 'unauthorized' : 'invalid_request', `teacher ${this.config.base_url} answered ${status}: ${detail} / 教师模型拒绝了请求`, { param: 'teacher' });
          }
          waitMs = retryAfterMs(res.headers.get('retry-after'));
        } catch (err) {
          if (err instanceof WeitiaoError || signal?.aborted) throw err;
          detail = err instanceof Error ? err.message : String(err);
        }
        if (attempt >= this.config.retries) {
          throw new WeitiaoError('unavailable', `teacher ${this.config.base_url} failed ${attempt + 1} times (last: ${status || 'network'} ${detail}) / 教师模型多次请求失败`, { param: 'teacher' });
        }
        this.retriesDone++;
        // Exponential backoff with jitter unless the server said when to come back.
        await sleep(waitMs ?? Math.min(30_000, 500 * 2 ** attempt) * (0.75 + Math.random() * 0.5), signal);
      }
    } finally {
      this.release();
    }
  }
}

function errorMessage(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: { message?: string } | string };
    if (typeof body.error === 'string') return body.error;
    if (body.error?.message) return body.error.message;
  } catch {
    /* not JSON: the text itself */
  }
  return text.slice(0, 300);
}

function parseAnswer(text: string, baseUrl: string): ChatAnswer {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new WeitiaoError('unavailable', `teacher ${baseUrl} answered with something other than JSON / 教师模型返回的不是 JSON`, { param: 'teacher' });
  }
  const parsed = AnswerBody.safeParse(json);
  if (!parsed.success) {
    throw new WeitiaoError('unavailable', `teacher ${baseUrl} answered without choices[0].message (not an OpenAI chat completion) / 教师模型的返回不是 OpenAI 格式`, { param: 'teacher' });
  }
  const choice = parsed.data.choices[0];
  return {
    content: choice.message.content ?? '',
    logprobs: choice.logprobs?.content ?? null,
    usage: parsed.data.usage ?? null,
  };
}
