/**
 * A stand-in OpenAI-compatible chat endpoint for the teacher tests (real HTTP on 127.0.0.1). It answers
 * by model name with deterministic content, counts requests received and answers sent per prompt (the
 * last user message), and can fail, delay or hold requests to exercise retries and restarts.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StandIn {
  url: string;
  /** Requests received per prompt (the last user message's content, plus `@model` for pairs). */
  received: Map<string, number>;
  /** Complete answers sent per prompt. */
  answered: Map<string, number>;
  /** Arrival times (ms) per prompt. */
  arrivals: Map<string, number[]>;
  /** Set to make the server answer: a status (with optional retry-after) or null for a normal answer. */
  failNext: { status: number; retryAfter?: string; count: number; body?: string } | null;
  /** After this many answers, requests are held without an answer (until `holdAfter` is raised or null). */
  holdAfter: number | null;
  delayMs: number;
  /** Refuse `logprobs` with a 400 like weitiao's engine backend does. */
  refuseLogprobs: boolean;
  /** GET /models/{id} and /files/{id}/content answers, as weitiao serve gives them (empty: 404, like Ollama or vLLM). */
  models: Map<string, unknown>;
  files: Map<string, string>;
  /** Answers the requests held so far (set `holdAfter` to null first, or later ones are held again). */
  releaseHeld(): void;
  close(): Promise<void>;
}

const hash = (s: string) => [...s].reduce((h, c) => (Math.imul(h, 31) + c.codePointAt(0)!) >>> 0, 7);
const CHARS = '春夏秋冬山水花鸟风月天地日星云雨雪江河湖海森林田野城市街道房屋门窗桌椅书画茶酒饭菜鱼肉米面果蔬';

/** A sentence of pseudo-random Chinese characters seeded by `n` (distinct seeds give dissimilar text). */
export function pseudoSentence(n: number, length = 14): string {
  let x = n * 2654435761 + 1;
  let out = '';
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out += CHARS[(x >>> 8) % CHARS.length];
  }
  return out;
}

function answerFor(model: string, prompt: string): string {
  if (model === 'labeller') {
    if (prompt.includes('???')) return '不好说';
    return /好|快|香/u.test(prompt) ? '好评。' : '差评';
  }
  if (model === 'writer') {
    const n = Number(/\(#(\d+)\)/u.exec(prompt)?.[1] ?? hash(prompt));
    // Every fourth answer repeats one question: the near-duplicate filter must drop the copies.
    const user = n % 4 === 0 ? '同一个问题：这家店的外卖送得快吗？' : `${pseudoSentence(n)}？`;
    return `好的：\n{"user": "${user}", "assistant": "回答${n}：${pseudoSentence(n + 1000, 8)}"}`;
  }
  if (model === 'student') return '我不知道。';
  return `老师的回答：${prompt.slice(0, 20)}`;
}

export async function startStandIn(): Promise<StandIn> {
  const held: { res: ServerResponse; answer: () => void }[] = [];
  let answers = 0;
  const s: StandIn = {
    url: '',
    received: new Map(),
    answered: new Map(),
    arrivals: new Map(),
    failNext: null,
    holdAfter: null,
    delayMs: 0,
    refuseLogprobs: false,
    models: new Map(),
    files: new Map(),
    releaseHeld: () => {
      for (const h of held.splice(0)) h.answer();
    },
    close: async () => {
      for (const h of held) h.res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  const server: Server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== 'POST') {
      const url = decodeURI(req.url ?? '');
      const model = /\/v1\/models\/(.+)$/.exec(url)?.[1];
      const file = /\/v1\/files\/([^/]+)\/content$/.exec(url)?.[1];
      if (model && s.models.has(model)) return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(s.models.get(model)));
      if (file && s.files.has(file)) return void res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(s.files.get(file));
      return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"not found"}}');
    }
    let raw = '';
    for await (const chunk of req) raw += chunk;
    const body = JSON.parse(raw) as { model: string; messages: { role: string; content: string }[]; logprobs?: boolean; top_logprobs?: number };
    const lastUser = [...body.messages].reverse().find((m) => m.role === 'user')?.content ?? '';
    const key = body.model === 'student' || body.model === 'mentor' ? `${lastUser}@${body.model}` : lastUser;
    bump(s.received, key);
    s.arrivals.set(key, [...(s.arrivals.get(key) ?? []), Date.now()]);
    const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(payload));
    };
    if (s.failNext && s.failNext.count > 0) {
      s.failNext.count--;
      return send(s.failNext.status, { error: { message: s.failNext.body ?? 'slow down', type: 'rate_limit_error' } }, s.failNext.retryAfter ? { 'retry-after': s.failNext.retryAfter } : {});
    }
    if (body.logprobs && s.refuseLogprobs) return send(400, { error: { message: 'logprobs are not available on this backend', type: 'invalid_request_error', param: 'logprobs' } });
    const reply = () => {
      const content = answerFor(body.model, lastUser);
      const first = [...content][0];
      const logprobs = body.logprobs
        ? {
            content: [
              {
                token: first,
                logprob: Math.log(0.8),
                top_logprobs: [
                  { token: first, logprob: Math.log(0.8) },
                  { token: first === '好' ? '差' : '好', logprob: Math.log(0.15) },
                  { token: '中', logprob: Math.log(0.05) },
                ].slice(0, body.top_logprobs ?? 0),
              },
            ],
          }
        : null;
      bump(s.answered, key);
      send(200, {
        id: 'chatcmpl-standin',
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: body.model,
        choices: [{ index: 0, message: { role: 'assistant', content }, logprobs, finish_reason: 'stop' }],
        usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 },
      });
    };
    if (s.holdAfter !== null && answers >= s.holdAfter) {
      held.push({ res, answer: () => (answers++, reply()) });
      return;
    }
    answers++;
    if (s.delayMs) await new Promise((r) => setTimeout(r, s.delayMs));
    reply();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  s.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  return s;
}
