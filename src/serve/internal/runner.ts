/**
 * Where chat requests meet the engine. Today: one `chat` engine process per request, one request at a
 * time (two cores cannot run two models well, and a queue keeps answers from interleaving). The warm
 * inference process of the API replaces this module alone; `generate` keeps its signature.
 */
import { runEngine, type ChatRequest, type ChatResult } from '../../engine/index.js';
import { WeitiaoError } from '../../errors.js';

export interface GenerateOptions {
  onToken?: (text: string) => void;
  signal?: AbortSignal;
}

let tail: Promise<unknown> = Promise.resolve();

/** Runs one chat request after those already queued; aborting drops it from the queue or stops its engine. */
export function generate(request: ChatRequest, options: GenerateOptions = {}): Promise<ChatResult> {
  const { signal, onToken } = options;
  const slot = tail.then(() => {
    if (signal?.aborted) throw stopped();
    return runEngine('chat', request, {
      signal,
      onEvent: (event) => {
        if (event.type === 'token') onToken?.(event.text);
      },
    });
  });
  tail = slot.catch(() => {});
  if (!signal) return slot;
  // Waiting in the queue must not delay the caller's cancellation.
  return new Promise<ChatResult>((resolve, reject) => {
    const onAbort = () => reject(stopped());
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    slot.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

function stopped(): WeitiaoError {
  return new WeitiaoError('cancelled', 'the chat request was cancelled / 对话请求已取消');
}
