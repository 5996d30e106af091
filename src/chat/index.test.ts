// Chat completions through the real engine on a tiny model built from the waimai reviews.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { createTinyModel } from '../models/index.js';
import {
  ChatCompletion,
  ChatCompletionChunk,
  chatCompletion,
  closeChatEngine,
  completionMeta,
  streamChatCompletion,
  toChatCompletion,
  toChatCompletionChunk,
  type ChatCompletionParams,
} from './index.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(REPO, '../shared/data/waimai_10k.csv');

let home: string;
let ctx: Context;

before(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'weitiao-serve-'));
  ctx = openContext({ home });
  await createTinyModel(ctx, { name: 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024 });
});
after(async () => {
  await closeChatEngine();
  ctx.close();
  rmSync(home, { recursive: true, force: true });
});

/** Waits (up to 10 s) until this process has no engine child left. */
async function noEngineLeft(): Promise<void> {
  const engines = () =>
    execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.includes('weitiao_engine'));
  for (let i = 0; i < 100 && engines().length; i++) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(engines(), []);
}

const REVIEW: ChatCompletionParams['messages'] = [
  { role: 'system', content: '你是一位外卖评论好评差评评论专家。' },
  { role: 'user', content: '味道不错，送餐也很快，下次还点！' },
];

describe('chatCompletion', () => {
  test('greedy decoding is deterministic and the streamed pieces concatenate to the text', async () => {
    const pieces: string[] = [];
    const first = await chatCompletion(ctx, { model: 'tiny', messages: REVIEW, temperature: 0, max_tokens: 12 }, { onToken: (t) => pieces.push(t) });
    const second = await chatCompletion(ctx, { model: 'tiny', messages: REVIEW, temperature: 0, max_completion_tokens: 12, max_tokens: 50 });
    assert.deepEqual(second, first);
    assert.equal(pieces.join(''), first.text);
    assert.ok(first.usage.completion_tokens <= 12);
    if (first.finish_reason === 'length') assert.equal(first.usage.completion_tokens, 12);
    assert.equal(first.usage.total_tokens, first.usage.prompt_tokens + first.usage.completion_tokens);
    // The Chinese prompt is tokenized by the model's own BPE: fewer tokens than its UTF-8 bytes, template included.
    const bytes = Buffer.byteLength(REVIEW.map((m) => m.content as string).join(''));
    assert.ok(first.usage.prompt_tokens > 0 && first.usage.prompt_tokens < bytes, `prompt_tokens ${first.usage.prompt_tokens}, bytes ${bytes}`);
  });

  test('a seeded sample streams Chinese text, repeats with the same seed, and stops at a stop string', async () => {
    const params: ChatCompletionParams = { model: 'tiny', messages: REVIEW, temperature: 1, seed: 7, max_tokens: 24 };
    const stream = await streamChatCompletion(ctx, { ...params, stream: true, stream_options: { include_usage: true } });
    const chunks: ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(ChatCompletionChunk.parse(chunk));
    const meta = chunks[0];
    assert.match(meta.id, /^chatcmpl-/);
    assert.ok(chunks.every((c) => c.id === meta.id && c.model === 'tiny' && c.object === 'chat.completion.chunk'));
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    const usage = chunks.at(-1)!;
    assert.deepEqual(usage.choices, []);
    const finish = chunks.at(-2)!;
    assert.ok(finish.choices[0].finish_reason !== null);
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null));

    assert.equal(usage.usage!.total_tokens, usage.usage!.prompt_tokens + usage.usage!.completion_tokens);
    assert.match(text, /\p{Script=Han}/u, `a model whose vocabulary is waimai reviews writes Chinese: ${JSON.stringify(text)}`);

    // Same seed, same tokens: cut at a stop string taken from the middle of that answer, it ends just before it.
    const chars = [...text];
    assert.ok(chars.length >= 4, `a long enough answer to cut: ${JSON.stringify(text)}`);
    const stop = chars.slice(Math.floor(chars.length / 2), Math.floor(chars.length / 2) + 2).join('');
    const pieces: string[] = [];
    const cut = await chatCompletion(ctx, { ...params, stop: [stop, '不会出现的停止词'] }, { onToken: (t) => pieces.push(t) });
    assert.equal(cut.text, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.finish_reason, 'stop');
    assert.equal(pieces.join(''), cut.text);
  });

  test('aborting, or leaving a stream early, stops the answer; the warm engine serves on until closed', async () => {
    const greedy: ChatCompletionParams = { model: 'tiny', messages: REVIEW, temperature: 0, max_tokens: 12 };
    const expected = await chatCompletion(ctx, greedy);
    const stop = new AbortController();
    await assert.rejects(
      chatCompletion(ctx, { model: 'tiny', messages: REVIEW, max_tokens: 500, temperature: 1, seed: 1 }, { signal: stop.signal, onToken: () => stop.abort() }),
      { code: 'cancelled' },
    );
    // Nothing of the cancelled answer leaks into the next one.
    const pieces: string[] = [];
    assert.deepEqual(await chatCompletion(ctx, greedy, { onToken: (t) => pieces.push(t) }), expected);
    assert.equal(pieces.join(''), expected.text);

    const stream = await streamChatCompletion(ctx, { model: 'tiny', messages: REVIEW, max_tokens: 500, temperature: 1, seed: 1 });
    let contents = 0;
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content && ++contents === 2) break;
    assert.equal(contents, 2);
    assert.deepEqual(await chatCompletion(ctx, greedy), expected);
    await closeChatEngine();
    await noEngineLeft();
  });

  test('bad requests fail before any engine starts, naming the parameter', async () => {
    const bad: [ChatCompletionParams, string, string][] = [
      [{ model: 'tiny', messages: [{ role: 'bot' as 'user', content: '你好' }] }, 'invalid_request', 'messages[0].role'],
      [{ model: 'tiny', messages: [] }, 'invalid_request', 'messages'],
      [{ model: 'tiny', messages: REVIEW, temperature: 3 }, 'invalid_request', 'temperature'],
      [{ model: 'tiny', messages: REVIEW, n: 0 }, 'invalid_request', 'n'],
      [{ model: 'tiny', messages: REVIEW, top_logprobs: 2 }, 'invalid_request', 'top_logprobs'],
      [{ model: 'tiny', messages: REVIEW, stop: ['a', 'b', 'c', 'd', 'e'] }, 'invalid_request', 'stop'],
      [{ model: 'tiny-typo', messages: REVIEW }, 'not_found', 'model'],
    ];
    for (const [params, code, param] of bad) {
      const started = Date.now();
      await assert.rejects(chatCompletion(ctx, params), { code, param }, `${param}`);
      assert.ok(Date.now() - started < 1000);
    }
  });
});

