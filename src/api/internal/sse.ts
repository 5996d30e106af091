/**
 * Server-sent events over Hono's streamSSE, with the three things every weitiao stream needs: a signal
 * that aborts when the client goes away (so the engine or the follower stops), keep-alive comments (so
 * proxies do not cut an idle job stream), and errors after the headers are sent written as OpenAI does,
 * `data: {"error": {...}}`, which the official SDK turns into an APIError.
 */
import type { Context as HonoContext } from 'hono';
import { streamSSE } from 'hono/streaming';
import { publicError } from './errors.js';

export interface SseWriter {
  /** One `data:` event; objects are JSON-encoded. */
  send(data: unknown, options?: { event?: string; id?: string }): Promise<void>;
  readonly signal: AbortSignal;
}

export interface SseOptions {
  /** A `: keep-alive` comment this often while nothing else is sent. */
  keepAliveMs?: number;
}

/** Streams `run`'s events; resolves the response at once and runs `run` in the background. */
export function sse(c: HonoContext, run: (out: SseWriter) => Promise<void>, options: SseOptions = {}): Response {
  const keepAliveMs = options.keepAliveMs ?? 15_000;
  c.header('X-Accel-Buffering', 'no'); // nginx: pass events through as they come
  return streamSSE(c, async (stream) => {
    const ac = new AbortController();
    const abort = () => ac.abort();
    stream.onAbort(abort);
    c.req.raw.signal.addEventListener('abort', abort, { once: true });
    let lastWrite = Date.now();
    const ping = setInterval(() => {
      if (Date.now() - lastWrite >= keepAliveMs) void stream.write(': keep-alive\n\n');
    }, Math.max(50, Math.floor(keepAliveMs / 2)));
    const out: SseWriter = {
      signal: ac.signal,
      async send(data, opts = {}) {
        if (ac.signal.aborted) return;
        lastWrite = Date.now();
        await stream.writeSSE({ data: typeof data === 'string' ? data : JSON.stringify(data), ...opts });
      },
    };
    try {
      await run(out);
    } catch (err) {
      // The status line has gone out: the error travels as an event, as OpenAI sends it.
      if (!ac.signal.aborted) await stream.writeSSE({ data: JSON.stringify(publicError(c, err).toJSON()) });
    } finally {
      clearInterval(ping);
      c.req.raw.signal.removeEventListener('abort', abort);
      ac.abort();
    }
  });
}
