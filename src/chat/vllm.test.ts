// The vLLM backend: weitiao serve proxies /v1/chat/completions to an OpenAI-compatible server. A small
// stand-in server (127.0.0.1, started here) answers as vLLM does, including its error shapes.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { startServer, type RunningServer } from '../api/index.js';
import { openContext, type Context } from '../context.js';
import { registerModel } from '../models/index.js';
import { chatCompletion } from './index.js';

let tmp: string;
let ctx: Context;
let server: RunningServer;
let client: OpenAI;
let standIn: http.Server;
let standInUrl: string;
const received: { body: any; authorization?: string }[] = [];

/** Answers like `vllm serve … --served-model-name waimai-lora`: fixed text, vLLM's flat error body for overlong prompts. */
function startStandIn(): Promise<void> {
  standIn = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c) => (raw += c));
    req.on('end', () => {
      const body = JSON.parse(raw);
      received.push({ body, authorization: req.headers.authorization });
      const prompt = body.messages.at(-1).content as string;
      if (req.url !== '/v1/chat/completions' || body.model !== 'waimai-lora') {
        res.writeHead(404, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ object: 'error', message: `The model \`${body.model}\` does not exist.`, type: 'NotFoundError', param: null, code: 404 }));
      }
      if (prompt === 'too long') {
        res.writeHead(400, { 'content-type': 'application/json' });
        const message = "This model's maximum context length is 64 tokens. However, you requested 90 tokens in the messages.";
        return res.end(JSON.stringify({ object: 'error', message, type: 'BadRequestError', param: null, code: 400 }));
      }
      const base = { id: 'chatcmpl-standin', created: 1, model: 'waimai-lora' };
      const usage = { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 };
      if (!body.stream) {
        res.writeHead(200, { 'content-type': 'application/json' });
        const message = { role: 'assistant', content: '好评', refusal: null };
        return res.end(JSON.stringify({ ...base, object: 'chat.completion', choices: [{ index: 0, message, logprobs: null, finish_reason: 'stop' }], usage }));
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const send = (data: unknown) => res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
      const chunk = (delta: object, finish: string | null = null) => ({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] });
      send(chunk({ role: 'assistant', content: '' }));
      send(chunk({ content: '好' }));
      if (prompt === 'fail midway') {
        send({ error: { message: 'the engine died', type: 'InternalServerError', param: null, code: 500 } });
        return res.end();
      }
      send(chunk({ content: '评' }));
      send(chunk({}, 'stop'));
      if (body.stream_options?.include_usage) send({ ...base, object: 'chat.completion.chunk', choices: [], usage });
      send('[DONE]');
      res.end();
    });
  });
  return new Promise((resolve) =>
    standIn.listen(0, '127.0.0.1', () => {
      standInUrl = `http://127.0.0.1:${(standIn.address() as AddressInfo).port}/v1`;
      resolve();
    }),
  );
}

async function deploy(model: string, body: Record<string, unknown>): Promise<{ status: number; json: any }> {
  const res = await fetch(`${server.url}/v1/weitiao/models/${model}/deployment`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

const ASK: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: '味道不错，送餐也很快' }];

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-serve-vllm-'));
  ctx = openContext({ home: path.join(tmp, 'home') });
  // The weights live on the GPU box; weitiao only needs the model registered to route it.
  registerModel(ctx, { id: 'qwen-waimai', kind: 'base', path: tmp, source: 'local' });
  await startStandIn();
  server = await startServer(ctx, { port: 0, auth: false, worker: false, handleSignals: false, webDir: null, log: () => {} });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  process.env.TEST_VLLM_KEY = 'vllm-secret';
});

