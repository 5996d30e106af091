/**
 * Scale-out end to end (issue 19's done-when): the API runs as its own process with no local worker, two
 * `weitiao worker` processes (each with its own home, reaching the API only over HTTP) run three jobs; worker 1
 * is SIGKILLed (its process group and its engine's) mid-training after a checkpoint was uploaded. The reaper
 * requeues the job when its lease expires, another worker claims it and resumes from the uploaded checkpoint,
 * every job succeeds with each step once in its history, and a fine-tuned model answers through the API.
 */
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import type { Context } from '../context.js';
import { Cluster } from '../testing/cluster.js';
import { writeWaimaiJsonl } from '../testing/waimai.js';

const LEASE_SECONDS = 3;
// 40 examples, batch 1, five epochs: room between the first checkpoint and the end for the kill. A tiny model's
// steps take ~20 ms: two epochs (the first version) were over ~2 s after the first checkpoint, close to the kill's lag.
const EXAMPLES = 40;
const EPOCHS = 5;
const STEPS = EPOCHS * EXAMPLES;
const DEADLINE_MS = 480_000;

let cluster: Cluster;
let ctx: Context;
let dir: string;
let key: string;
let model: string;

before(async () => {
  cluster = await Cluster.setUp('remote', DEADLINE_MS);
  ({ ctx, dir, key, model } = cluster);
});
after(() => cluster?.close());

const startWorker = (url: string, name: string) => cluster.startWorker(url, name);
const waitFor: Cluster['waitFor'] = (what, check, deadlineMs) => cluster.waitFor(what, check, deadlineMs);

test('two remote workers, one SIGKILLed mid-training: its job is re-leased, resumes from its checkpoint, all three succeed', { timeout: 600_000 }, async () => {
  const { url } = await cluster.startApi(ctx.home.root, { WEITIAO_LEASE_SECONDS: String(LEASE_SECONDS) });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });

  const data = writeWaimaiJsonl(dir, EXAMPLES, 2);
  const train = await client.files.create({ file: createReadStream(data.train), purpose: 'fine-tune' });
  const jobs = [];
  for (let i = 0; i < 3; i++) {
    jobs.push(
      await client.fineTuning.jobs.create({
        model,
        training_file: train.id,
        seed: 10 + i,
        method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: EPOCHS, batch_size: 1 } } },
        weitiao: { save_every_steps: 20, lora: { r: 4, alpha: 8 } },
      } as OpenAI.FineTuning.JobCreateParams),
    );
  }
  const ids = new Set(jobs.map((j) => j.id));
  let w1 = startWorker(url, 'w1');
  startWorker(url, 'w2');

  // A job of worker 1 with an uploaded (recorded) checkpoint, still training.
  const victim = await waitFor('a job training on worker 1 with a recorded checkpoint', () => {
    const row = ctx.db
      .prepare(
        `SELECT j.id, j.worker_id, j.extension FROM jobs j WHERE j.status = 'running' AND j.worker_id LIKE 'remote:w1:%'
         AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.job_id = j.id)`,
      )
      .get() as { id: string; worker_id: string; extension: string } | undefined;
    const progress = row && (JSON.parse(row.extension) as { progress?: { step: number; total_steps: number } }).progress;
    return row && progress && progress.step < progress.total_steps ? row : undefined;
  });
  const enginePid = Number(
    [...w1.lines].reverse().find((l) => l.includes(`job ${victim.id}: engine started`))?.match(/pid (\d+)/)?.[1],
  );
  assert.ok(enginePid > 0, `worker 1 said its engine's pid:\n${w1.lines.join('\n')}`);
  const killedAt = Date.now();
  await cluster.kill(w1, enginePid);
  const checkpointsBefore = (ctx.db.prepare('SELECT step FROM checkpoints WHERE job_id = ? ORDER BY step').all(victim.id) as { step: number }[]).map((c) => c.step);

  // A restarted worker 1 (same home: its base-model cache is reused) and worker 2 compete for the requeued job.
  w1 = startWorker(url, 'w1');
  let requeuedAt: number | null = null;
  const reclaimed = await waitFor('the killed job to be claimed again', () => {
    const row = ctx.db.prepare('SELECT worker_id, attempts FROM jobs WHERE id = ?').get(victim.id) as { worker_id: string | null; attempts: number };
    if (row.attempts > 0) requeuedAt ??= Date.now(); // the reaper counted the lost run
    return row.worker_id && row.worker_id !== victim.worker_id ? row.worker_id : undefined;
  });
  const seconds = (t: number | null) => (t === null ? '?' : ((t - killedAt) / 1000).toFixed(1));
  console.log(
    `time to re-lease: requeued by the reaper ${seconds(requeuedAt)} s after SIGKILL (lease ${LEASE_SECONDS} s), claimed again by ${reclaimed.split(':')[1]} after ${seconds(Date.now())} s`,
  );

  const done = await waitFor('all three jobs to finish', async () => {
    const all = await Promise.all([...ids].map((id) => client.fineTuning.jobs.retrieve(id)));
    return all.every((j) => ['succeeded', 'failed', 'cancelled'].includes(j.status)) ? all : undefined;
  });
  for (const job of done) assert.equal(job.status, 'succeeded', `${job.id}: ${JSON.stringify(job.error)}`);

  for (const job of done) {
    const events: OpenAI.FineTuning.FineTuningJobEvent[] = [];
    for await (const e of client.fineTuning.jobs.listEvents(job.id, { limit: 100 })) events.push(e);
    const steps = events.filter((e) => e.type === 'metrics').map((e) => (e.data as { step: number }).step).sort((a, b) => a - b);
    assert.deepEqual(steps, Array.from({ length: STEPS }, (_, i) => i + 1), `${job.id}: every step exactly once`);
    if (job.id !== victim.id) continue;
    const resumed = events.find((e) => /^Resuming fine-tuning from checkpoint step-\d+/.test(e.message));
    assert.ok(resumed, `${job.id} resumed from its checkpoint: ${events.map((e) => e.message).join(' | ')}`);
    const from = Number(/step-(\d+)/.exec(resumed.message)![1]);
    // An upload the API had received whole when the worker died is recorded just after the kill: the resume starts
    // from a recorded checkpoint, at or after the last recorded before the kill (as in nodes.e2e.test.ts).
    const recorded = (ctx.db.prepare('SELECT step FROM checkpoints WHERE job_id = ?').all(job.id) as { step: number }[]).map((c) => c.step);
    assert.ok(
      recorded.includes(from) && from >= Math.max(...checkpointsBefore) && from < STEPS,
      `resumed from an uploaded checkpoint (step ${from}; recorded before the kill: ${checkpointsBefore}; recorded: ${recorded})`,
    );
    assert.ok((job as unknown as { weitiao: { attempts: number } }).weitiao.attempts >= 1, 'the lost run is counted');
  }

  const victimJob = done.find((j) => j.id === victim.id)!;
  const answer = await client.chat.completions.create({ model: victimJob.fine_tuned_model!, messages: [{ role: 'user', content: '味道很好，送得也快' }], max_tokens: 4 });
  assert.equal(answer.object, 'chat.completion');
  assert.equal(typeof answer.choices[0].message.content, 'string');
});
