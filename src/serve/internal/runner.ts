/**
 * Where chat requests meet the engine: one warm inference process for this whole Node process
 * (src/engine/warm.ts). It holds each base model once, switches fine-tunes' adapters per request, and
 * answers one request at a time in arrival order, so concurrent answers never interleave.
 */
import type { ChatRequest, ChatResult } from '../../engine/index.js';
import { WarmEngine } from '../../engine/warm.js';

export interface GenerateOptions {
  onToken?: (text: string) => void;
  signal?: AbortSignal;
}

let engine: WarmEngine | undefined;

/**
 * The shared warm engine, created on first use. `WEITIAO_CHAT_IDLE_SECONDS` sets how long it stays up
 * without requests (default 600).
 */
export function chatEngine(): WarmEngine {
  const idle = Number(process.env.WEITIAO_CHAT_IDLE_SECONDS);
  engine ??= new WarmEngine(Number.isFinite(idle) && idle > 0 ? { idleTimeoutMs: idle * 1000 } : {});
  return engine;
}

/** Runs one chat request after those already queued; aborting drops it from the queue or stops its generation. */
export function generate(request: ChatRequest, options: GenerateOptions = {}): Promise<ChatResult> {
  const { signal, onToken } = options;
  return chatEngine().request('chat', request, {
    signal,
    onEvent: (event) => {
      if (event.type === 'token') onToken?.(event.text);
    },
  });
}

/** Stops the warm engine process (server shutdown); requests still pending fail. A later request starts it again. */
export async function closeChatEngine(): Promise<void> {
  await engine?.close();
}
