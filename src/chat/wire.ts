/**
 * OpenAI's chat wire shapes: the request weitiao honours, `chat.completion` and `chat.completion.chunk`,
 * and the functions that build them from a backend's result. Every backend answers through these (the
 * vLLM proxy passes its server's objects through as they are).
 */
import { z } from 'zod';
import { newId, now } from '../store/index.js';
import type { ChoiceOutput, FinishReason, TokenLogprob, Usage } from './internal/backend.js';

export type { FinishReason, TokenLogprob, Usage } from './internal/backend.js';

// ---------------------------------------------------------------------------------------------- request

const TextPart = z.object({ type: z.literal('text'), text: z.string() });

const Message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  // OpenAI allows text parts and null (an assistant turn that only called tools).
  content: z.union([z.string(), z.array(TextPart), z.null()]).optional(),
  name: z.string().optional(),
});

/**
 * The request body of `POST /v1/chat/completions`: the parameters weitiao honours. Other fields are kept
 * (not checked) so a vLLM deployment receives them as the client sent them.
 */
export const ChatCompletionParams = z.looseObject({
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
  /** Choices to generate (llama.cpp: decoded concurrently, one sequence each). */
  n: z.number().int().min(1).max(32).nullish(),
  /** Log probabilities of the answer's tokens (llama.cpp and vLLM deployments). */
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  user: z.string().optional(),
});
export type ChatCompletionParams = z.input<typeof ChatCompletionParams>;

// ------------------------------------------------------------------------------------------ wire objects

const UsageSchema = z.object({ prompt_tokens: z.number().int(), completion_tokens: z.number().int(), total_tokens: z.number().int() });
const FinishReasonSchema = z.enum(['stop', 'length']);
const TopLogprob = z.object({ token: z.string(), logprob: z.number(), bytes: z.array(z.number().int()).nullable() });
const Logprobs = z.object({ content: z.array(TopLogprob.extend({ top_logprobs: z.array(TopLogprob) })).nullable(), refusal: z.null() });

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
      logprobs: Logprobs.nullable(),
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
      logprobs: Logprobs.nullable(),
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

/** What a completion comes to: every choice, and choice 0's text and finish reason at the top for one-answer callers. */
export interface ChatCompletionResult {
  text: string;
  finish_reason: FinishReason;
  usage: Usage;
  /** Every choice (n > 1), with logprobs when asked for; absent = choice 0 above is the only one. */
  choices?: ChoiceOutput[];
}

/** The `chat.completion` object for a finished answer. */
export function toChatCompletion(meta: CompletionMeta, result: ChatCompletionResult): ChatCompletion {
  const choices = result.choices?.length ? result.choices : [{ index: 0, text: result.text, finish_reason: result.finish_reason, logprobs: null }];
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: choices.map((c) => ({
      index: c.index,
      message: { role: 'assistant', content: c.text, refusal: null },
      logprobs: c.logprobs ? { content: c.logprobs, refusal: null } : null,
      finish_reason: c.finish_reason,
    })),
    usage: { ...result.usage },
  };
}

/**
 * One `chat.completion.chunk`: a delta of choice `index` (`{role}` first, then `{content}` pieces, then
 * `{}` with the finish reason), or, with `usage` and no delta, the closing usage chunk whose `choices` is empty.
 */
export function toChatCompletionChunk(
  meta: CompletionMeta,
  part: {
    index?: number;
    delta?: { role?: 'assistant'; content?: string };
    logprobs?: TokenLogprob[] | null;
    finish_reason?: FinishReason | null;
    usage?: Usage | null;
  },
): ChatCompletionChunk {
  const chunk: ChatCompletionChunk = {
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    choices:
      part.delta === undefined && part.usage
        ? []
        : [
            {
              index: part.index ?? 0,
              delta: part.delta ?? {},
              logprobs: part.logprobs ? { content: part.logprobs, refusal: null } : null,
              finish_reason: part.finish_reason ?? null,
            },
          ],
  };
  if (part.usage !== undefined) chunk.usage = part.usage;
  return chunk;
}
