// Multi-LoRA on llama.cpp: two LoRA fine-tunes of one base, each deployed with its adapter GGUF over the
// base's GGUF, answered concurrently through weitiao serve, each as the engine answers that fine-tune.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { startServer, type RunningServer } from '../api/index.js';
import { chatCompletion, deployModel, undeployModel } from './index.js';
import { loraFineTune, setUpServing, type ServingFixture } from '../testing/chat-fixture.js';

let fx: ServingFixture;
let server: RunningServer;
let client: OpenAI;
const adapters: { model: string; lora: string }[] = [];

const MESSAGES: OpenAI.ChatCompletionMessageParam[] = [
  { role: 'system', content: '你是一位外卖评论好评差评评论专家。' },
  { role: 'user', content: '送餐太慢了，菜都凉了' },
];

before(async () => {
  fx = await setUpServing('serve-lora');
  adapters.push(await loraFineTune(fx, 'ft-a', 1), await loraFineTune(fx, 'ft-b', 2));
  server = await startServer(fx.ctx, { port: 0, auth: false, worker: false, handleSignals: false, webDir: null, log: () => {} });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  await server?.close();
  fx?.close();
});

describe('LoRA adapters of one base on llama.cpp', () => {
  test('each adapter answers greedily as the engine answers its fine-tune', async () => {
    const params = { messages: MESSAGES as never, temperature: 0, max_tokens: 8 };
    // No deployment yet: the engine's warm process answers (the reference).
    const engine = await Promise.all(adapters.map((a) => chatCompletion(fx.ctx, { model: a.model, ...params })));
    for (const a of adapters) {
      const d = await deployModel(fx.ctx, a.model, { backend: 'llamacpp', gguf: fx.gguf, lora: a.lora, parallel: 2, context_size: 256 });
      assert.deepEqual([d.state, d.config.lora !== null], ['ready', true]);
    }
    const llama = await Promise.all(adapters.map((a) => client.chat.completions.create({ model: a.model, ...params })));
    assert.deepEqual(
      llama.map((r) => r.choices[0].message.content),
      engine.map((r) => r.text),
    );
    assert.deepEqual(llama.map((r) => r.usage!.prompt_tokens), engine.map((r) => r.usage.prompt_tokens));
  });

  test('the two adapters differ from each other and are decoded at the same time', async () => {
    const first = await Promise.all(
      adapters.map((a) => client.chat.completions.create({ model: a.model, messages: MESSAGES, temperature: 0, max_tokens: 1, logprobs: true, top_logprobs: 3 })),
    );
    const tops = first.map((r) => JSON.stringify(r.choices[0].logprobs!.content![0].top_logprobs));
    assert.notEqual(tops[0], tops[1], 'each context applies its own adapter');

    const events: string[] = [];
    const answers = await Promise.all(
      adapters.map(async (a, i) => {
        const stream = await client.chat.completions.create({ model: a.model, messages: MESSAGES, temperature: 0, max_tokens: 24, stream: true });
        let text = '';
        for await (const chunk of stream) {
          const piece = chunk.choices[0]?.delta.content;
          if (piece) (events.push(String(i)), (text += piece));
        }
        return text;
      }),
    );
    assert.ok(answers.every(Boolean));
    assert.ok(events.indexOf('1') < events.lastIndexOf('0') && events.indexOf('0') < events.lastIndexOf('1'), `the adapters' streams overlap: ${events.join('')}`);
    await Promise.all(adapters.map((a) => undeployModel(fx.ctx, a.model)));
  });
});