describe('wire objects', () => {
  test('toChatCompletion and toChatCompletionChunk build OpenAI shapes', () => {
    const meta = completionMeta('ft:tiny:外卖:abc');
    const result = { text: '好评', finish_reason: 'stop' as const, usage: { prompt_tokens: 20, completion_tokens: 2, total_tokens: 22 } };
    const completion = ChatCompletion.parse(toChatCompletion(meta, result));
    assert.deepEqual(completion, {
      id: meta.id,
      object: 'chat.completion',
      created: meta.created,
      model: 'ft:tiny:外卖:abc',
      choices: [{ index: 0, message: { role: 'assistant', content: '好评', refusal: null }, logprobs: null, finish_reason: 'stop' }],
      usage: result.usage,
    });
    assert.match(meta.id, /^chatcmpl-[0-9a-z]{24}$/);
    assert.deepEqual(toChatCompletionChunk(meta, { delta: { content: '好' } }).choices, [{ index: 0, delta: { content: '好' }, logprobs: null, finish_reason: null }]);
    assert.equal('usage' in toChatCompletionChunk(meta, { delta: { content: '好' } }), false);
    const last = toChatCompletionChunk(meta, { usage: result.usage });
    assert.deepEqual([last.choices, last.usage], [[], result.usage]);
  });
});
