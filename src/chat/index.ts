/**
 * Chat completions over base and fine-tuned models, routed by each model's deployment (deployments.ts):
 * the engine's warm process (no deployment), llama.cpp in this process, or a vLLM server.
 *
 * ```ts
 * const result = await chatCompletion(ctx, { model: 'ft:tiny:waimai:abc', messages: [{ role: 'user', content: '很好吃' }] },
 *   { onToken: (t) => process.stdout.write(t) });
 * toChatCompletion(completionMeta('ft:tiny:waimai:abc'), result); // {id: 'chatcmpl-…', object: 'chat.completion', …}
 * ```
 * The API and the CLI both go through these functions, so validation, routing and the wire shapes live here once.
 */
import type { Context } from '../context.js';
import { parseOrThrow, WeitiaoError } from '../errors.js';
import type { ChoiceOutput, GenerationRequest, TokenLogprob } from './internal/backend.js';
import { closeAll, routeFor } from './internal/router.js';
import { proxyChatCompletion, proxyChatStream } from './internal/vllm.js';
import {
  ChatCompletionParams,
  completionMeta,
  toChatCompletion,
  toChatCompletionChunk,
  type ChatCompletion,
  type ChatCompletionChunk,
  type ChatCompletionResult,
  type CompletionMeta,
  type FinishReason,
} from './wire.js';

export * from './wire.js';
export { deployModel, undeployModel, retrieveDeployment, deploymentsByModel, Deployment, DeployParams, DeploymentBackend, DeploymentState } from './deployments.js';

/** Stops the warm inference process and every deployment this process loaded; call it on shutdown (later requests load again). */
export const closeChatEngine = closeAll;

export interface ChatCompletionOptions {
  /** Each piece of choice 0's text as it is generated; the pieces concatenate to the result's `text`. */
  onToken?: (text: string) => void;
  signal?: AbortSignal;
}

type Params = ChatCompletionParams & { model: string };

/** Validates the request, routes it to the model's backend and generates the answer. */
export async function chatCompletion(ctx: Context, params: ChatCompletionParams, options: ChatCompletionOptions = {}): Promise<ChatCompletionResult> {
  const p = parseParams(params);
  const route = await routeFor(ctx, p.model);
  if (route.kind === 'vllm') {
    // Streamed, so a caller printing tokens sees them as they come; the chunks add up to the same answer.
    const chunks = await proxyChatStream(route.target, { ...p, stream_options: { include_usage: true } }, p.model, options.signal);
    return assembleChunks(chunks as AsyncIterable<ChatCompletionChunk>, options.onToken);
  }
  const request = generationRequest(p);
  const result = await route.backend.generate(request, { signal: options.signal, onDelta: (i, text) => i === 0 && text && options.onToken?.(text) });
  const first = result.choices[0];
  return { text: first.text, finish_reason: first.finish_reason, usage: result.usage, choices: result.choices };
}

/** The `chat.completion` object (the API's non-streamed answer); a vLLM deployment's is its server's own, model mapped back. */
export async function createChatCompletion(ctx: Context, params: ChatCompletionParams, options: { signal?: AbortSignal } = {}): Promise<ChatCompletion> {
  const p = parseParams(params);
  const route = await routeFor(ctx, p.model);
  if (route.kind === 'vllm') return (await proxyChatCompletion(route.target, p, p.model, options.signal)) as ChatCompletion;
  const meta = completionMeta(p.model);
  return toChatCompletion(meta, await chatCompletion(ctx, p, options));
}

/**
 * The answer as OpenAI's stream of chunks: role, content pieces (with `index` per choice), finish
 * reasons, then (with `include_usage`) a usage chunk. Validation, model and context errors throw before
 * the first chunk; ending the iteration early stops generation.
 */
