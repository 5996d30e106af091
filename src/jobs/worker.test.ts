// The worker with the real engine on a tiny model: a job that succeeds, one whose training file is bad,
// and one cancelled while it trains. Pause/resume and recovery are in worker-resume.test.ts.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { EngineEvent } from '../engine/index.js';
import { listEvalResults } from '../eval/results.js';
import { createFile, fileContentPath } from '../files/index.js';
import { retrieveModel } from '../models/index.js';
import {
  cancelJob,
  createJob,
  FineTuningJob,
  followJobEvents,
  listJobCheckpoints,
  listJobEvents,
  retrieveJob,
  Worker,
  type FineTuningJobEvent,
} from './index.js';
import { isGroupAlive } from './internal/process.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';

let fx: Fixture;

before(async () => {
  fx = await setUpFixture('worker');
});
after(() => fx?.close());

const allEvents = (id: string) => listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' }).data;

describe('worker with the real engine', () => {
  test('a job runs to succeeded: metrics events, checkpoints, label metrics, the model and its result file', async () => {
    const hooked: FineTuningJobEvent[] = [];
    const engineEvents: EngineEvent[] = [];
    const worker = new Worker(fx.ctx, {
      threads: 1,
      onEvent: (_id, e) => hooked.push(e),
      onEngineEvent: (_id, e) => engineEvents.push(e),
    });
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      validation_file: fx.validation,
      suffix: 'waimai',
      seed: 7,
      method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 8, learning_rate_multiplier: 10 } } },
      weitiao: { lora: { r: 4, alpha: 8 }, save_every_steps: 3, eval_every_steps: 3, max_steps: 6 },
    });
    // Follow from "another reader" while the worker runs: it must end by itself when the job succeeds.
    const followed = (async () => {
      const seen: FineTuningJobEvent[] = [];
      for await (const e of followJobEvents(fx.ctx, job.id, { pollMs: 50 })) seen.push(e);
      return seen;
    })();

    assert.equal(await worker.runNext(), job.id);
    assert.equal(await worker.runNext(), null); // nothing else waits

    const done = retrieveJob(fx.ctx, job.id);
    FineTuningJob.parse(done);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    assert.equal(done.fine_tuned_model, `ft:tiny:waimai:${job.id.slice(-8)}`);
    assert.ok(done.finished_at !== null && done.finished_at >= done.created_at);
    assert.ok(done.trained_tokens! > 0);
    // auto n_epochs for 64 examples is 3; explicit batch and multiplier are kept.
    assert.deepEqual(done.hyperparameters, { n_epochs: 3, batch_size: 8, learning_rate_multiplier: 10 });
    assert.deepEqual(done.weitiao.hyperparameters?.auto, ['n_epochs']);
    assert.equal(done.weitiao.hyperparameters?.learning_rate, 2e-3);
    assert.equal(done.weitiao.n_examples, 64);
    assert.equal(done.weitiao.n_validation_examples, 32);
    assert.deepEqual([...(done.weitiao.label_set as string[])].sort(), ['好评', '差评'].sort());
    assert.deepEqual(done.weitiao.progress, { step: 6, total_steps: 6, epoch: 6 / 8 });
    const lm = done.weitiao.label_metrics!;
    assert.equal(lm.n, 32);
    assert.equal(lm.confusion_matrix.flat().reduce((a, b) => a + b, 0), 32);

    // Metrics events: OpenAI's type and data fields, one per step.
    const events = allEvents(job.id);
    const metrics = events.filter((e) => e.type === 'metrics' && (e.data as any).train_loss !== undefined);
    assert.deepEqual(metrics.map((e) => (e.data as any).step), [1, 2, 3, 4, 5, 6]);
    for (const e of metrics) {
      const d = e.data as Record<string, number>;
      assert.ok(Number.isFinite(d.train_loss) && Number.isFinite(d.train_mean_token_accuracy), JSON.stringify(d));
      assert.match(e.message, new RegExp(`^Step ${d.step}/6: training loss=`));
    }
    assert.ok(events.some((e) => e.type === 'metrics' && typeof (e.data as any).valid_loss === 'number'));
    assert.ok(events.some((e) => /^Evaluation at step 6/.test(e.message) && (e.data as any).label_metrics));
    assert.ok(events.some((e) => e.message.startsWith('Files validated: 64 training and 32 validation examples')));
    assert.equal(events.at(-1)!.message, 'The job has successfully completed / 任务已成功完成');
    // The follower saw the same events, in order, and stopped by itself.
    assert.deepEqual((await followed).map((e) => e.id), events.map((e) => e.id));
    // The in-process hooks saw every event the worker wrote (all but "Created") and the raw engine stream.
    assert.deepEqual(hooked.map((e) => e.id), events.slice(1).map((e) => e.id));
    assert.ok(engineEvents.some((e) => e.type === 'hello'));
    assert.equal(engineEvents.filter((e) => e.type === 'metrics' && e.train_loss !== undefined).length, 6);

    // Checkpoints every 3 steps, newest first, each registered as a chat-able model.
    const ckpts = listJobCheckpoints(fx.ctx, job.id).data;
    assert.deepEqual(ckpts.map((c) => c.step_number), [6, 3]);
    for (const c of ckpts) {
      assert.equal(c.fine_tuned_model_checkpoint, `${done.fine_tuned_model}:ckpt-step-${c.step_number}`);
      assert.equal(c.metrics.step, c.step_number);
      assert.ok(Number.isFinite(c.metrics.train_loss));
      const m = retrieveModel(fx.ctx, c.fine_tuned_model_checkpoint);
      assert.equal(m.weitiao.kind, 'checkpoint');
      assert.equal(m.weitiao.base_model, 'tiny');
      assert.ok(existsSync(path.join(m.weitiao.path, 'adapter_model.safetensors')));
    }
    assert.equal(ckpts[0].metrics.full_valid_loss !== undefined, true); // step 6 had a full validation pass

    // The fine-tuned model with its lineage.
    const model = retrieveModel(fx.ctx, done.fine_tuned_model!);
    assert.equal(model.weitiao.kind, 'fine-tuned');
    assert.equal(model.weitiao.job_id, job.id);
    assert.equal(model.weitiao.path, path.join(fx.ctx.home.jobs, job.id, 'model'));
    assert.ok(existsSync(path.join(model.weitiao.path, 'adapter_model.safetensors')));
    assert.equal(model.weitiao.metadata.training_file, fx.train);
    assert.equal((model.weitiao.metadata.hyperparameters as any).batch_size, 8);

    // The result file: OpenAI's metrics CSV, one row per step.
    assert.equal(done.result_files.length, 1);
    const csv = readFileSync(fileContentPath(fx.ctx, done.result_files[0]), 'utf8').trim().split('\n');
    assert.equal(csv[0], 'step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy');
    assert.deepEqual(csv.slice(1).map((l) => Number(l.split(',')[0])), [1, 2, 3, 4, 5, 6]);
    assert.equal(Number(csv[1].split(',')[1]), (metrics[0].data as any).train_loss);
    assert.notEqual(csv[6].split(',')[3], ''); // validation loss at the last step
  });

  test('a job that asks for the forgetting check gets it after success: events with the delta, the result stored with the job', async () => {
    const worker = new Worker(fx.ctx, { threads: 1 });
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      seed: 7,
      method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 8 } } },
      weitiao: { lora: { r: 4, alpha: 8 }, max_steps: 1, forgetting_check: { max_examples: 6 } },
    });
    assert.equal(await worker.runNext(), job.id);
    const done = retrieveJob(fx.ctx, job.id);
    assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
    const messages = allEvents(job.id).map((e) => e.message);
    const succeeded = messages.indexOf('The job has successfully completed / 任务已成功完成');
    assert.ok(succeeded >= 0);
    // The check runs after the job's success (a failed check would be a warning, never a failed job).
    const finished = allEvents(job.id).find((e) => e.message.startsWith('Forgetting check: general ability'));
    assert.ok(finished, messages.join('\n'));
    assert.ok(messages.indexOf(finished.message) > succeeded);
    const data = finished.data as { forgetting_check: string; delta: number };
    assert.ok(Number.isFinite(data.delta));
    const stored = listEvalResults(fx.ctx, { job_id: job.id });
    assert.deepEqual(stored.map((r) => r.id), [data.forgetting_check]);
  });

  test('a bad training file fails the job with error.param naming the line and field; every issue is an event', async () => {
    const good = readFileSync(fileContentPath(fx.ctx, fx.train), 'utf8').split('\n').slice(0, 4);
    const bad = [good[0], good[1], JSON.stringify({ messages: [{ role: 'user', content: '好吃' }, { role: 'bot', content: '好评' }] }), good[2], '{oops', good[3]];
    const file = await createFile(fx.ctx, { source: Readable.from([Buffer.from(bad.join('\n') + '\n')]), filename: 'bad.jsonl', purpose: 'fine-tune' });
    const job = createJob(fx.ctx, { model: fx.model, training_file: file.id });
    const worker = new Worker(fx.ctx, { threads: 1 });
    const final = await worker.runJob(job.id);
    assert.equal(final.status, 'failed');
    assert.equal(final.error?.code, 'invalid_training_file');
    assert.equal(final.error?.param, 'training_file:3:messages[1].role');
    const errors = allEvents(job.id).filter((e) => e.level === 'error');
    const issues = errors.filter((e) => /^bad\.jsonl:\d+/.test(e.message)); // one event per issue, then the failure
    assert.ok(issues.length >= 2);
    assert.match(final.error!.message, new RegExp(`^bad\\.jsonl:3: messages\\[1\\]\\.role: unrecognized role 'bot'.* \\(\\+${issues.length - 1} more\\)$`));
    assert.equal(final.fine_tuned_model, null);
    assert.ok(errors.some((e) => e.message.startsWith('bad.jsonl:3: messages[1].role')));
    assert.ok(errors.some((e) => e.message.startsWith('bad.jsonl:5')));
    assert.ok(!existsSync(path.join(fx.ctx.home.jobs, job.id))); // never reached the engine
    await assert.rejects(worker.runJob(job.id), { code: 'conflict' });
  });

  test('cancelling a running job stops the whole engine process group within 5 s', async () => {
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 25, batch_size: 2 } } },
    });
    let sawStep = (): void => {};
    const stepped = new Promise<void>((r) => (sawStep = r));
    const worker = new Worker(fx.ctx, {
      threads: 1,
      pollMs: 200,
      onEngineEvent: (_id, e) => e.type === 'metrics' && e.step >= 2 && sawStep(),
    });
    const running = worker.runNext();
    await stepped;
    const pid = retrieveJobRowPid(job.id);
    assert.ok(pid && isGroupAlive(pid), 'the engine runs while the job is running');
    assert.equal(retrieveJob(fx.ctx, job.id).status, 'running');

    const t0 = Date.now();
    const requested = await cancelJob(fx.ctx, job.id);
    assert.equal(requested.weitiao.requested_action, 'cancel');
    await running;
    const elapsed = Date.now() - t0;
    const final = retrieveJob(fx.ctx, job.id);
    assert.equal(final.status, 'cancelled');
    assert.ok(elapsed < 5000, `cancel took ${elapsed} ms`);
    assert.equal(isGroupAlive(pid), false, 'no engine process is left');
    assert.equal(final.fine_tuned_model, null);
    assert.ok(final.finished_at !== null);
    assert.match(allEvents(job.id).at(-1)!.message, /^The job was cancelled at step \d+/);
    assert.ok(!readdirSync(path.join(fx.ctx.home.jobs, job.id)).includes('model'));
  });
});

function retrieveJobRowPid(id: string): number | null {
  return (fx.ctx.db.prepare('SELECT worker_pid FROM jobs WHERE id = ?').get(id) as { worker_pid: number | null }).worker_pid;
}
