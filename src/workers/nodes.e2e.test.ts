/**
 * Multi-node training end to end (issue 19): the API as its own process with no local worker, two `weitiao worker`
 * processes (own homes, reaching the API only over HTTP, rendezvous on 127.0.0.1) train one job with
 * `weitiao.nodes: 2` together under torchrun. Mid-training, after a checkpoint was uploaded, the worker holding
 * node 1 is SIGKILLed with its engine: the whole attempt ends (node 0's lease is lost too), the job is queued
 * again, a restarted worker and the other one form a new group that resumes from the uploaded checkpoint, and
 * the job succeeds with every step's metrics once in its events.
 */
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import type { Context } from '../context.js';
import { Cluster } from '../testing/cluster.js';
import { writeWaimaiJsonl } from '../testing/waimai.js';

const LEASE_SECONDS = 5;
// 48 examples, batch 2 (one example per node), ten epochs: 240 steps, a checkpoint every 12. A tiny model's steps
// take ~40 ms, so 72 steps (the first version) were over in 3 s, sometimes before the kill landed; 240 leave ~8 s.
const EXAMPLES = 48;
const EPOCHS = 10;
const STEPS = (EPOCHS * EXAMPLES) / 2;
const DEADLINE_MS = 420_000;

let cluster: Cluster;
let ctx: Context;
let dir: string;
let key: string;
let model: string;

before(async () => {
  cluster = await Cluster.setUp('nodes', DEADLINE_MS);
  ({ ctx, dir, key, model } = cluster);
});
after(() => cluster?.close());

// Both workers advertise 127.0.0.1: torchrun's rendezvous stays on this host.
const startWorker = (url: string, name: string) => cluster.startWorker(url, name, ['--advertise-host', '127.0.0.1']);
const waitFor: Cluster['waitFor'] = (what, check, deadlineMs) => cluster.waitFor(what, check, deadlineMs);

test('a 2-node job on two remote workers; node 1 SIGKILLed mid-training: the group re-forms, resumes, every step once', { timeout: 600_000 }, async () => {
  const { url } = await cluster.startApi(ctx.home.root, { WEITIAO_LEASE_SECONDS: String(LEASE_SECONDS) });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });

  const data = writeWaimaiJsonl(dir, EXAMPLES, 2);
  const train = await client.files.create({ file: createReadStream(data.train), purpose: 'fine-tune' });
  const job = await client.fineTuning.jobs.create({
    model,
    training_file: train.id,
    seed: 11,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: EPOCHS, batch_size: 2 } } },
    weitiao: { nodes: 2, save_every_steps: 12, lora: { r: 4, alpha: 8 } },
  } as OpenAI.FineTuning.JobCreateParams);
  const workers = new Map([['w1', startWorker(url, 'w1')], ['w2', startWorker(url, 'w2')]]);

  // Training on both nodes with an uploaded checkpoint, not finished yet: kill the worker of node 1 and its engine.
  const member = await waitFor('the group training with a recorded checkpoint', () => {
    const row = ctx.db
      .prepare(
        `SELECT j.extension, n.worker FROM jobs j JOIN job_nodes n ON n.job_id = j.id AND n.leader = j.worker_id AND n.node_rank = 1
         WHERE j.id = ? AND j.status = 'running' AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.job_id = j.id)`,
      )
      .get(job.id) as { extension: string; worker: string } | undefined;
    const status = (ctx.db.prepare('SELECT status FROM jobs WHERE id = ?').get(job.id) as { status: string }).status;
    if (['succeeded', 'failed', 'cancelled'].includes(status)) assert.fail(`the job ended (${status}) before the kill\n${cluster.logs()}`);
    const progress = row && (JSON.parse(row.extension) as { progress?: { step: number; total_steps: number } }).progress;
    return row && progress && progress.step < progress.total_steps ? row.worker : undefined;
  });
  const victim = workers.get(member)!;
  const enginePid = Number([...victim.lines].reverse().find((l) => l.includes(`job ${job.id}: engine started`))?.match(/pid (\d+)/)?.[1]);
  assert.ok(enginePid > 0, `the member said its engine's pid:\n${victim.lines.join('\n')}`);
  await cluster.kill(victim, enginePid);
  const checkpointsBefore = (ctx.db.prepare('SELECT step FROM checkpoints WHERE job_id = ? ORDER BY step').all(job.id) as { step: number }[]).map((c) => c.step);
  workers.set(member, startWorker(url, member)); // restarted: the group forms again with the other worker

  const done = await waitFor('the job to finish', async () => {
    const j = await client.fineTuning.jobs.retrieve(job.id);
    return ['succeeded', 'failed', 'cancelled'].includes(j.status) ? j : undefined;
  });
  assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
  const events: OpenAI.FineTuning.FineTuningJobEvent[] = [];
  for await (const e of client.fineTuning.jobs.listEvents(job.id, { limit: 100 })) events.push(e);
  const steps = events.filter((e) => e.type === 'metrics').map((e) => (e.data as { step: number }).step).sort((a, b) => a - b);
  assert.deepEqual(steps, Array.from({ length: STEPS }, (_, i) => i + 1), 'every step exactly once');
  const resumed = events.find((e) => /^Resuming fine-tuning from checkpoint step-\d+/.test(e.message));
  assert.ok(resumed, `resumed from its checkpoint:\n${messages(events)}`);
  // Node 0 may still have saved and uploaded a checkpoint after the kill (its engine stops cleanly when node 1 is
  // gone): the resume starts from a recorded one, at or after the last recorded before the kill.
  const from = Number(/step-(\d+)/.exec(resumed.message)![1]);
  const recorded = (ctx.db.prepare('SELECT step FROM checkpoints WHERE job_id = ?').all(job.id) as { step: number }[]).map((c) => c.step);
  assert.ok(recorded.includes(from) && from >= Math.max(...checkpointsBefore) && from < STEPS, `resumed from step ${from}; recorded before the kill: ${checkpointsBefore}\n${messages(events)}\n${cluster.logs()}`);
  assert.ok(events.filter((e) => /^Node 0 of 2/.test(e.message)).length >= 2, 'a new group for the second attempt');
  assert.ok((done as unknown as { weitiao: { attempts: number } }).weitiao.attempts >= 1, 'the lost attempt is counted');
});

/** The job's events but its per-step metrics, oldest first, for a failure's message. */
const messages = (events: OpenAI.FineTuning.FineTuningJobEvent[]) =>
  events.filter((e) => e.type !== 'metrics').reverse().map((e) => `${e.created_at} ${e.message}`).join('\n');
