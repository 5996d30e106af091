/**
 * Where chat requests meet the engine: one warm inference process for this whole Node process
 * (src/engine/warm.ts). It holds each base model once, switches fine-tunes' adapters per request, and
 * answers one request at a time in arrival order, so concurrent answers never interleave. This is the
 * backend of every model without a deployment: a fresh fine-tune can be tried at once, before any export.
 */
import type { ChatRequest, ChatResult } from '../../engine/index.js';
import { WarmEngine } from '../../engine/warm.js';
import { WeitiaoError } from '../../errors.js';
import { sumUsage, type Backend, type GenerationHooks, type GenerationRequest, type GenerationResult } from './backend.js';

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

/** A model served by the warm engine: its base directory and, for a fine-tune, the adapter. */
export class EngineBackend implements Backend {
  readonly name = 'engine';

  constructor(private readonly model: { basePath: string; adapterPath: string | null }) {}

  /** `n` choices are `n` generations one after another (seeds seed, seed+1, … so they differ). */
  validate(request: GenerationRequest): void {
    if (request.logprobs) {
      throw new WeitiaoError(
        'invalid_request',
        'logprobs are not supported by the engine backend; deploy the model on llama.cpp (`weitiao models deploy <model> --backend llamacpp`) / 引擎后端不支持 logprobs',
        { param: 'logprobs' },
      );
    }
  }

  async generate(request: GenerationRequest, hooks: GenerationHooks = {}): Promise<GenerationResult> {
    this.validate(request);
    const choices: GenerationResult['choices'] = [];
    const completion: number[] = [];
    let promptTokens = 0;
    for (let index = 0; index < request.n; index++) {
      const result = await generate(
        {
          model: this.model.basePath,
          adapter: this.model.adapterPath,
          messages: request.messages,
          max_tokens: request.maxTokens ?? undefined,
          temperature: request.temperature,
          // OpenAI accepts top_p 0 (only the most likely token); the engine's nucleus always keeps that one.
          top_p: Math.max(request.topP, 1e-6),
          stop: request.stop,
          seed: request.seed == null ? null : request.seed + index,
          stream: true,
        },
        { signal: hooks.signal, onToken: (text) => hooks.onDelta?.(index, text, null) },
      );
      choices.push({ index, text: result.text, finish_reason: result.finish_reason, logprobs: null });
      completion.push(result.usage.completion_tokens);
      promptTokens = result.usage.prompt_tokens;
    }
    return { choices, usage: sumUsage(promptTokens, completion) };
  }

  /** The warm process is shared by every engine-served model; closeChatEngine stops it. */
  async close(): Promise<void> {}
}
