/**
 * /v1/chat/completions over base models, fine-tuned models and checkpoints, each answered by its
 * deployment's backend (src/chat): a `chat.completion`, or with `stream: true` server-sent
 * `chat.completion.chunk`s ending in `data: [DONE]`.
 */
import type { Context } from '../../context.js';
import { ChatCompletion, ChatCompletionParams, createChatCompletion, streamChatCompletion } from '../../chat/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';
import { sse } from '../internal/sse.js';

export function chatRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  routes.add(
    {
      method: 'post',
      path: '/v1/chat/completions',
      operationId: 'create_chat_completion',
      summary: 'Chat with a base model, a fine-tuned model or a checkpoint',
      tag: 'Chat',
      body: ChatCompletionParams,
      response: {
        description: 'The answer',
        schema: ChatCompletion,
        name: 'ChatCompletion',
        alternatives: {
          'text/event-stream':
            '`stream: true`: `data: {chat.completion.chunk}` events (role, content pieces, finish_reason, then usage with `stream_options.include_usage`), then `data: [DONE]`',
        },
      },
    },
    async (c, { body }) => {
      // The client hanging up stops generation: backends are shared (a sequence, the warm engine's queue).
      const hangUp = c.req.raw.signal;
      if (!body.stream) return c.json(await createChatCompletion(ctx, body, { signal: hangUp }));
      const stop = new AbortController();
      // Validation, model resolution and context overflow throw here, before the stream opens: a real 400/404.
      const chunks = await streamChatCompletion(ctx, body, { signal: stop.signal });
      return sse(c, async (out) => {
        out.signal.addEventListener('abort', () => stop.abort(), { once: true });
        for await (const chunk of chunks) await out.send(chunk);
        await out.send('[DONE]');
      });
    },
  );
}
