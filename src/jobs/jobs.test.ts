// The jobs service without the engine: creation and its validation, the status table, pagination,
// events and following. worker.test.ts runs jobs through the real engine.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { Context } from '../context.js';
import { openTestContext } from '../testing/postgres.js';
import { createFile } from '../files/index.js';
import { registerModel } from '../models/index.js';
import {
  cancelJob,
  createJob,
  FineTuningJob,
  FineTuningJobEvent,
  followJobEvents,
  JOB_STATUSES,
  listJobCheckpoints,
  listJobEvents,
  listJobs,
  pauseJob,
  resumeJob,
  retrieveJob,
  TERMINAL,
  TRANSITIONS,
  type JobStatus,
} from './index.js';
import { addEvent, upsertCheckpoint } from './internal/records.js';
import { canTransition, transition } from './internal/status.js';

let tmp: string;
let ctx: Context;
let trainId: string;
let validId: string;
let resultsId: string;

const example = JSON.stringify({ messages: [{ role: 'user', content: '很好吃' }, { role: 'assistant', content: '好评' }] }) + '\n';

before(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-jobs-'));
  ctx = openTestContext(path.join(tmp, 'home'));
  const modelDir = path.join(tmp, 'base');
  mkdirSync(modelDir);
  writeFileSync(path.join(modelDir, 'config.json'), '{"model_type":"qwen2"}');
  registerModel(ctx, { id: 'tiny-base', kind: 'base', path: modelDir, source: 'local' });
  registerModel(ctx, { id: 'ft:tiny-base:x:12345678', kind: 'fine-tuned', path: modelDir, base_model: 'tiny-base', source: 'training' });
  const upload = async (purpose: string) =>
    (await createFile(ctx, { source: Readable.from([Buffer.from(example)]), filename: 'train.jsonl', purpose })).id;
  trainId = await upload('fine-tune');
  validId = await upload('fine-tune');
  resultsId = await upload('fine-tune-results');
});
after(() => {
  ctx.close();
  rmSync(tmp, { recursive: true, force: true });
});

const setStatus = (id: string, status: JobStatus, extra = '') => ctx.db.prepare(`UPDATE jobs SET status = ?${extra} WHERE id = ?`).run(status, id);

