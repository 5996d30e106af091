// The worker with the real engine: pause → paused → resume → succeeded, and a worker shutdown followed by
// a "crashed" worker whose job another worker takes over and finishes from the last checkpoint.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cancelJob, createJob, followJobEvents, listJobCheckpoints, listJobEvents, pauseJob, resumeJob, retrieveJob, Worker } from './index.js';
import { isGroupAlive } from './internal/process.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;

before(async () => {
  fx = await setUpFixture('worker-resume');
});
after(() => fx?.close());

/** A pid that cannot exist (above Linux's largest pid_max): a worker that is certainly gone. */
const DEAD_PID = 999_999_999;

const trainSteps = (id: string) =>
  listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' })
    .data.filter((e) => e.type === 'metrics' && (e.data as any).train_loss !== undefined)
    .map((e) => (e.data as any).step as number);

// 64 examples, batch 2, 1 epoch: 32 short steps, enough time to act in the middle of the run.
const jobParams = () => ({
  model: fx.model,
  training_file: fx.train,
  seed: 3,
  method: { type: 'supervised' as const, supervised: { hyperparameters: { n_epochs: 1, batch_size: 2 } } },
});

describe('pause, resume and recovery with the real engine', () => {
  test('pause → paused (checkpoint saved, engine gone) → resume → succeeded, continuing after the pause step', async () => {
    const job = createJob(fx.ctx, jobParams());
    let pid: number | null = null;
    const worker = new Worker(fx.ctx, {
      threads: 1,
      pollMs: 100,
      onEngineEvent: (id, e) => {
        if (e.type === 'metrics' && e.step === 2 && retrieveJob(fx.ctx, id).status === 'running') {
          pid = (fx.ctx.db.prepare('SELECT worker_pid FROM jobs WHERE id = ?').get(id) as { worker_pid: number }).worker_pid;
          assert.equal(pauseJob(fx.ctx, id).status, 'pausing');
        }
      },
    });
    assert.equal(await worker.runNext(), job.id);
    const paused = retrieveJob(fx.ctx, job.id);
    assert.equal(paused.status, 'paused');
    assert.equal(paused.finished_at, null);
    assert.equal(paused.weitiao.requested_action, null);
    const stoppedAt = paused.weitiao.progress!.step;
    assert.ok(stoppedAt >= 2 && stoppedAt < 32, `paused at step ${stoppedAt}`);
    assert.deepEqual(listJobCheckpoints(fx.ctx, job.id).data.map((c) => c.step_number), [stoppedAt]);
    assert.ok(pid !== null && !isGroupAlive(pid));
    assert.ok(listJobEvents(fx.ctx, job.id).data.some((e) => e.message.startsWith(`The job was paused at step ${stoppedAt}`)));
    // A follower of a paused job ends once it has read everything.
    let n = 0;
    for await (const _ of followJobEvents(fx.ctx, job.id)) n++;
    assert.ok(n > 0);

    // A checkpoint the database never heard of (an engine that outlived a killed server saved it; its steps were
    // never reported) is discarded, not resumed from: the run continues from the recorded one.
    const orphan = path.join(fx.ctx.home.jobs, job.id, 'checkpoints', 'step-000031');
    mkdirSync(orphan, { recursive: true });
    writeFileSync(path.join(orphan, 'state.json'), '{}');

    assert.equal(resumeJob(fx.ctx, job.id).status, 'queued');
    assert.equal(await worker.runNext(), job.id);
    assert.ok(!existsSync(orphan));
    assert.ok(listJobEvents(fx.ctx, job.id, { limit: 1000 }).data.some((e) => e.message.startsWith('Discarded step-000031')));
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    // Steps 1…N before the pause, N+1…32 after it: nothing trained twice, nothing skipped.
    assert.deepEqual(trainSteps(job.id), Array.from({ length: 32 }, (_, i) => i + 1));
    assert.ok(listJobEvents(fx.ctx, job.id, { limit: 1000 }).data.some((e) => e.message.startsWith(`Resuming fine-tuning from checkpoint step-`)));
    assert.equal(done.weitiao.progress?.step, 32);
    assert.equal(done.weitiao.attempts, 0);
  });

  test('stop() re-queues a running job; a worker found dead is taken over and its job finishes from the checkpoint', async () => {
    const job = createJob(fx.ctx, jobParams());
    let reached!: () => void;
    const atStep3 = new Promise<void>((r) => (reached = r));
    const first = new Worker(fx.ctx, { threads: 1, pollMs: 100, onEngineEvent: (_id, e) => e.type === 'metrics' && e.step >= 3 && reached() });
    first.start();
    await atStep3;
    await first.stop();
    const requeued = retrieveJob(fx.ctx, job.id);
    assert.equal(requeued.status, 'queued');
    const saved = listJobCheckpoints(fx.ctx, job.id).data.map((c) => c.step_number);
    assert.equal(saved.length, 1);
    assert.ok(saved[0] >= 3 && saved[0] < 32);

    // As if a second worker had claimed the job and its process then died (the server was SIGKILLed).
    fx.ctx.db
      .prepare(`UPDATE jobs SET status = 'running', worker_id = ?, worker_pid = NULL, heartbeat_at = ? WHERE id = ?`)
      .run(`crashed:${DEAD_PID}`, Math.floor(Date.now() / 1000), job.id);

    const second = new Worker(fx.ctx, { threads: 1, pollMs: 100 });
    second.start(); // recovers first, then runs the job
    for await (const _ of followJobEvents(fx.ctx, job.id, { pollMs: 100 })) {
      /* until the job settles */
    }
    await second.stop();
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.equal(done.weitiao.attempts, 1);
    assert.deepEqual(trainSteps(job.id), Array.from({ length: 32 }, (_, i) => i + 1));
    const messages = listJobEvents(fx.ctx, job.id, { limit: 1000, order: 'asc' }).data.map((e) => e.message);
    assert.ok(messages.some((m) => m.startsWith(`The worker stopped at step`)));
    assert.ok(messages.some((m) => m.startsWith(`Training stopped unexpectedly (its worker crashed:${DEAD_PID} stopped`)));
    assert.equal(messages.filter((m) => m.startsWith('Resuming fine-tuning from checkpoint step-')).length, 1);
  });

  test('recovery stops a left-over engine group, and fails a job lost too many times', async () => {
    // A stand-in for an orphaned engine: a detached process group, as runEngine starts it.
    const orphan = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
    const exited = new Promise((r) => orphan.on('exit', r));
    const job = createJob(fx.ctx, jobParams());
    fx.ctx.db
      .prepare(
        `UPDATE jobs SET status = 'running', worker_id = ?, worker_pid = ?, heartbeat_at = ?, attempts = 2,
         extension = json_set(extension, '$.crash_streak', 2) WHERE id = ?`,
      )
      .run(`crashed:${DEAD_PID}`, orphan.pid, Math.floor(Date.now() / 1000), job.id);
    const worker = new Worker(fx.ctx, { maxCrashes: 3 });
    assert.deepEqual(await worker.recover(), [job.id]);
    await exited;
    assert.equal(isGroupAlive(orphan.pid), false);
    const failed = retrieveJob(fx.ctx, job.id);
    assert.equal(failed.status, 'failed');
    assert.equal(failed.error?.code, 'training_interrupted');
    assert.match(failed.error!.message, /stopped unexpectedly 3 times in a row/);
    assert.equal(failed.weitiao.attempts, 3);

    // A live worker's job (this process, fresh heartbeat) is left alone.
    const live = createJob(fx.ctx, jobParams());
    fx.ctx.db
      .prepare(`UPDATE jobs SET status = 'running', worker_id = ?, heartbeat_at = ? WHERE id = ?`)
      .run(`other:${process.pid}`, Math.floor(Date.now() / 1000), live.id);
    assert.deepEqual(await worker.recover(), []);
    // …until its heartbeat goes stale.
    fx.ctx.db.prepare(`UPDATE jobs SET heartbeat_at = ? WHERE id = ?`).run(Math.floor(Date.now() / 1000) - 3600, live.id);
    assert.deepEqual(await worker.recover(), [live.id]);
    assert.equal(retrieveJob(fx.ctx, live.id).status, 'queued');
    assert.equal((await cancelJob(fx.ctx, live.id)).status, 'cancelled');
  });
});
