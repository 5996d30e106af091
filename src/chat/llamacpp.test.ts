// The llama.cpp backend through `weitiao serve` (startServer on 127.0.0.1) with the official openai SDK,
// on the tiny waimai model exported to GGUF by the engine's own `export`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { startServer, type RunningServer } from '../api/index.js';
import { REPO_ROOT } from '../testing/waimai.js';
import { setUpServing, type ServingFixture } from '../testing/chat-fixture.js';

let fx: ServingFixture;
let server: RunningServer;
let client: OpenAI;

const MESSAGES: OpenAI.ChatCompletionMessageParam[] = [
  { role: 'system', content: '你是一位外卖评论好评差评评论专家。' },
  { role: 'user', content: '味道不错，送餐也很快，下次还点！' },
];

async function api(method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${server.url}${route}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, json: await res.json() };
}

const deploy = (body: Record<string, unknown>) => api('POST', '/v1/weitiao/models/tiny/deployment', body);

/** Streams one answer, noting each content chunk's arrival in `events` as `tag`. */
async function streamTagged(tag: string, events: string[], params: Partial<OpenAI.ChatCompletionCreateParamsStreaming> = {}): Promise<string> {
  const stream = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, temperature: 0, max_tokens: 24, stream: true, ...params });
  let text = '';
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.delta.content;
    if (piece) {
      events.push(tag);
      text += piece;
    }
  }
  return text;
}

before(async () => {
  fx = await setUpServing('serve-llamacpp');
  server = await startServer(fx.ctx, { port: 0, auth: false, worker: false, handleSignals: false, webDir: null, log: () => {} });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  await server?.close();
  fx?.close();
});