describe('createJob', () => {
  test('creates a validating_files job in OpenAI shape with the weitiao extension', () => {
    const job = createJob(ctx, {
      model: 'tiny-base',
      training_file: trainId,
      validation_file: validId,
      suffix: '外卖-v1',
      seed: 42,
      metadata: { team: 'nlp' },
      method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 2 } } },
      weitiao: { lora: { r: 4 }, eval_every_steps: 5, label_set: ['好评', '差评'], max_steps: 10 },
    });
    FineTuningJob.parse(job);
    assert.match(job.id, /^ftjob-/);
    assert.equal(job.object, 'fine_tuning.job');
    assert.equal(job.status, 'validating_files');
    assert.equal(job.model, 'tiny-base');
    assert.equal(job.training_file, trainId);
    assert.equal(job.validation_file, validId);
    assert.equal(job.seed, 42);
    assert.equal(job.suffix, '外卖-v1');
    assert.equal(job.user_provided_suffix, '外卖-v1');
    assert.deepEqual(job.metadata, { team: 'nlp' });
    assert.deepEqual(job.hyperparameters, { n_epochs: 2, batch_size: 'auto', learning_rate_multiplier: 'auto' });
    assert.deepEqual(job.method, { type: 'supervised', supervised: { hyperparameters: job.hyperparameters } });
    assert.equal(job.fine_tuned_model, null);
    assert.equal(job.finished_at, null);
    assert.equal(job.error, null);
    assert.deepEqual(job.result_files, []);
    assert.deepEqual(job.integrations, []);
    assert.equal(job.weitiao.progress, null);
    assert.equal(job.weitiao.hyperparameters, null); // resolved only once the worker has read the files
    assert.deepEqual(job.weitiao.lora, { r: 4 });
    assert.deepEqual(job.weitiao.label_set, ['好评', '差评']);
    assert.equal(job.weitiao.max_steps, 10);
    assert.equal(job.weitiao.eval_every_steps, 5);
    assert.deepEqual(retrieveJob(ctx, job.id), job);
    const events = listJobEvents(ctx, job.id).data;
    assert.equal(events.length, 1);
    assert.match(events[0].message, /Created fine-tuning job/);
  });

  test('legacy top-level hyperparameters are accepted; a random seed is chosen when none is given', () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId, hyperparameters: { batch_size: 4, learning_rate_multiplier: 2 } });
    assert.deepEqual(job.hyperparameters, { n_epochs: 'auto', batch_size: 4, learning_rate_multiplier: 2 });
    assert.ok(Number.isInteger(job.seed) && job.seed >= 0);
    assert.equal(job.weitiao.label_set, 'auto');
  });

  test('unknown model or files are not_found naming the parameter', () => {
    assert.throws(() => createJob(ctx, { model: 'tiny-bsae', training_file: trainId }), (err: any) => {
      assert.equal(err.code, 'not_found');
      assert.equal(err.param, 'model');
      assert.equal(err.httpStatus, 404);
      assert.match(err.message, /tiny-base/); // the close name is suggested
      return true;
    });
    assert.throws(() => createJob(ctx, { model: 'tiny-base', training_file: 'file-nope' }), { code: 'not_found', param: 'training_file' });
    assert.throws(() => createJob(ctx, { model: 'tiny-base', training_file: trainId, validation_file: 'file-nope' }), {
      code: 'not_found',
      param: 'validation_file',
    });
  });

  test('request errors name the field', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ model: 'tiny-base' }, 'training_file'],
      [{ model: 'tiny-base', training_file: trainId, suffix: 'a:b' }, 'suffix'],
      [{ model: 'tiny-base', training_file: trainId, method: { type: 'reinforcement' } }, 'method.reinforcement.grader'],
      [{ model: 'tiny-base', training_file: trainId, method: { type: 'reinforcement', reinforcement: { grader: { type: 'string_check', name: 'x', input: '{{sample.output_text}}', reference: 'a', operation: 'is' } } } }, 'method.reinforcement.grader.operation'],
      [{ model: 'tiny-base', training_file: trainId, method: { type: 'dpo' }, weitiao: { method: 'full' } }, 'weitiao.method'],
      [{ model: 'tiny-base', training_file: trainId, method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 0 } } } }, 'method.supervised.hyperparameters.n_epochs'],
      [{ model: 'tiny-base', training_file: trainId, hyperparameters: { n_epochs: 2 }, method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 3 } } } }, 'hyperparameters'],
      [{ model: 'tiny-base', training_file: trainId, weitiao: { lora: { rank: 8 } } }, 'weitiao.lora.rank'], // the unknown key itself, as the HTTP API names it
      [{ model: 'tiny-base', training_file: trainId, weitiao: { label_set: ['only-one'] } }, 'weitiao.label_set'],
      [{ model: 'tiny-base', training_file: trainId, weitiao: { learning_rate: 1e-4 }, hyperparameters: { learning_rate_multiplier: 2 } }, 'weitiao.learning_rate'],
      [{ model: 'tiny-base', training_file: trainId, tools: [] }, ''],
      [{ model: 'tiny-base', training_file: resultsId }, 'training_file'],
      [{ model: 'tiny-base', training_file: trainId, metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) }, 'metadata'],
    ];
    for (const [params, param] of bad) {
      assert.throws(
        () => createJob(ctx, params as any),
        (err: any) => {
          assert.equal(err.code, 'invalid_request', JSON.stringify(params));
          if (param) assert.equal(err.param, param, JSON.stringify(params));
          return true;
        },
      );
    }
  });
});

