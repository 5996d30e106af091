/**
 * A crash of the server never loses a job: the server runs as a child process, is SIGKILLed while a job
 * trains (after its first checkpoint), and is started again on the same home. The job resumes from its
 * checkpoint and succeeds, with the events and checkpoints from before the crash intact.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { openContext, type Context } from '../context.js';
import { isGroupAlive } from '../jobs/internal/process.js';
import { createKey } from '../keys/index.js';
import { createTestModel, readSse, REPO_ROOT, writeWaimaiJsonl } from '../testing/waimai.js';

let dir: string;
let home: string;
let ctx: Context;
let key: string;
let model: string;
const children: ChildProcess[] = [];

/** Starts `serve-main.ts` on a free port and resolves once it listens. */
async function startServerProcess(): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, 'src', 'api', 'serve-main.ts'), '--home', home, '--port', '0'], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const lines = readline.createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    lines.once('line', (line) => resolve((JSON.parse(line) as { url: string }).url));
    child.once('exit', (code, sig) => reject(new Error(`server exited (${sig ?? code}) before listening:\n${stderr}`)));
  });
  return { child, url };
}

const exited = (child: ChildProcess) =>
  child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => child.once('exit', () => r()));

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-sigkill-'));
  home = path.join(dir, 'home');
  ctx = openContext({ home });
  key = createKey(ctx, { name: 'sigkill' }).key;
  model = await createTestModel(ctx);
});

after(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited(child);
    }
  }
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('SIGKILL mid-training, restart: the job resumes and succeeds with its history intact', { timeout: 400_000 }, async () => {
  const first = await startServerProcess();
  let client = new OpenAI({ baseURL: `${first.url}/v1`, apiKey: key, maxRetries: 0 });
  const data = writeWaimaiJsonl(dir, 64, 32);
  const train = await client.files.create({ file: createReadStream(data.train), purpose: 'fine-tune' });
  const job = await client.fineTuning.jobs.create({
    model,
    training_file: train.id,
    seed: 3,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 2, batch_size: 1 } } },
    weitiao: { save_every_steps: 8, lora: { r: 4, alpha: 8 } },
  } as OpenAI.FineTuning.JobCreateParams);

  // Follow live until the first checkpoint is recorded, then kill the server without warning.
  const before: OpenAI.FineTuning.FineTuningJobEvent[] = [];
  const res = await fetch(`${first.url}/v1/fine_tuning/jobs/${job.id}/events?stream=true`, { headers: { authorization: `Bearer ${key}` } });
  for await (const e of readSse(res)) {
    before.push(e.data);
    if (/^Checkpoint saved at step/.test(e.data.message)) break;
  }
  const { worker_pid: enginePid, status } = ctx.db.prepare('SELECT worker_pid, status FROM jobs WHERE id = ?').get(job.id) as {
    worker_pid: number;
    status: string;
  };
  assert.equal(status, 'running');
  first.child.kill('SIGKILL');
  await exited(first.child);
  const checkpointsBefore = ctx.db.prepare('SELECT step FROM checkpoints WHERE job_id = ? ORDER BY step').all(job.id) as { step: number }[];
  assert.ok(checkpointsBefore.length >= 1);

  // Same home, new process: its worker finds the orphaned job, stops the old engine, resumes.
  const second = await startServerProcess();
  client = new OpenAI({ baseURL: `${second.url}/v1`, apiKey: key, maxRetries: 0 });
  const again = await fetch(`${second.url}/v1/fine_tuning/jobs/${job.id}/events?stream=true&after=${before.at(-1)!.id}`, {
    headers: { authorization: `Bearer ${key}` },
  });
  const afterRestart: OpenAI.FineTuning.FineTuningJobEvent[] = [];
  for await (const e of readSse(again)) afterRestart.push(e.data);

  const done = await client.fineTuning.jobs.retrieve(job.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
  assert.ok(done.fine_tuned_model);
  assert.ok(!isGroupAlive(enginePid), 'the engine that outlived the first server is gone');
  assert.ok((done as unknown as { weitiao: { attempts: number } }).weitiao.attempts >= 1, 'the lost run is counted');

  // Every event from before the crash is still there, in order, followed by the new ones.
  const all: string[] = [];
  for await (const e of client.fineTuning.jobs.listEvents(job.id, { limit: 50 })) all.push(e.id);
  all.reverse();
  assert.deepEqual(all.slice(0, before.length), before.map((e) => e.id));
  assert.deepEqual(all.slice(before.length), afterRestart.map((e) => e.id));
  assert.ok(afterRestart.some((e) => /resum/i.test(e.message)), 'the log says the job resumed');

  // Training covered every step to the end: the resumed run went on from a checkpoint, not from zero.
  const steps = [...before, ...afterRestart]
    .filter((e) => e.type === 'metrics')
    .map((e) => (e.data as { step: number; total_steps: number }));
  const total = steps[0].total_steps;
  assert.equal(total, 128);
  const seen = new Set(steps.map((s) => s.step));
  for (let s = 1; s <= total; s++) assert.ok(seen.has(s), `step ${s} was trained and reported`);
  const firstAfter = afterRestart.find((e) => e.type === 'metrics')!.data as { step: number };
  assert.ok(firstAfter.step > 1, `resumed at step ${firstAfter.step}, after a checkpoint`);

  // The checkpoints from before the crash are still listed, with the rest.
  const checkpoints = (await client.fineTuning.jobs.checkpoints.list(job.id, { limit: 100 })).data.map((c) => c.step_number);
  for (const { step } of checkpointsBefore) assert.ok(checkpoints.includes(step), `checkpoint at step ${step} kept`);
  assert.equal(Math.max(...checkpoints), total);
  assert.equal(new Set(checkpoints).size, checkpoints.length);

  second.child.kill('SIGTERM');
  await exited(second.child);
  assert.equal(second.child.exitCode, 0, 'SIGTERM shuts down cleanly');
});