describe('llama.cpp deployment', () => {
  test('deployed over the API, listed with its state, and streamed by the openai SDK', async () => {
    const deployed = await deploy({ backend: 'llamacpp', gguf: fx.gguf, parallel: 2, context_size: 256 });
    assert.equal(deployed.status, 200, JSON.stringify(deployed.json));
    assert.equal(deployed.json.object, 'weitiao.deployment');
    assert.deepEqual([deployed.json.backend, deployed.json.state, deployed.json.config.parallel], ['llamacpp', 'ready', 2]);
    assert.ok(!path.isAbsolute(deployed.json.config.gguf), 'no server path in the answer');

    const listed = (await client.models.list()).data.find((m) => m.id === 'tiny') as any;
    assert.deepEqual([listed.weitiao.deployment.backend, listed.weitiao.deployment.state], ['llamacpp', 'ready']);
    assert.equal(((await client.models.retrieve('tiny')) as any).weitiao.deployment.replicas, 1);

    const stream = await client.chat.completions.create({
      model: 'tiny',
      messages: MESSAGES,
      temperature: 0,
      max_tokens: 16,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    assert.ok(chunks.every((c) => c.id === chunks[0].id && c.model === 'tiny' && c.object === 'chat.completion.chunk'));
    const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
    assert.equal(finish.length, 1);
    const usage = chunks.at(-1)!;
    assert.deepEqual(usage.choices, []);
    const streamed = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');

    // The same greedy answer without streaming: equal text, reason and counts.
    const whole = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, temperature: 0, max_tokens: 16 });
    assert.equal(whole.choices[0].message.content, streamed);
    assert.equal(whole.choices[0].finish_reason, finish[0].choices[0].finish_reason);
    assert.deepEqual(whole.usage, usage.usage);
    assert.ok(whole.usage!.prompt_tokens > 10 && whole.usage!.completion_tokens <= 16);
    if (whole.choices[0].finish_reason === 'length') assert.equal(whole.usage!.completion_tokens, 16);
  });

  test('n choices, seeded sampling, stop strings and logprobs', async () => {
    const params = { model: 'tiny', messages: MESSAGES, temperature: 1, seed: 11, max_tokens: 12, n: 3 };
    const first = await client.chat.completions.create(params);
    assert.deepEqual(first.choices.map((c) => c.index), [0, 1, 2]);
    assert.ok(new Set(first.choices.map((c) => c.message.content)).size > 1, 'choices are sampled with different seeds');
    assert.deepEqual((await client.chat.completions.create(params)).choices.map((c) => c.message.content), first.choices.map((c) => c.message.content));
    assert.equal(first.usage!.total_tokens, first.usage!.prompt_tokens + first.usage!.completion_tokens);

    const greedy = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, temperature: 0, max_tokens: 20, logprobs: true, top_logprobs: 2 });
    const text = greedy.choices[0].message.content!;
    const entries = greedy.choices[0].logprobs!.content!;
    assert.ok(entries.length > 0);
    for (const e of entries) {
      assert.equal(e.top_logprobs.length, 2);
      assert.ok(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob && e.logprob <= 0);
      assert.equal(e.logprob, e.top_logprobs[0].logprob, 'greedy picks the most likely token');
    }
    if (greedy.choices[0].finish_reason === 'length') assert.equal(entries.length, greedy.usage!.completion_tokens);

    // A stop string from the middle of the greedy answer cuts it just before its first occurrence, streamed or not.
    const chars = [...text].filter((ch) => ch !== '\uFFFD');
    const stop = chars.slice(2, 4).join('');
    assert.ok(stop.length > 0, `answer too short to cut: ${JSON.stringify(text)}`);
    const cut = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, temperature: 0, max_tokens: 20, stop: [stop] });
    assert.equal(cut.choices[0].message.content, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
    const events: string[] = [];
    assert.equal(await streamTagged('s', events, { max_tokens: 20, stop: [stop] }), cut.choices[0].message.content);
  });

  test('concurrent requests are decoded together; past `parallel` they queue for a sequence', async () => {
    const events: string[] = [];
    // parallel 2: A and B share the context's batch, C waits for a free sequence.
    const [a, b, c] = await Promise.all([streamTagged('A', events), streamTagged('B', events), streamTagged('C', events)]);
    assert.ok(a && b && c);
    const first = (t: string) => events.indexOf(t);
    const last = (t: string) => events.lastIndexOf(t);
    assert.ok(first('B') < last('A') && first('A') < last('B'), `A and B overlap: ${events.join('')}`);
    assert.ok(first('C') > Math.min(last('A'), last('B')), `C starts after A or B ended: ${events.join('')}`);
    assert.equal(a, b, 'the same greedy answer whichever sequence decoded it');
  });

  test('a request longer than the context is a 400 context_length_exceeded naming messages, streamed or not', async () => {
    const long: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: '味道不错，送餐也很快'.repeat(200) }];
    for (const stream of [false, true]) {
      await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: long, stream }), (e: any) => {
        assert.ok(e instanceof OpenAI.BadRequestError, String(e));
        assert.equal(e.code, 'context_length_exceeded');
        assert.equal(e.param, 'messages');
        assert.match(e.message, /context is \d+ tokens/);
        return true;
      });
    }
    await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 1000 }), (e: any) => e.code === 'context_length_exceeded');
  });

  test('the engine backend: logprobs are a 400 naming the backend, n answers one after another', async () => {
    const deployed = await deploy({ backend: 'engine' });
    assert.deepEqual([deployed.status, deployed.json.backend, deployed.json.state], [200, 'engine', 'ready']);
    await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: MESSAGES, logprobs: true }), (e: any) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.param, 'logprobs');
      assert.match(e.message, /engine backend/);
      return true;
    });
    const two = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, temperature: 0, max_tokens: 6, n: 2 });
    assert.equal(two.choices.length, 2);
    assert.equal(two.choices[0].message.content, two.choices[1].message.content, 'greedy: both choices agree');
  });

  test('undeployed over the API, then deployed and undeployed by the CLI while the server runs', async () => {
    const stopped = await api('DELETE', '/v1/weitiao/models/tiny/deployment');
    assert.deepEqual([stopped.status, stopped.json.state], [200, 'stopped']);
    assert.equal((await api('GET', '/v1/weitiao/models/tiny/deployment')).status, 404);
    assert.equal(((await client.models.retrieve('tiny')) as any).weitiao.deployment, null);
    assert.equal((await api('DELETE', '/v1/weitiao/models/tiny/deployment')).status, 404);
    assert.equal((await deploy({ backend: 'vllm', gguf: fx.gguf })).json.error.param, 'gguf');

    const cli = (...args: string[]) =>
      promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', '--home', fx.ctx.home.root, ...args], { cwd: REPO_ROOT });
    const out = await cli('models', 'deploy', 'tiny', '--backend', 'llamacpp', '--gguf', fx.gguf, '--parallel', '3', '--context-size', '128', '--json');
    assert.deepEqual([JSON.parse(out.stdout).state, JSON.parse(out.stdout).config.parallel], ['ready', 3]);
    assert.match((await cli('models', 'list')).stdout, /llamacpp ×1 \(3 seq\) ready/);
    // The server reads the deployment at its next request: llama.cpp answers (the engine refuses logprobs).
    const answer = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 4, logprobs: true });
    assert.ok(answer.choices[0].logprobs!.content!.length > 0);
    assert.equal((await api('GET', '/v1/weitiao/models/tiny/deployment')).json.config.context_size, 128);
    assert.match((await cli('models', 'undeploy', 'tiny')).stdout, /undeployed tiny/);
    assert.equal(((await client.models.retrieve('tiny')) as any).weitiao.deployment, null);
  });
});
