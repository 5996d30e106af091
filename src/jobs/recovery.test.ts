// Faults with the real engine (issue 13): the engine's process group SIGKILLed mid-run, a truncated newest
// checkpoint, and an engine that dies at every start. The job finishes from the previous checkpoint with
// every step once in its history; a crash loop fails once, with its cause once; a failed job resumes.
import assert from 'node:assert/strict';
import { statSync, truncateSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createApp } from '../api/index.js';
import { createJob, listJobCheckpoints, listJobEvents, resumeJob, retrieveJob, Worker, type FineTuningJob } from './index.js';
import { signalGroup } from './internal/process.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;

before(async () => {
  fx = await setUpFixture('recovery');
});
after(() => fx?.close());

/** Steps of the job's training metrics events, in history order. */
const trainSteps = (id: string) =>
  listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' })
    .data.filter((e) => e.type === 'metrics' && (e.data as { train_loss?: number }).train_loss !== undefined)
    .map((e) => (e.data as { step: number }).step);

const oneToSix = [1, 2, 3, 4, 5, 6];

// 64 examples, batch 4, stopped after 6 steps, a checkpoint at every step.
const jobParams = () => ({
  model: fx.model,
  training_file: fx.train,
  seed: 5,
  method: { type: 'supervised' as const, supervised: { hyperparameters: { n_epochs: 1, batch_size: 4 } } },
  weitiao: { max_steps: 6, save_every_steps: 1, lora: { r: 4, alpha: 8 } },
});

/** SIGKILL to the job's engine process group, as the OOM killer or `kill -9` would. */
function killEngine(jobId: string): void {
  const { worker_pid } = fx.ctx.db.prepare('SELECT worker_pid FROM jobs WHERE id = ?').get(jobId) as { worker_pid: number | null };
  assert.ok(worker_pid, 'the engine is running');
  signalGroup(worker_pid, 'SIGKILL');
}

/** A worker that kills the engine once, when `when` first holds. */
function killingWorker(maxCrashes: number, when: (e: { type: string; step?: number }) => boolean, times = 1): Worker {
  let left = times;
  return new Worker(fx.ctx, {
    threads: 1,
    pollMs: 100,
    maxCrashes,
    onEngineEvent: (id, e) => {
      if (left > 0 && when(e as { type: string; step?: number })) {
        left--;
        killEngine(id);
      }
    },
  });
}

describe('recovery from engine faults', () => {
  test('engine killed mid-run, newest checkpoint truncated: the job finishes from the previous one, every step once', async () => {
    const job = createJob(fx.ctx, jobParams());
    const worker = killingWorker(3, (e) => e.type === 'metrics' && e.step === 4);
    await worker.runNext();
    const lost = retrieveJob(fx.ctx, job.id);
    assert.equal(lost.status, 'queued', JSON.stringify(lost.error));
    assert.equal(lost.weitiao.attempts, 1);

    const recorded = listJobCheckpoints(fx.ctx, job.id, { limit: 100 }).data.map((c) => c.step_number);
    const newest = Math.max(...recorded);
    assert.ok(newest >= 2, `checkpoints before the kill: ${recorded}`);
    const name = `step-${String(newest).padStart(6, '0')}`;
    const weights = path.join(fx.ctx.home.jobs, job.id, 'checkpoints', name, 'adapter_model.safetensors');
    truncateSync(weights, Math.floor(statSync(weights).size / 2));

    await worker.runNext();
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.deepEqual(trainSteps(job.id), oneToSix);
    const events = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' }).data;
    const warnings = events.filter((e) => e.level === 'warn');
    assert.ok(
      warnings.some((e) => (e.data as { skipped_checkpoint?: string } | null)?.skipped_checkpoint === name),
      `the engine's skip of ${name} is a warning event: ${warnings.map((e) => e.message).join(' | ')}`,
    );
    assert.ok(warnings.some((e) => (e.data as { skipped_checkpoint_step?: number } | null)?.skipped_checkpoint_step === newest));
    // The damaged checkpoint was saved again; each step's checkpoint is listed once.
    assert.deepEqual(
      listJobCheckpoints(fx.ctx, job.id, { limit: 100 }).data.map((c) => c.step_number).sort((a, b) => a - b),
      oneToSix,
    );
    assert.ok(statSync(weights).size > 0);
  });

  test('a crash loop (the engine dies at every start) fails the job once, with the cause once and no server path', async () => {
    const job = createJob(fx.ctx, jobParams());
    const worker = killingWorker(2, (e) => e.type === 'hello', 2);
    await worker.runNext();
    const first = retrieveJob(fx.ctx, job.id);
    assert.equal(first.status, 'queued');
    await worker.runNext();
    const failed: FineTuningJob = retrieveJob(fx.ctx, job.id);
    assert.equal(failed.status, 'failed');
    assert.equal(failed.error?.code, 'training_interrupted');
    const message = failed.error!.message;
    assert.match(message, /^the engine stopped unexpectedly 2 times in a row; last cause: engine train exited with SIGKILL\./);
    assert.equal(message.match(/SIGKILL/g)?.length, 1, message);
    assert.match(message, /saved no checkpoint, so fix the cause and create it again/);
    assert.doesNotMatch(message, /\/tmp\/|\/root|\/work\//);
    const events = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' }).data;
    assert.equal(events.filter((e) => e.message.startsWith('Fine-tuning failed')).length, 1);
    assert.equal(events.filter((e) => /crash 1 of at most 2 in a row/.test(e.message)).length, 1);
    assert.throws(() => resumeJob(fx.ctx, job.id), { code: 'conflict', message: new RegExp(`cannot resume job ${job.id}.*nothing to resume from`) });
    assert.equal(retrieveJob(fx.ctx, job.id).status, 'failed');
  });

  test('a failed job with checkpoints is resumed over HTTP and finishes from its last one, every step once', async () => {
    const job = createJob(fx.ctx, jobParams());
    const worker = killingWorker(1, (e) => e.type === 'metrics' && e.step === 3);
    await worker.runNext();
    const failed = retrieveJob(fx.ctx, job.id);
    assert.equal(failed.status, 'failed');
    assert.match(failed.error!.message, new RegExp(`stopped unexpectedly 1 times in a row.*weitiao jobs resume ${job.id}`, 's'));

    const res = await createApp(fx.ctx, { auth: false }).request(`/v1/fine_tuning/jobs/${job.id}/resume`, { method: 'POST' });
    const body = (await res.json()) as FineTuningJob;
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.status, 'queued');
    assert.equal(body.error, null);
    assert.equal(body.finished_at, null);

    await worker.runNext();
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.deepEqual(trainSteps(job.id), oneToSix);
    const messages = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' }).data.map((e) => e.message);
    assert.equal(messages.filter((m) => m.startsWith('The failed job was resumed')).length, 1);
    assert.equal(messages.filter((m) => m.startsWith('Resuming fine-tuning from checkpoint step-')).length, 1);
  });
});
