// Reinforcement fine-tuning through `weitiao serve` with the official openai SDK: a job per grader type
// (string_check, text_similarity, score_model against a stand-in judge, python, multi) created, listed,
// followed through its events (one metrics event per step with training and validation fields) and, for
// one, cancelled; a python grader that loops, allocates 10 GB or opens a socket is stopped, scored 0 and
// reported while the job goes on; bad grader JSON is a 400 naming the field; a line lacking a field the
// grader reads fails the job naming file:line:field.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI, { toFile } from 'openai';
import { startServer, type RunningServer } from '../api/index.js';
import { fileContentPath } from '../files/index.js';
import { createKey } from '../keys/index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;
let server: RunningServer;
let client: OpenAI;
let judge: Server;
let judgeUrl = '';
let judged = 0;
let train = '';
let valid = '';
const saved = { cpu: process.env.WEITIAO_GRADER_CPU_SECONDS, wall: process.env.WEITIAO_GRADER_WALL_SECONDS };

type AnyGrader = Record<string, unknown>;
const exact: AnyGrader = { type: 'string_check', name: 'exact', input: '{{sample.output_text}}', reference: '{{item.label}}', operation: 'eq' };
const similar: AnyGrader = { type: 'text_similarity', name: 'similar', input: '{{sample.output_text}}', reference: '{{item.label}}', evaluation_metric: 'fuzzy_match' };
const judgeGrader = (): AnyGrader => ({
  type: 'score_model', name: 'judge', model: 'judge-1',
  input: [{ role: 'user', content: '评论：{{item.review}}\n回答：{{sample.output_text}}\n标签：{{item.label}}' }],
  weitiao: { base_url: judgeUrl },
});
const python: AnyGrader = { type: 'python', name: 'py', source: 'def grade(sample, item):\n    return 1.0 if sample["output_text"] == item["label"] else 0.0\n' };
// Hostile on purpose: the sandbox must stop each of these, score it 0 and let training go on.
const hostile: AnyGrader = {
  type: 'python', name: 'hostile',
  source: [
    'def grade(sample, item):',
    '    kind = item["review"][-1]',
    '    if kind == "0":',
    '        while True: pass',
    '    if kind == "1":',
    '        block = bytearray(10 * 1024 ** 3)',
    '    if kind == "2":',
    '        import socket; socket.create_connection(("127.0.0.1", 9), timeout=1)',
    '    return 1.0',
  ].join('\n') + '\n',
};
const multi = (): AnyGrader => ({ type: 'multi', name: 'mix', graders: { exact, similar }, calculate_output: '0.5 * exact + 0.5 * similar' });

/** The fixture's chat examples as reinforcement prompts: messages without the answer, the label and review as fields. */
function prompts(fileId: string, n: number, tag = false): string {
  return readFileSync(fileContentPath(fx.ctx, fileId), 'utf8').split('\n').filter(Boolean).slice(0, n).map((line, i) => {
    const { messages } = JSON.parse(line) as { messages: { role: string; content: string }[] };
    const review = messages[messages.length - 2].content + (tag ? String(i % 4) : '');
    return JSON.stringify({ messages: [...messages.slice(0, -2), { role: 'user', content: review }], label: messages.at(-1)!.content, review });
  }).join('\n') + '\n';
}

async function upload(name: string, text: string): Promise<string> {
  const file = path.join(fx.tmp, name);
  writeFileSync(file, text);
  return (await client.files.create({ file: await toFile(Buffer.from(text), name), purpose: 'fine-tune' })).id;
}

function create(grader: AnyGrader, extra: { hp?: Record<string, unknown>; training_file?: string; weitiao?: Record<string, unknown>; response_format?: unknown } = {}) {
  return client.fineTuning.jobs.create({
    model: fx.model, training_file: extra.training_file ?? train, validation_file: valid, seed: 5,
    method: { type: 'reinforcement', reinforcement: { grader: grader as any, ...(extra.response_format ? { response_format: extra.response_format } : {}), hyperparameters: { n_epochs: 1, batch_size: 2, compute_multiplier: 0.5, eval_interval: 1, eval_samples: 2, reasoning_effort: 'low', ...extra.hp } as any } },
    weitiao: { learning_rate: 1e-3, max_steps: 2, ...extra.weitiao },
  } as any);
}

async function settled(id: string): Promise<OpenAI.FineTuning.FineTuningJob> {
  for (;;) {
    const job = await client.fineTuning.jobs.retrieve(id);
    if (['succeeded', 'failed', 'cancelled'].includes(job.status)) return job;
    await new Promise((r) => setTimeout(r, 300));
  }
}

async function events(id: string): Promise<OpenAI.FineTuning.FineTuningJobEvent[]> {
  const all: OpenAI.FineTuning.FineTuningJobEvent[] = [];
  for await (const e of client.fineTuning.jobs.listEvents(id, { limit: 100 })) all.push(e);
  return all.reverse();
}

before(async () => {
  process.env.WEITIAO_GRADER_CPU_SECONDS = '2';
  process.env.WEITIAO_GRADER_WALL_SECONDS = '4';
  fx = await setUpFixture('rl');
  judge = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      judged += 1;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ id: 'c', object: 'chat.completion', model: 'judge-1', choices: [{ index: 0, message: { role: 'assistant', content: '{"result": 0.5}' }, finish_reason: 'stop' }], usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 } }));
    });
  });
  await new Promise<void>((r) => judge.listen(0, '127.0.0.1', r));
  judgeUrl = `http://127.0.0.1:${(judge.address() as AddressInfo).port}/v1`;
  const key = createKey(fx.ctx, { name: 'rl' }).key;
  server = await startServer(fx.ctx, { host: '127.0.0.1', port: 0, auth: true, worker: true, handleSignals: false, log: () => {}, webDir: null });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });
  train = await upload('rl-train.jsonl', prompts(fx.train, 4));
  valid = await upload('rl-valid.jsonl', prompts(fx.validation, 2));
});