describe('status transitions', () => {
  test('the table: terminal states go nowhere but a failed job back to the queue; every status is a key', () => {
    assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...JOB_STATUSES].sort());
    for (const s of TERMINAL) assert.deepEqual(TRANSITIONS[s], s === 'failed' ? ['queued'] : []);
    assert.ok(!canTransition('failed', 'running')); // a resumed failed job goes through the queue too
    assert.ok(canTransition('running', 'pausing'));
    assert.ok(canTransition('paused', 'queued'));
    assert.ok(!canTransition('paused', 'running')); // resume goes through the queue
    assert.ok(!canTransition('validating_files', 'running'));
    assert.ok(!canTransition('succeeded', 'queued'));
  });

  test('transition() enforces the table for every pair', () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    for (const from of JOB_STATUSES) {
      for (const to of JOB_STATUSES) {
        setStatus(job.id, from);
        if (canTransition(from, to)) {
          assert.equal(transition(ctx.db, job.id, to), from);
          assert.equal(retrieveJob(ctx, job.id).status, to);
        } else {
          assert.throws(() => transition(ctx.db, job.id, to), { code: 'conflict' }, `${from} → ${to}`);
          assert.equal(retrieveJob(ctx, job.id).status, from);
        }
      }
    }
    assert.throws(() => transition(ctx.db, 'ftjob-nope', 'queued'), { code: 'not_found' });
  });

  test('cancel: waiting or paused jobs at once; running ones by request; finished ones conflict', async () => {
    for (const from of ['validating_files', 'queued', 'paused'] as const) {
      const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
      setStatus(job.id, from);
      const cancelled = await cancelJob(ctx, job.id);
      assert.equal(cancelled.status, 'cancelled');
      assert.ok(cancelled.finished_at !== null);
      await assert.rejects(cancelJob(ctx, job.id), { code: 'conflict', param: 'fine_tuning_job_id' });
    }
    const running = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    // A live worker (this process, fresh heartbeat) will act on the request.
    setStatus(running.id, 'running', `, worker_id = 'w:${process.pid}', heartbeat_at = ${Math.floor(Date.now() / 1000)}`);
    const requested = await cancelJob(ctx, running.id);
    assert.equal(requested.status, 'running');
    assert.equal(requested.weitiao.requested_action, 'cancel');
    // Its worker is gone (no such process): nobody would act, so the job is cancelled at once.
    const orphan = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    setStatus(orphan.id, 'running', `, worker_id = 'w:999999999', heartbeat_at = ${Math.floor(Date.now() / 1000)}`);
    assert.equal((await cancelJob(ctx, orphan.id)).status, 'cancelled');
    for (const done of ['succeeded', 'failed'] as const) {
      const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
      setStatus(job.id, done);
      await assert.rejects(cancelJob(ctx, job.id), { code: 'conflict' });
    }
    await assert.rejects(cancelJob(ctx, 'ftjob-nope'), { code: 'not_found', param: 'fine_tuning_job_id' });
  });

  test('pause and resume follow the table', () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    assert.throws(() => pauseJob(ctx, job.id), { code: 'conflict' }); // validating_files
    assert.throws(() => resumeJob(ctx, job.id), { code: 'conflict' });
    setStatus(job.id, 'running');
    const pausing = pauseJob(ctx, job.id);
    assert.equal(pausing.status, 'pausing');
    assert.equal(pausing.weitiao.requested_action, 'pause');
    assert.throws(() => pauseJob(ctx, job.id), { code: 'conflict' });
    setStatus(job.id, 'paused');
    const resumed = resumeJob(ctx, job.id);
    assert.equal(resumed.status, 'queued');
    assert.equal(resumed.weitiao.requested_action, null);
    assert.equal(pauseJob(ctx, job.id).status, 'paused'); // a queued job is simply held
    setStatus(job.id, 'succeeded');
    assert.throws(() => pauseJob(ctx, job.id), { code: 'conflict' });
    assert.throws(() => resumeJob(ctx, job.id), (err: any) => /status is 'succeeded'/.test(err.message));
  });
});

