/**
 * Chat completions over base and fine-tuned models, and OpenAI's wire objects for them.
 *
 * ```ts
 * const result = await chatCompletion(ctx, { model: 'ft:tiny:waimai:abc', messages: [{ role: 'user', content: '很好吃' }] },
 *   { onToken: (t) => process.stdout.write(t) });
 * toChatCompletion(completionMeta('ft:tiny:waimai:abc'), result); // {id: 'chatcmpl-…', object: 'chat.completion', …}
 * ```
 * The API and the CLI both go through `chatCompletion` / `streamChatCompletion`, so validation, model
 * resolution and the wire shapes live here once.
 */
import { z } from 'zod';
import type { Context } from '../context.js';
import type { ChatRequest, ChatResult } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { resolveModel } from '../models/index.js';
import { newId, now } from '../store/index.js';
import { generate } from './internal/runner.js';

/** Stops the warm inference process; call it on server shutdown (a later chat request starts it again). */
export { closeChatEngine } from './internal/runner.js';

// ---------------------------------------------------------------------------------------------- request

const TextPart = z.object({ type: z.literal('text'), text: z.string() });

const Message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  // OpenAI allows text parts and null (an assistant turn that only called tools).
  content: z.union([z.string(), z.array(TextPart), z.null()]).optional(),
  name: z.string().optional(),
});

/** The request body of `POST /v1/chat/completions` (the parameters weitiao honours; others are ignored). */
export const ChatCompletionParams = z.object({
  model: z.string().min(1),
  messages: z.array(Message).min(1),
  /** Deprecated by OpenAI in favour of max_completion_tokens; either works, the latter wins. */
  max_tokens: z.number().int().positive().nullish(),
  max_completion_tokens: z.number().int().positive().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(4)]).nullish(),
  seed: z.number().int().nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  n: z.literal(1).nullish(),
  user: z.string().optional(),
});
export type ChatCompletionParams = z.input<typeof ChatCompletionParams>;

export type FinishReason = 'stop' | 'length';
export type Usage = ChatResult['usage'];
/** What a completion comes to: the text, why it ended, and the token counts. */
export type ChatCompletionResult = ChatResult;

export interface ChatCompletionOptions {
  /** Each piece of text as it is generated; the pieces concatenate to the result's `text`. */
  onToken?: (text: string) => void;
  signal?: AbortSignal;
}

/** Validates the request, resolves the model and generates the answer. */
export async function chatCompletion(ctx: Context, params: ChatCompletionParams, options: ChatCompletionOptions = {}): Promise<ChatCompletionResult> {
  const request = prepareChat(ctx, params);
  return generate(request, options);
}

/** The engine request for `params`: every check that can fail before generation starts. */
function prepareChat(ctx: Context, params: ChatCompletionParams): ChatRequest {
  const parsed = ChatCompletionParams.safeParse(params);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const param = formatPath(issue.path);
    throw new WeitiaoError('invalid_request', `${param ? `${param}: ` : ''}${issue.message} / 请求参数无效`, { param: param || undefined });
  }
  const p = parsed.data;
  const resolved = resolveModel(ctx, p.model);
  const stop = p.stop == null ? [] : typeof p.stop === 'string' ? [p.stop] : p.stop;
  return {
    model: resolved.basePath,
    adapter: resolved.adapterPath,
    messages: p.messages.map((m) => ({
      role: m.role,
      content: m.content == null ? '' : typeof m.content === 'string' ? m.content : m.content.map((part) => part.text).join(''),
    })),
    max_tokens: p.max_completion_tokens ?? p.max_tokens ?? undefined,
    temperature: p.temperature ?? undefined,
    // OpenAI accepts top_p 0 (only the most likely token); the engine's nucleus always keeps that one.
    top_p: p.top_p == null ? undefined : Math.max(p.top_p, 1e-6),
    stop: stop.filter((s) => s !== ''),
    seed: p.seed ?? null,
    stream: true,
  };
}

/** `['messages', 1, 'role']` -> `messages[1].role`, the form OpenAI puts in `error.param`. */
function formatPath(parts: readonly PropertyKey[]): string {
  let out = '';
  for (const part of parts) out += typeof part === 'number' ? `[${part}]` : out ? `.${String(part)}` : String(part);
  return out;
}

// ------------------------------------------------------------------------------------------ wire objects

const UsageSchema = z.object({ prompt_tokens: z.number().int(), completion_tokens: z.number().int(), total_tokens: z.number().int() });
const FinishReasonSchema = z.enum(['stop', 'length']);