after(async () => {
  await server?.close();
  judge?.close();
  fx?.close();
  process.env.WEITIAO_GRADER_CPU_SECONDS = saved.cpu;
  process.env.WEITIAO_GRADER_WALL_SECONDS = saved.wall;
  if (saved.cpu === undefined) delete process.env.WEITIAO_GRADER_CPU_SECONDS;
  if (saved.wall === undefined) delete process.env.WEITIAO_GRADER_WALL_SECONDS;
});

describe('reinforcement jobs through the openai SDK', () => {
  test('bad grader JSON is a 400 naming the field, in OpenAI shape', async () => {
    const err = await create({ ...exact, operation: 'equals' }).catch((e: unknown) => e);
    assert.ok(err instanceof OpenAI.BadRequestError, String(err));
    assert.equal(err.param, 'method.reinforcement.grader.operation');
    assert.equal((err.error as { type?: string }).type, 'invalid_request_error');
    // response_format: OpenAI's json_schema shape, checked field by field too.
    const format = await create(exact, { response_format: { type: 'json_schema', json_schema: { name: 'label' } } }).catch((e: unknown) => e);
    assert.ok(format instanceof OpenAI.BadRequestError, String(format));
    assert.equal(format.param, 'method.reinforcement.response_format.json_schema.schema');
  });

  for (const [name, grader] of [['string_check', () => exact], ['text_similarity', () => similar], ['score_model', judgeGrader], ['python', () => python], ['multi', multi]] as const) {
    test(`${name}: created, listed, followed to success with one metrics event per step`, async () => {
      const judgedBefore = judged;
      const job = await create(grader());
      assert.equal(job.method?.type, 'reinforcement');
      const listed = [];
      for await (const j of client.fineTuning.jobs.list({ limit: 50 })) listed.push(j.id);
      assert.ok(listed.includes(job.id));
      const done = await settled(job.id);
      assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
      const hp = (done.method as any).reinforcement.hyperparameters;
      assert.deepEqual([hp.compute_multiplier, hp.eval_interval, hp.eval_samples, hp.reasoning_effort, hp.batch_size], [0.5, 1, 2, 'low', 2]);
      assert.ok(done.fine_tuned_model);
      const metrics = (await events(job.id)).filter((e) => e.type === 'metrics').map((e) => e.data as Record<string, any>);
      assert.deepEqual(metrics.map((m) => m.step), [1, 2]);
      for (const m of metrics) {
        assert.equal(typeof m.train_loss, 'number'); // plotting code reads it from every metrics event
        assert.ok(m.train_mean_reward >= 0 && m.train_mean_reward <= 1, JSON.stringify(m));
        assert.equal(typeof m.valid_mean_reward, 'number');
        assert.ok(m.train_mean_answer_tokens >= 1);
        assert.ok(Object.keys(m.train_reward_per_grader).length >= 1);
      }
      if (name === 'multi') assert.deepEqual(Object.keys(metrics[0].train_reward_per_grader).sort(), ['exact', 'similar']);
      if (name === 'score_model') {
        assert.ok(judged > judgedBefore);
        for (const m of metrics) assert.equal(m.train_mean_reward, 0.5);
      }
    });
  }

  test('a python grader that loops, allocates 10 GB or opens a socket is stopped, scored 0, reported; the job goes on', async () => {
    const hostileTrain = await upload('rl-hostile.jsonl', prompts(fx.train, 4, true));
    const job = await create(hostile, { training_file: hostileTrain, hp: { batch_size: 4, eval_interval: 2 }, weitiao: { max_steps: 1 } });
    const done = await settled(job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    const all = await events(job.id);
    const [m] = all.filter((e) => e.type === 'metrics').map((e) => e.data as Record<string, any>);
    // 8 answers: 2 per prompt, the prompts ending in 0 (loop), 1 (10 GB), 2 (socket) score 0, the one ending in 3 scores 1.
    assert.equal(m.train_mean_reward, 0.25);
    assert.equal(m.grader_errors, 6);
    const reported = all.filter((e) => e.level === 'warn' && /scored 0/.test(e.message)).map((e) => e.message).join('\n');
    assert.ok(reported.length > 0, 'the failures are reported as job events');
  });

  test('a line without a field the grader reads fails the job naming file:line:field; cancel stops a running job', async () => {
    const lacking = await upload('rl-lacking.jsonl', prompts(fx.train, 2) + JSON.stringify({ messages: [{ role: 'user', content: '好吃' }] }) + '\n');
    const bad = await settled((await create(exact, { training_file: lacking })).id);
    assert.equal(bad.status, 'failed');
    assert.match(bad.error!.message, /rl-lacking\.jsonl:3: label/);
    assert.equal(bad.error!.param, 'training_file:3:label');

    const job = await create(exact, { weitiao: { max_steps: 50 }, hp: { n_epochs: 50 } });
    for (;;) {
      const j = await client.fineTuning.jobs.retrieve(job.id);
      if (j.status === 'running') break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await client.fineTuning.jobs.cancel(job.id);
    assert.equal((await settled(job.id)).status, 'cancelled');
  });
});
