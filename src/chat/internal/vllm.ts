/**
 * The vLLM backend: a proxy to an external OpenAI-compatible server (vLLM, or anything speaking the same
 * API). The request body goes through as the client sent it, with `model` replaced by the name the server
 * serves it under; answers and stream chunks come back with the client's model name; the server's errors
 * become weitiao errors, so the client sees OpenAI's error shape with a fitting status.
 */
import { WeitiaoError, type ErrorCode } from '../../errors.js';

export interface VllmTarget {
  /** As the OpenAI SDK's baseURL: `http://host:8000/v1`. */
  baseUrl: string;
  servedModel: string;
  apiKey: string | null;
}

type Json = Record<string, unknown>;

/** A non-streamed chat completion from the server, `model` mapped back to `clientModel`. */
export async function proxyChatCompletion(target: VllmTarget, body: Json, clientModel: string, signal?: AbortSignal): Promise<Json> {
  const res = await send(target, { ...body, stream: false }, signal);
  const answer = (await res.json().catch(() => null)) as Json | null;
  if (!answer || typeof answer !== 'object') throw upstreamError(target, 502, 'the server answered with something that is not JSON');
  return { ...answer, model: clientModel };
}

/** The server's stream of `chat.completion.chunk`s, passed through one by one with `model` mapped back. */
export async function proxyChatStream(target: VllmTarget, body: Json, clientModel: string, signal?: AbortSignal): Promise<AsyncIterable<Json>> {
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  let res: Response;
  try {
    res = await send(target, { ...body, stream: true }, abort.signal);
  } catch (e) {
    signal?.removeEventListener('abort', onAbort);
    throw e;
  }
  return {
    async *[Symbol.asyncIterator]() {
      try {
        for await (const data of sseData(res)) {
          if (data === '[DONE]') return;
          let chunk: Json;
          try {
            chunk = JSON.parse(data) as Json;
          } catch {
            throw upstreamError(target, 502, `the stream carried an event that is not JSON: ${data.slice(0, 200)}`);
          }
          if (chunk.error) throw fromUpstreamBody(target, 500, chunk);
          yield { ...chunk, model: clientModel };
        }
      } finally {
        signal?.removeEventListener('abort', onAbort);
        abort.abort(); // the consumer left or the stream ended: close the upstream connection
      }
    },
  };
}

async function send(target: VllmTarget, body: Json, signal?: AbortSignal): Promise<Response> {
  const url = `${target.baseUrl.replace(/\/+$/, '')}/chat/completions`;
  let res: Response;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(target.apiKey ? { authorization: `Bearer ${target.apiKey}` } : {}) },
      body: JSON.stringify({ ...body, model: target.servedModel }),
      signal,
    });
  } catch (e) {
    if (signal?.aborted) throw new WeitiaoError('cancelled', 'the request was cancelled / 请求已取消');
    const why = (e as Error & { cause?: Error }).cause?.message ?? (e as Error).message;
    throw new WeitiaoError('unavailable', `the vLLM server at ${target.baseUrl} cannot be reached: ${why} / 无法连接 vLLM 服务`, { cause: e });
  }
  if (!res.ok) {
    const text = await res.text().catch(() => '');
    let parsed: Json | null = null;
    try {
      parsed = JSON.parse(text) as Json;
    } catch {
      /* not JSON: the text itself is the message */
    }
    throw parsed ? fromUpstreamBody(target, res.status, parsed) : upstreamError(target, res.status, text.slice(0, 500) || res.statusText);
  }
  return res;
}

/** OpenAI's `{error: {message, type, param, code}}` or vLLM's older flat `{object: 'error', message, …}`. */
function fromUpstreamBody(target: VllmTarget, status: number, body: Json): WeitiaoError {
  const e = (typeof body.error === 'object' && body.error ? body.error : body) as Json;
  const message = typeof e.message === 'string' ? e.message : JSON.stringify(body).slice(0, 500);
  const param = typeof e.param === 'string' ? e.param : undefined;
  const code = typeof e.code === 'string' ? e.code : typeof e.code === 'number' ? e.code : undefined;
  return upstreamError(target, typeof code === 'number' && code >= 400 ? code : status, message, param, code === 'context_length_exceeded');
}

function upstreamError(target: VllmTarget, status: number, message: string, param?: string, contextLength = false): WeitiaoError {
  const overflow = contextLength || (status === 400 && /maximum context length|context length|too long/i.test(message));
  const code: ErrorCode = overflow
    ? 'context_length_exceeded'
    : status === 400
      ? 'invalid_request'
      : status === 404
        ? 'not_found'
        : status === 422
          ? 'unprocessable'
          : status === 429
            ? 'rate_limited'
            : 'unavailable'; // its auth or its own failure: the deployment is at fault, not the client
  const text = `vLLM (${target.servedModel} at ${target.baseUrl}): ${message}`;
  return new WeitiaoError(code, code === 'unavailable' ? `${text} / vLLM 服务出错（HTTP ${status}）` : text, {
    param: overflow ? (param ?? 'messages') : param,
  });
}

/** The `data:` payloads of a server-sent-events body, in order. */
async function* sseData(res: Response): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true }).replace(/\r\n/g, '\n');
    let end: number;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const data = buf
        .slice(0, end)
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n');
      buf = buf.slice(end + 2);
      if (data) yield data;
    }
  }
}
