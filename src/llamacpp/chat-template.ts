/**
 * A GGUF's own chat template (`tokenizer.chat_template`) rendered the way transformers'
 * `apply_chat_template` renders it, and the rendered prompt turned into tokens. Serving (src/chat) and
 * the post-export check both prompt llama.cpp through here, so a template or stop token written wrong into
 * an export shows up instead of being papered over by a hand-written wrapper.
 *
 * ```ts
 * const tokens = chatPromptTokens(model, [{ role: 'user', content: '很好吃' }]);
 * ```
 */
import { Template } from '@huggingface/jinja';
import type { LlamaModel, Token } from 'node-llama-cpp';
import { WeitiaoError } from '../errors.js';

export interface PromptMessage {
  role: string;
  content: string;
}

const compiled = new WeakMap<LlamaModel, Template>();

/** The model's chat template, compiled once per loaded model; a GGUF without one is refused. */
function templateOf(model: LlamaModel): Template {
  let template = compiled.get(model);
  if (!template) {
    const source = (model.fileInfo.metadata as { tokenizer?: { chat_template?: unknown } }).tokenizer?.chat_template;
    if (typeof source !== 'string' || !source.trim()) {
      throw new WeitiaoError('invalid_request', 'this GGUF has no tokenizer.chat_template: it cannot answer chat messages / 此 GGUF 没有聊天模板', {
        param: 'model',
      });
    }
    try {
      template = new Template(source);
    } catch (e) {
      throw new WeitiaoError('invalid_request', `the GGUF's chat template does not parse: ${(e as Error).message} / 聊天模板无法解析`, { param: 'model' });
    }
    compiled.set(model, template);
  }
  return template;
}

/** The prompt text for `messages`, ending with the assistant turn's opening (add_generation_prompt). */
export function renderChatPrompt(model: LlamaModel, messages: readonly PromptMessage[]): string {
  try {
    return templateOf(model).render({
      messages,
      add_generation_prompt: true,
      bos_token: model.tokens.bosString ?? '',
      eos_token: model.tokens.eosString ?? '',
    });
  } catch (e) {
    if (e instanceof WeitiaoError) throw e;
    // Templates raise on what they refuse (e.g. roles out of order): the caller's messages are at fault.
    throw new WeitiaoError('invalid_request', `the model's chat template refused these messages: ${(e as Error).message} / 聊天模板不接受这些消息`, {
      param: 'messages',
    });
  }
}

/**
 * The rendered prompt as tokens: special tokens in the template text (`<|im_start|>`) parsed as such, and
 * BOS prepended only when the model asks for it and the template did not already write it.
 */
export function chatPromptTokens(model: LlamaModel, messages: readonly PromptMessage[]): Token[] {
  const tokens = model.tokenize(renderChatPrompt(model, messages), true);
  const bos = model.tokens.bos;
  if (bos != null && model.tokens.shouldPrependBosToken && tokens[0] !== bos) tokens.unshift(bos);
  return tokens;
}