after(async () => {
  await server?.close();
  await new Promise((r) => standIn?.close(r));
  ctx?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('vLLM deployment', () => {
  test('a deployment with a base URL passes the request through with the served name and maps the answer back', async () => {
    const deployed = await deploy('qwen-waimai', { backend: 'vllm', base_url: standInUrl, served_model: 'waimai-lora', api_key_env: 'TEST_VLLM_KEY' });
    assert.deepEqual([deployed.status, deployed.json.backend, deployed.json.state, deployed.json.config.served_model], [200, 'vllm', 'ready', 'waimai-lora']);
    assert.equal(((await client.models.retrieve('qwen-waimai')) as any).weitiao.deployment.config.base_url, standInUrl);

    const answer = await client.chat.completions.create({ model: 'qwen-waimai', messages: ASK, temperature: 0, logit_bias: { '17': 5 }, n: 1 });
    assert.equal(answer.model, 'qwen-waimai');
    assert.equal(answer.choices[0].message.content, '好评');
    assert.deepEqual(answer.usage, { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 });
    const sent = received.at(-1)!;
    assert.equal(sent.body.model, 'waimai-lora');
    assert.deepEqual(sent.body.logit_bias, { '17': 5 }, 'fields weitiao does not use itself go through as sent');
    assert.equal(sent.body.messages[0].content, '味道不错，送餐也很快');
    assert.equal(sent.authorization, 'Bearer vllm-secret');
  });

  test('streaming passes the chunks through, usage chunk included, and the service assembles them', async () => {
    const stream = await client.chat.completions.create({ model: 'qwen-waimai', messages: ASK, stream: true, stream_options: { include_usage: true } });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.ok(chunks.every((c) => c.model === 'qwen-waimai'));
    assert.equal(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), '好评');
    assert.equal(chunks.find((c) => c.choices[0]?.finish_reason)?.choices[0].finish_reason, 'stop');
    assert.deepEqual(chunks.at(-1)!.usage, { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 });
    assert.equal(received.at(-1)!.body.stream, true);

    const pieces: string[] = [];
    const result = await chatCompletion(ctx, { model: 'qwen-waimai', messages: [{ role: 'user', content: '好吃' }] }, { onToken: (t) => pieces.push(t) });
    assert.deepEqual([result.text, result.finish_reason, pieces], ['好评', 'stop', ['好', '评']]);
    assert.equal(result.usage.total_tokens, 11);
  });

  test("the server's errors reach the client in OpenAI's shape", async () => {
    for (const stream of [false, true]) {
      await assert.rejects(client.chat.completions.create({ model: 'qwen-waimai', messages: [{ role: 'user', content: 'too long' }], stream }), (e: any) => {
        assert.ok(e instanceof OpenAI.BadRequestError, String(e));
        assert.deepEqual([e.code, e.param], ['context_length_exceeded', 'messages']);
        assert.match(e.message, /maximum context length is 64 tokens/);
        return true;
      });
    }
    // An error event after the stream opened ends the SDK's iteration with an APIError.
    const stream = await client.chat.completions.create({ model: 'qwen-waimai', messages: [{ role: 'user', content: 'fail midway' }], stream: true });
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of stream) seen.push(chunk.choices[0]?.delta.content ?? '');
      })(),
      (e: any) => e instanceof OpenAI.APIError && /the engine died/.test(e.message),
    );
    assert.ok(seen.includes('好'));

    // The served name unknown to the server: a 404 naming it.
    await deploy('qwen-waimai', { backend: 'vllm', base_url: standInUrl, served_model: 'other' });
    await assert.rejects(client.chat.completions.create({ model: 'qwen-waimai', messages: ASK }), (e: any) => e instanceof OpenAI.NotFoundError && /`other` does not exist/.test(e.message));

    // Nobody listening: 503, the deployment is at fault, not the request.
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    await deploy('qwen-waimai', { backend: 'vllm', base_url: `http://127.0.0.1:${port}/v1` });
    await assert.rejects(client.chat.completions.create({ model: 'qwen-waimai', messages: ASK }), (e: any) => {
      assert.equal(e.status, 503);
      assert.match(e.message, /cannot be reached/);
      return true;
    });
  });

  test('a vllm deployment without base_url, or with llama.cpp settings, is refused naming the field', async () => {
    assert.equal((await deploy('qwen-waimai', { backend: 'vllm' })).json.error.param, 'base_url');
    assert.equal((await deploy('qwen-waimai', { backend: 'vllm', base_url: standInUrl, parallel: 4 })).json.error.param, 'parallel');
    assert.equal((await deploy('qwen-waimai', { backend: 'vllm', base_url: 'ftp://x/v1' })).json.error.param, 'base_url');
    assert.equal((await deploy('nope', { backend: 'vllm', base_url: standInUrl })).status, 404);
  });
});
