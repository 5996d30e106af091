/**
 * The graders API end to end: a real server on 127.0.0.1, the real engine, and the official `openai`
 * package calling `client.fineTuning.alpha.graders.run(...)` and `.validate(...)` with each grader type
 * (score_model's judge is a stand-in OpenAI-compatible server started here, or weitiao's own /v1); bad
 * grader JSON is a 400 in OpenAI's shape that names the field.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { openContext, type Context } from '../context.js';
import { createKey } from '../keys/index.js';
import { startServer, type RunningServer } from './index.js';

let dir: string;
let ctx: Context;
let server: RunningServer;
let client: OpenAI;
let judge: Server;
let judgeUrl: string;
const judgeRequests: any[] = [];

// The SDK's types lag OpenAI's docs (multi's `graders` is a map of named graders) and know nothing of
// weitiao's `weitiao` extension: the wire JSON is what matters here.
type AnyGrader = Record<string, unknown>;
const run = (grader: AnyGrader, model_sample: string, item: Record<string, unknown> = {}) =>
  client.fineTuning.alpha.graders.run({ grader: grader as any, model_sample, item });
const validate = (grader: AnyGrader) => client.fineTuning.alpha.graders.validate({ grader: grader as any });

const exact: AnyGrader = { type: 'string_check', name: 'exact', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'eq' };
const overlap: AnyGrader = { type: 'text_similarity', name: 'overlap', input: '{{sample.output_text}}', reference: '{{item.reference}}', evaluation_metric: 'rouge_l' };
const python: AnyGrader = {
  type: 'python',
  name: 'py',
  source: 'def grade(sample, item):\n    return 1.0 if item["label"] in sample["output_text"] else 0.0\n',
};
const judgeGrader = (extra: AnyGrader = {}): AnyGrader => ({
  type: 'score_model',
  name: 'judge',
  model: 'judge-1',
  input: [
    { role: 'system', content: '你是评审，给出 0 到 1 的分数。' },
    { role: 'user', content: '评论：{{item.review}}\n回答：{{sample.output_text}}' },
  ],
  sampling_params: { temperature: 0, seed: 1 },
  ...extra,
});

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-graders-'));
  ctx = openContext({ home: path.join(dir, 'home') });
  const key = createKey(ctx, { name: 'graders' }).key;
  server = await startServer(ctx, { host: '127.0.0.1', port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });
  judge = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      judgeRequests.push({ url: req.url, auth: req.headers.authorization, body: JSON.parse(body) });
      const content = JSON.stringify({ steps: [{ description: '对比参考答案', conclusion: '基本正确' }], result: 0.75 });
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        id: 'c1', object: 'chat.completion', model: 'judge-1',
        choices: [{ index: 0, message: { role: 'assistant', content, refusal: null }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 },
      }));
    });
  });
  await new Promise<void>((resolve) => judge.listen(0, '127.0.0.1', resolve));
  judgeUrl = `http://127.0.0.1:${(judge.address() as AddressInfo).port}/v1`;
});

after(async () => {
  await server?.close();
  await new Promise((resolve) => judge?.close(resolve));
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('graders.run with each grader type through the openai SDK', { timeout: 240_000 }, async () => {
  const right = await run(exact, '好评', { label: '好评' });
  assert.equal(right.reward, 1);
  assert.equal(right.metadata.type, 'string_check');
  assert.equal(right.metadata.name, 'exact');
  assert.ok(Object.values(right.metadata.errors).every((v) => v === false || v === null));

  // ROUGE-L by character: 送餐很快味道不错 / 送餐快，味道很好, LCS 5 of 8 and 7 → 10/15
  const similar = await run(overlap, '送餐很快味道不错', { reference: '送餐快，味道很好' });
  assert.ok(Math.abs(similar.reward - 10 / 15) < 1e-9, String(similar.reward));
  assert.equal((similar as any).weitiao.notes.tokenization, 'character');

  const judged = await run(judgeGrader({ weitiao: { base_url: judgeUrl, api_key: 'sk-judge' } }), '好评', { review: '送餐很快' });
  assert.equal(judged.reward, 0.75);
  assert.equal(judged.metadata.sampled_model_name, 'judge-1');
  assert.equal(judged.metadata.token_usage, 42);
  assert.deepEqual(judged.model_grader_token_usage_per_model, { 'judge-1': { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 } });
  const asked = judgeRequests.at(-1);
  assert.equal(asked.url, '/v1/chat/completions');
  assert.equal(asked.auth, 'Bearer sk-judge');
  assert.equal(asked.body.messages[1].content, '评论：送餐很快\n回答：好评');

  const py = await run(python, '这是好评', { label: '好评' });
  assert.equal(py.reward, 1);
  const crashing = await run({ ...python, source: 'def grade(sample, item):\n    return 1 / 0\n' }, 'x', { label: 'y' });
  assert.equal(crashing.reward, 0);
  assert.equal(crashing.metadata.errors.python_grader_runtime_error, true);
  assert.match(crashing.metadata.errors.python_grader_runtime_error_details ?? '', /ZeroDivisionError/);

  const multi = await run(
    { type: 'multi', name: 'reward', graders: { exact, overlap, py: python }, calculate_output: '0.5 * exact + 0.25 * overlap + 0.25 * py' },
    '差评',
    { label: '好评', reference: '好评' },
  );
  // exact 0; rouge_l 差评/好评 by character 1/2; python 0 → 0.125
  assert.ok(Math.abs(multi.reward - 0.125) < 1e-9, String(multi.reward));
  assert.deepEqual(multi.sub_rewards, { exact: 0, overlap: 0.5, py: 0 });
  assert.deepEqual(multi.metadata.scores, multi.sub_rewards);

  // No judge endpoint configured: the server offers its own /v1 with the caller's key. No model 'judge-1'
  // is registered here, so weitiao's chat route answers 404 (not 401: the key went along).
  const self = await run(judgeGrader(), '好评', { review: '好吃' });
  assert.equal(self.reward, 0);
  assert.equal(self.metadata.errors.model_grader_server_error, true);
  assert.match(self.metadata.errors.model_grader_server_error_details ?? '', /HTTP 404/);
});

test('graders.validate echoes valid graders and names the field of invalid ones', { timeout: 240_000 }, async () => {
  const multi = { type: 'multi', name: 'reward', graders: { exact, py: python }, calculate_output: 'max(exact, py)' };
  for (const grader of [exact, overlap, python, judgeGrader(), multi]) {
    const answer = await validate(grader);
    assert.deepEqual(answer.grader, grader);
  }

  const badRequest = async (grader: unknown, param: string, pattern?: RegExp) => {
    const err = await validate(grader as AnyGrader).then(
      () => assert.fail(`expected a 400 for ${param}`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof OpenAI.BadRequestError, String(err));
    assert.equal(err.status, 400);
    assert.equal(err.param, param);
    assert.equal(err.code, 'invalid_request');
    if (pattern) assert.match(err.message, pattern);
  };
  await badRequest({ ...multi, graders: { exact, b: { ...exact, operation: 'equals' } } }, 'grader.graders.b.operation');
  await badRequest({ ...exact, refrence: '{{item.label}}' }, 'grader.refrence');
  await badRequest({ ...multi, calculate_output: "__import__('os')" }, 'grader.calculate_output');
  await badRequest({ ...multi, calculate_output: 'exact + fuzzy' }, 'grader.calculate_output', /fuzzy/);
  await badRequest({ ...python, source: 'def grade(sample, item) return 1' }, 'grader.source');
  await badRequest({ ...overlap, evaluation_metric: 'cosine' }, 'grader.evaluation_metric', /embedding model/);
  await badRequest({ ...exact, reference: '{{answer.label}}' }, 'grader.reference');

  // run refuses bad graders the same way, before grading anything
  const err = await run({ ...exact, operation: 'equals' }, 'x').catch((e: unknown) => e);
  assert.ok(err instanceof OpenAI.BadRequestError && err.param === 'grader.operation', String(err));
});

test('the graders routes are in /openapi.json', async () => {
  const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, { operationId: string }>> };
  assert.equal(doc.paths['/v1/fine_tuning/alpha/graders/run'].post.operationId, 'run_grader');
  assert.equal(doc.paths['/v1/fine_tuning/alpha/graders/validate'].post.operationId, 'validate_grader');
});