/** OpenAI's `chat.completion` object. */
export const ChatCompletion = z.object({
  id: z.string(),
  object: z.literal('chat.completion'),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.object({
      index: z.number().int(),
      message: z.object({ role: z.literal('assistant'), content: z.string(), refusal: z.null() }),
      logprobs: z.null(),
      finish_reason: FinishReasonSchema,
    }),
  ),
  usage: UsageSchema,
});
export type ChatCompletion = z.infer<typeof ChatCompletion>;

/** OpenAI's `chat.completion.chunk` object, one per server-sent event. */
export const ChatCompletionChunk = z.object({
  id: z.string(),
  object: z.literal('chat.completion.chunk'),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(
    z.object({
      index: z.number().int(),
      delta: z.object({ role: z.literal('assistant').optional(), content: z.string().optional() }),
      logprobs: z.null(),
      finish_reason: FinishReasonSchema.nullable(),
    }),
  ),
  /** Only with `stream_options.include_usage`: null on every chunk but the last, which has no choices. */
  usage: UsageSchema.nullable().optional(),
});
export type ChatCompletionChunk = z.infer<typeof ChatCompletionChunk>;

/** What every object of one completion shares: its id, creation time and model. */
export interface CompletionMeta {
  id: string;
  created: number;
  model: string;
}

/** A fresh `chatcmpl-…` id and the current time for a completion of `model`. */
export function completionMeta(model: string): CompletionMeta {
  return { id: newId('chatcmpl'), created: now(), model };
}

/** The `chat.completion` object for a finished answer. */
export function toChatCompletion(meta: CompletionMeta, result: ChatCompletionResult): ChatCompletion {
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: [{ index: 0, message: { role: 'assistant', content: result.text, refusal: null }, logprobs: null, finish_reason: result.finish_reason }],
    usage: { ...result.usage },
  };
}

/**
 * One `chat.completion.chunk`: a delta (`{role}` first, then `{content}` pieces, then `{}` with the
 * finish reason), or, with `usage` and no delta, the closing usage chunk whose `choices` is empty.
 */
export function toChatCompletionChunk(
  meta: CompletionMeta,
  part: { delta?: { role?: 'assistant'; content?: string }; finish_reason?: FinishReason | null; usage?: Usage | null },
): ChatCompletionChunk {
  const chunk: ChatCompletionChunk = {
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    choices: part.delta === undefined && part.usage ? [] : [{ index: 0, delta: part.delta ?? {}, logprobs: null, finish_reason: part.finish_reason ?? null }],
  };
  if (part.usage !== undefined) chunk.usage = part.usage;
  return chunk;
}

/**
 * The answer as OpenAI's stream of chunks: role, content pieces, finish reason, then (with
 * `includeUsage`) a usage chunk. Validation and model errors throw before the first chunk; ending the
 * iteration early stops generation.
 */
export async function streamChatCompletion(
  ctx: Context,
  params: ChatCompletionParams,
  options: { signal?: AbortSignal; includeUsage?: boolean; meta?: CompletionMeta } = {},
): Promise<AsyncIterable<ChatCompletionChunk>> {
  const request = prepareChat(ctx, params);
  const meta = options.meta ?? completionMeta(params.model);
  const includeUsage = options.includeUsage ?? params.stream_options?.include_usage ?? false;
  const usageField = includeUsage ? { usage: null } : {};

  return {
    async *[Symbol.asyncIterator]() {
      const stop = new AbortController();
      const onAbort = () => stop.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      if (options.signal?.aborted) stop.abort();

      // Tokens arrive by callback; the generator hands them out in order as they come.
      const pieces: string[] = [];
      let wake: (() => void) | null = null;
      let settled: { result?: ChatCompletionResult; error?: unknown } | null = null;
      generate(request, { signal: stop.signal, onToken: (t) => (pieces.push(t), wake?.()) }).then(
        (result) => ((settled = { result }), wake?.()),
        (error) => ((settled = { error }), wake?.()),
      );
      try {
        yield toChatCompletionChunk(meta, { delta: { role: 'assistant', content: '' }, ...usageField });
        for (;;) {
          while (pieces.length) yield toChatCompletionChunk(meta, { delta: { content: pieces.shift()! }, ...usageField });
          if (settled) break;
          await new Promise<void>((resolve) => (wake = resolve));
          wake = null;
        }
        while (pieces.length) yield toChatCompletionChunk(meta, { delta: { content: pieces.shift()! }, ...usageField });
        const done = settled as { result?: ChatCompletionResult; error?: unknown };
        if (!done.result) throw done.error;
        yield toChatCompletionChunk(meta, { delta: {}, finish_reason: done.result.finish_reason, ...usageField });
        if (includeUsage) yield toChatCompletionChunk(meta, { usage: done.result.usage });
      } finally {
        options.signal?.removeEventListener('abort', onAbort);
        if (!settled) stop.abort(); // the consumer left early: stop generating
      }
    },
  };
}
