/**
 * A dry run through the official `openai` package against a real server on 127.0.0.1: the SDK sends
 * `weitiao: {dry_run: true}` as an extra body field, gets the plan with the engine's estimate, and
 * nothing is created; the training controls come back on the created job, OpenAI-shaped, under `weitiao`.
 */
import assert from 'node:assert/strict';
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { openContext, type Context } from '../context.js';
import { createFile } from '../files/index.js';
import { JobPlan } from '../jobs/index.js';
import { createKey } from '../keys/index.js';
import { startServer, type RunningServer } from './index.js';
import { createTestModel, writeWaimaiJsonl } from '../testing/waimai.js';

let dir: string;
let ctx: Context;
let server: RunningServer;
let client: OpenAI;
let model: string;

type CreateParams = OpenAI.FineTuning.JobCreateParams & { weitiao?: Record<string, unknown> };
const create = (params: CreateParams) => client.fineTuning.jobs.create(params as OpenAI.FineTuning.JobCreateParams);

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-api-dry-'));
  ctx = openContext({ home: path.join(dir, 'home') });
  const key = createKey(ctx, { name: 'dry-run' }).key;
  model = await createTestModel(ctx);
  server = await startServer(ctx, { host: '127.0.0.1', port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });
});

after(async () => {
  await server?.close();
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('dry run over HTTP with the openai SDK: the plan and the estimate, no job; controls on a real create', { timeout: 180_000 }, async () => {
  const data = writeWaimaiJsonl(dir, 64, 32);
  const train = await client.files.create({ file: createReadStream(data.train), purpose: 'fine-tune' });
  const body: CreateParams = {
    model,
    training_file: train.id,
    method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 16 } } },
    weitiao: { method: 'qlora', gradient_accumulation_steps: 4, early_stopping_patience: 3, nproc: 2, dry_run: true },
  };
  const plan = JobPlan.parse(await create(body));
  assert.equal(plan.object, 'weitiao.job_plan');
  assert.equal(plan.weitiao.method, 'qlora');
  assert.equal(plan.weitiao.n_examples, 64);
  assert.deepEqual(plan.method, { type: 'supervised', supervised: { hyperparameters: { n_epochs: 3, batch_size: 16, learning_rate_multiplier: 1 } } });
  assert.equal(plan.weitiao.controls.gradient_accumulation_steps, 4);
  assert.equal(plan.weitiao.controls.nproc, 2);
  assert.equal(plan.estimate?.method, 'qlora');
  assert.equal(plan.estimate?.steps_per_epoch, 4);
  assert.ok(plan.estimate!.peak_memory_bytes > 0 && plan.estimate!.total_seconds > 0);
  assert.equal((await client.fineTuning.jobs.list()).data.length, 0, 'a dry run creates no job');

  // A bad training file fails the dry run as the job would, with the SDK's typed error and the line at fault.
  const badPath = path.join(dir, 'bad.jsonl');
  writeFileSync(badPath, JSON.stringify({ messages: [{ role: 'user', content: '难吃' }, { role: 'bot', content: '差评' }] }) + '\n');
  // An upload is checked line by line and refused with the line at fault (issue 13); the CLI stores files unchecked,
  // so the job's own check still guards them.
  await assert.rejects(client.files.create({ file: createReadStream(badPath), purpose: 'fine-tune' }), (e: unknown) => {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.match(e.message, /bad\.jsonl:1: messages\[1\]\.role/);
    return true;
  });
  const bad = await createFile(ctx, { source: badPath, filename: 'bad.jsonl', purpose: 'fine-tune' });
  await assert.rejects(create({ ...body, training_file: bad.id }), (e: unknown) => {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.equal((e.error as { code?: string }).code, 'invalid_file');
    assert.equal(e.param, 'training_file:1:messages[1].role');
    return true;
  });
  await assert.rejects(create({ ...body, weitiao: { gradient_accumulation_steps: 0, dry_run: true } }), (e: unknown) => {
    assert.ok(e instanceof OpenAI.BadRequestError);
    assert.equal(e.param, 'weitiao.gradient_accumulation_steps');
    return true;
  });

  // The same body without dry_run creates the job; the controls are in its OpenAI-shaped wire object under `weitiao`.
  const { dry_run: _, ...settings } = body.weitiao!;
  const job = await create({ ...body, weitiao: settings });
  assert.equal(job.object, 'fine_tuning.job');
  const fetched = (await client.fineTuning.jobs.retrieve(job.id)) as OpenAI.FineTuning.FineTuningJob & { weitiao: { controls: Record<string, unknown> } };
  assert.equal(fetched.weitiao.controls.gradient_accumulation_steps, 4);
  assert.equal(fetched.weitiao.controls.early_stopping_patience, 3);
  assert.equal(fetched.weitiao.controls.nproc, 2);
  assert.ok(!('controls' in fetched), 'nothing of weitiao outside its extension object');
});