export async function streamChatCompletion(
  ctx: Context,
  params: ChatCompletionParams,
  options: { signal?: AbortSignal; includeUsage?: boolean; meta?: CompletionMeta } = {},
): Promise<AsyncIterable<ChatCompletionChunk>> {
  const p = parseParams(params);
  const route = await routeFor(ctx, p.model);
  if (route.kind === 'vllm') return (await proxyChatStream(route.target, p, p.model, options.signal)) as AsyncIterable<ChatCompletionChunk>;
  const request = generationRequest(p);
  route.backend.validate(request);
  const backend = route.backend;
  const meta = options.meta ?? completionMeta(p.model);
  const includeUsage = options.includeUsage ?? p.stream_options?.include_usage ?? false;
  const usageField = includeUsage ? { usage: null } : {};

  return {
    async *[Symbol.asyncIterator]() {
      const stop = new AbortController();
      const onAbort = () => stop.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      if (options.signal?.aborted) stop.abort();

      // Pieces arrive by callback; the generator hands them out in order as they come.
      const pieces: { index: number; text: string; logprobs: TokenLogprob[] | null }[] = [];
      let wake: (() => void) | null = null;
      let settled: { result?: { choices: ChoiceOutput[]; usage: ChatCompletionResult['usage'] }; error?: unknown } | null = null;
      backend
        .generate(request, { signal: stop.signal, onDelta: (index, text, logprobs) => (pieces.push({ index, text, logprobs }), wake?.()) })
        .then(
          (result) => ((settled = { result }), wake?.()),
          (error) => ((settled = { error }), wake?.()),
        );
      const piece = (x: (typeof pieces)[number]) =>
        toChatCompletionChunk(meta, { index: x.index, delta: { content: x.text }, logprobs: x.logprobs, ...usageField });
      try {
        for (let index = 0; index < request.n; index++) {
          yield toChatCompletionChunk(meta, { index, delta: { role: 'assistant', content: '' }, ...usageField });
        }
        for (;;) {
          while (pieces.length) yield piece(pieces.shift()!);
          if (settled) break;
          await new Promise<void>((resolve) => (wake = resolve));
          wake = null;
        }
        while (pieces.length) yield piece(pieces.shift()!);
        const done = settled as { result?: { choices: ChoiceOutput[]; usage: ChatCompletionResult['usage'] }; error?: unknown };
        if (!done.result) throw done.error;
        for (const c of done.result.choices) yield toChatCompletionChunk(meta, { index: c.index, delta: {}, finish_reason: c.finish_reason, ...usageField });
        if (includeUsage) yield toChatCompletionChunk(meta, { usage: done.result.usage });
      } finally {
        options.signal?.removeEventListener('abort', onAbort);
        if (!settled) stop.abort(); // the consumer left early: stop generating
      }
    },
  };
}

// --------------------------------------------------------------------------------------------- helpers

function parseParams(params: ChatCompletionParams): Params {
  const p = parseOrThrow(ChatCompletionParams, params) as Params;
  if (p.top_logprobs != null && !p.logprobs) {
    throw new WeitiaoError('invalid_request', 'top_logprobs needs logprobs: true / 使用 top_logprobs 须同时设置 logprobs: true', { param: 'top_logprobs' });
  }
  return p;
}

/** OpenAI's parameters as a backend's settings, defaults resolved. */
function generationRequest(p: Params): GenerationRequest {
  const stop = p.stop == null ? [] : typeof p.stop === 'string' ? [p.stop] : p.stop;
  return {
    messages: p.messages.map((m) => ({
      role: m.role,
      content: m.content == null ? '' : typeof m.content === 'string' ? m.content : m.content.map((part) => part.text).join(''),
    })),
    maxTokens: p.max_completion_tokens ?? p.max_tokens ?? null,
    temperature: p.temperature ?? 1,
    topP: p.top_p ?? 1,
    stop: stop.filter((s) => s !== ''),
    seed: p.seed ?? null,
    n: p.n ?? 1,
    logprobs: p.logprobs ?? false,
    topLogprobs: p.top_logprobs ?? 0,
  };
}

/** Chunks (a proxied stream) added up into one result. */
async function assembleChunks(chunks: AsyncIterable<ChatCompletionChunk>, onToken?: (text: string) => void): Promise<ChatCompletionResult> {
  const choices = new Map<number, ChoiceOutput>();
  let usage: ChatCompletionResult['usage'] = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
  for await (const chunk of chunks) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices ?? []) {
      const choice = choices.get(c.index) ?? { index: c.index, text: '', finish_reason: 'stop' as FinishReason, logprobs: null };
      choices.set(c.index, choice);
      const text = c.delta?.content ?? '';
      choice.text += text;
      if (text && c.index === 0) onToken?.(text);
      if (c.logprobs?.content) choice.logprobs = [...(choice.logprobs ?? []), ...c.logprobs.content];
      if (c.finish_reason) choice.finish_reason = c.finish_reason === 'length' ? 'length' : 'stop';
    }
  }
  const list = [...choices.values()].sort((a, b) => a.index - b.index);
  if (!list.length) list.push({ index: 0, text: '', finish_reason: 'stop', logprobs: null });
  return { text: list[0].text, finish_reason: list[0].finish_reason, usage, choices: list };
}