describe('lists', () => {
  test('listJobs pages newest first by `after`, with has_more, first_id, last_id and a metadata filter', () => {
    const home = mkdtempSync(path.join(tmp, 'list-'));
    const c = openTestContext(home);
    try {
      const modelDir = path.join(tmp, 'base');
      registerModel(c, { id: 'b', kind: 'base', path: modelDir, source: 'local' });
      const fileId = (c.db.prepare(`INSERT INTO files (id, filename, purpose, bytes, path, created_at) VALUES ('file-x', 't.jsonl', 'fine-tune', 1, '/x', 0)`).run(), 'file-x');
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push(createJob(c, { model: 'b', training_file: fileId, metadata: { i: String(i), parity: i % 2 ? 'odd' : 'even' } }).id);
      const newest = [...ids].reverse();
      const seen: string[] = [];
      let after: string | undefined;
      let pages = 0;
      for (;;) {
        const page = listJobs(c, { limit: 3, after });
        pages++;
        assert.equal(page.object, 'list');
        assert.equal(page.first_id, page.data[0]?.id ?? null);
        assert.equal(page.last_id, page.data.at(-1)?.id ?? null);
        seen.push(...page.data.map((j) => j.id));
        if (!page.has_more) break;
        after = page.last_id!;
      }
      assert.equal(pages, 3);
      assert.deepEqual(seen, newest);
      assert.deepEqual(listJobs(c).data.map((j) => j.id), newest); // default limit 20
      assert.deepEqual(listJobs(c, { metadata: { parity: 'odd' } }).data.map((j) => j.id), [ids[5], ids[3], ids[1]]);
      assert.deepEqual(listJobs(c, { metadata: { parity: 'odd', i: '3' } }).data.map((j) => j.id), [ids[3]]);
      const odd = listJobs(c, { metadata: { parity: 'odd' }, limit: 2 });
      assert.equal(odd.has_more, true);
      assert.deepEqual(listJobs(c, { metadata: { parity: 'odd' }, limit: 2, after: odd.last_id! }).data.map((j) => j.id), [ids[1]]);
      assert.deepEqual(listJobs(c, { metadata: { nope: 'x' } }).data, []);
      assert.throws(() => listJobs(c, { after: 'ftjob-nope' }), { code: 'not_found', param: 'after' });
    } finally {
      c.close();
    }
  });

  test('listJobEvents pages newest first (or oldest first) and events keep OpenAI shape', () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    for (let step = 1; step <= 9; step++) {
      addEvent(ctx.db, job.id, { type: 'metrics', message: `Step ${step}/9`, data: { step, train_loss: 1 / step } });
    }
    const all = listJobEvents(ctx, job.id, { limit: 100 }).data;
    assert.equal(all.length, 10);
    assert.equal(all[0].message, 'Step 9/9');
    assert.match(all.at(-1)!.message, /Created/);
    for (const e of all) FineTuningJobEvent.parse(e);
    assert.deepEqual(all[0].data, { step: 9, train_loss: 1 / 9 });
    assert.equal(all[0].type, 'metrics');
    const p1 = listJobEvents(ctx, job.id, { limit: 4 });
    assert.equal(p1.has_more, true);
    const p2 = listJobEvents(ctx, job.id, { limit: 4, after: p1.last_id! });
    const p3 = listJobEvents(ctx, job.id, { limit: 4, after: p2.last_id! });
    assert.equal(p3.has_more, false);
    assert.deepEqual([...p1.data, ...p2.data, ...p3.data].map((e) => e.id), all.map((e) => e.id));
    const asc = listJobEvents(ctx, job.id, { limit: 100, order: 'asc' }).data;
    assert.deepEqual(asc.map((e) => e.id), [...all].reverse().map((e) => e.id));
    assert.throws(() => listJobEvents(ctx, 'ftjob-nope'), { code: 'not_found' });
  });

  test('listJobCheckpoints: newest step first, OpenAI shape, a repeated step replaces the record', () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    for (const step of [5, 10, 15]) {
      upsertCheckpoint(ctx.db, {
        job_id: job.id,
        step,
        epoch: step / 10,
        metrics: { step, train_loss: 2 / step },
        path: `/ckpt/step-${step}`,
        fine_tuned_model_checkpoint: `ft:tiny-base:weitiao:${job.id.slice(-8)}:ckpt-step-${step}`,
      });
    }
    const again = upsertCheckpoint(ctx.db, {
      job_id: job.id,
      step: 10,
      epoch: 1,
      metrics: { step: 10, train_loss: 0.1 },
      path: '/ckpt/step-10b',
      fine_tuned_model_checkpoint: 'x',
    });
    const page = listJobCheckpoints(ctx, job.id);
    assert.deepEqual(page.data.map((c) => c.step_number), [15, 10, 5]);
    assert.equal(page.data[1].id, again.id);
    assert.deepEqual(page.data[1].metrics, { step: 10, train_loss: 0.1 });
    assert.equal(page.data[0].object, 'fine_tuning.job.checkpoint');
    assert.equal(page.data[0].fine_tuning_job_id, job.id);
    const first = listJobCheckpoints(ctx, job.id, { limit: 1 });
    assert.equal(first.has_more, true);
    assert.deepEqual(listJobCheckpoints(ctx, job.id, { after: first.last_id! }).data.map((c) => c.step_number), [10, 5]);
  });
});

describe('followJobEvents', () => {
  test('yields past and new events in order and ends when the job settles', async () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    const seen: string[] = [];
    const writer = (async () => {
      for (let i = 1; i <= 3; i++) {
        await new Promise((r) => setTimeout(r, 30));
        addEvent(ctx.db, job.id, { message: `event ${i}` });
      }
      setStatus(job.id, 'failed');
    })();
    for await (const e of followJobEvents(ctx, job.id, { pollMs: 10 })) seen.push(e.message);
    await writer;
    assert.equal(seen.length, 4);
    assert.match(seen[0], /Created/);
    assert.deepEqual(seen.slice(1), ['event 1', 'event 2', 'event 3']);
    // From a given event on (an SSE client's Last-Event-ID).
    const from = listJobEvents(ctx, job.id, { order: 'asc' }).data[1].id;
    const rest: string[] = [];
    for await (const e of followJobEvents(ctx, job.id, { after: from })) rest.push(e.message);
    assert.deepEqual(rest, ['event 2', 'event 3']);
  });

  test('stops on abort while the job is still live', async () => {
    const job = createJob(ctx, { model: 'tiny-base', training_file: trainId });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    const started = Date.now();
    let n = 0;
    for await (const _ of followJobEvents(ctx, job.id, { signal: ac.signal, pollMs: 20 })) n++;
    assert.equal(n, 1);
    assert.ok(Date.now() - started < 2000);
  });
});
