// The Evals API through the official openai SDK against a real server on 127.0.0.1: an eval with grader
// criteria, a run answered by a real tiny model (engine subprocess), a run grading given samples from an
// uploaded file, output items, and the errors the SDK turns into its own classes. Then the durable queue:
// runs queued through one connection to the home and executed by a queue on another, a run whose worker died
// resumed after its stored rows, cancel of a queued and of a running run.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI, { toFile } from 'openai';
import { startServer, type RunningServer } from '../api/index.js';
import type { Context } from '../context.js';
import { openTestContext } from '../testing/postgres.js';
import { mixGeneralData } from '../eval/job-checks.js';
import { fileContentPath } from '../files/index.js';
import { submitJob, type FineTuningJob } from '../jobs/index.js';
import { createKey } from '../keys/index.js';
import { createTinyModel } from '../models/index.js';
import { cancelRun, createEval, createRun, EvalRunQueue, listOutputItems, listRunEvents, retrieveRun, waitForRun } from './index.js';
import * as repo from './internal/repository.js';
import { meanWithInterval, renderTemplate } from './internal/runner.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const WAIMAI = path.resolve(REPO, '../shared/data/waimai_10k.csv');

let dir: string;
let ctx: Context;
/** A second connection to the same home, as another process would open it. */
let other: Context;
let server: RunningServer;
let client: OpenAI;

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-evals-'));
  ctx = openTestContext(path.join(dir, 'home'));
  other = openTestContext(path.join(dir, 'home'));
  await createTinyModel(ctx, { name: 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024 });
  const key = createKey(ctx, { name: 'evals' }).key;
  server = await startServer(ctx, { host: '127.0.0.1', port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });
});
after(async () => {
  await server?.close();
  other?.close();
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function finished(evalId: string, runId: string) {
  for (;;) {
    const run = await client.evals.runs.retrieve(runId, { eval_id: evalId });
    if (!['queued', 'in_progress'].includes(run.status)) return run;
    await new Promise((r) => setTimeout(r, 200));
  }
}

const criteria = [
  { type: 'string_check' as const, name: 'exact', input: '{{sample.output_text}}', reference: '{{item.answer}}', operation: 'eq' as const },
  { type: 'text_similarity' as const, name: 'similar', input: '{{sample.output_text}}', reference: '{{item.answer}}', evaluation_metric: 'fuzzy_match' as const, pass_threshold: 0.5 },
];

describe('Evals API with the openai SDK', () => {
  test('create, list, retrieve an eval; a run answered by the tiny model; its output items', async () => {
    const ev = await client.evals.create({
      name: '外卖评论',
      data_source_config: { type: 'custom', item_schema: { type: 'object', properties: { review: { type: 'string' }, answer: { type: 'string' } } }, include_sample_schema: true },
      testing_criteria: criteria,
      metadata: { team: 'nlp' },
    });
    assert.equal(ev.object, 'eval');
    assert.match(ev.id, /^eval_/);
    assert.deepEqual(ev.testing_criteria.map((c) => c.name), ['exact', 'similar']);
    assert.equal((await client.evals.retrieve(ev.id)).name, '外卖评论');
    const listed = [];
    for await (const e of client.evals.list()) listed.push(e.id);
    assert.ok(listed.includes(ev.id));

    const items = [
      { review: '味道很好，送餐也快', answer: '好评' },
      { review: '太难吃了，还凉了', answer: '差评' },
      { review: '一般般', answer: '差评' },
    ];
    const run = await client.evals.runs.create(ev.id, {
      name: 'tiny zero-shot',
      data_source: {
        type: 'completions',
        model: 'tiny',
        source: { type: 'file_content', content: items.map((item) => ({ item })) },
        input_messages: {
          type: 'template',
          template: [
            { role: 'system', content: '判断外卖评论是好评还是差评。' },
            { role: 'user', content: '评论：{{item.review}}' },
          ],
        },
        sampling_params: { max_completion_tokens: 16, seed: 1 },
      },
    });
    assert.equal(run.object, 'eval.run');
    assert.ok(['queued', 'in_progress'].includes(run.status), run.status);
    const done = await finished(ev.id, run.id);
    assert.equal(done.status, 'completed', JSON.stringify(done.error));
    assert.equal(done.result_counts.total, 3);
    assert.equal(done.result_counts.passed + done.result_counts.failed, 3);

    const out = [];
    for await (const o of client.evals.runs.outputItems.list(run.id, { eval_id: ev.id })) out.push(o);
    assert.equal(out.length, 3);
    assert.deepEqual(out.map((o) => o.datasource_item_id), [0, 1, 2]);
    for (const o of out) {
      const item = items[o.datasource_item_id];
      assert.deepEqual(o.datasource_item, item);
      assert.equal(o.sample.input.at(-1)!.content, `评论：${item.review}`, 'the template filled from the item');
      const answer = o.sample.output[0].content ?? '';
      const exact = o.results.find((r) => r.name === 'exact')!;
      assert.equal(exact.score, answer === item.answer ? 1 : 0);
      assert.equal(exact.passed, answer === item.answer);
      const similar = o.results.find((r) => r.name === 'similar')!;
      assert.ok(similar.score >= 0 && similar.score <= 1);
      assert.equal(similar.passed, similar.score >= 0.5);
      assert.equal(o.status, o.results.every((r) => r.passed) ? 'pass' : 'fail');
    }
    for (const c of done.per_testing_criteria_results) {
      assert.equal(c.passed, out.filter((o) => o.results.find((r) => r.name === c.testing_criteria)!.passed).length);
    }
    assert.equal(done.per_model_usage[0].model_name, 'tiny');
    assert.equal(done.per_model_usage[0].invocation_count, 3);
    const runs = [];
    for await (const r of client.evals.runs.list(ev.id)) runs.push(r.id);
    assert.deepEqual(runs, [run.id]);
    const one = await client.evals.runs.outputItems.retrieve(out[1].id, { eval_id: ev.id, run_id: run.id });
    assert.equal(one.id, out[1].id);
    // Progress in weitiao's field and as events (weitiao's route beside OpenAI's).
    const extra = (done as unknown as { weitiao: { progress: unknown; attempts: number } }).weitiao;
    assert.deepEqual(extra.progress, { phase: 'grade', current: 3, total: 3 });
    assert.equal(extra.attempts, 1);
    const events = (await client.get(`/evals/${ev.id}/runs/${run.id}/events`)) as { data: { message: string; data: { current?: number } | null }[] };
    assert.match(events.data[0].message, /^Created eval run/);
    assert.match(events.data[1].message, /^Started: 3 items/);
    assert.equal(events.data.at(-2)!.data!.current, 3, 'the last chunk scored reports 3 of 3');
    assert.match(events.data.at(-1)!.message, /^Completed/);
  });

  test('a jsonl run grades the samples of an uploaded file: pass and fail exactly as given', async () => {
    const ev = await client.evals.create({ data_source_config: { type: 'custom', item_schema: { type: 'object' } }, testing_criteria: criteria });
    const lines = [
      { item: { answer: '好评' }, sample: { output_text: '好评' } },
      { item: { answer: '差评' }, sample: { output_text: '好评' } },
      { item: { answer: 'positive' }, sample: { output_text: 'positive' } },
    ];
    const file = await client.files.create({ file: await toFile(Buffer.from(lines.map((l) => JSON.stringify(l)).join('\n') + '\n'), 'samples.jsonl'), purpose: 'evals' });
    const run = await client.evals.runs.create(ev.id, { data_source: { type: 'jsonl', source: { type: 'file_id', id: file.id } } });
    const done = await finished(ev.id, run.id);
    assert.equal(done.status, 'completed', JSON.stringify(done.error));
    assert.deepEqual(done.result_counts, { total: 3, errored: 0, failed: 1, passed: 2 });
    const fails = [];
    for await (const o of client.evals.runs.outputItems.list(run.id, { eval_id: ev.id, status: 'fail' })) fails.push(o.datasource_item_id);
    assert.deepEqual(fails, [1]);
    // weitiao's addition: each criterion's mean with its bootstrap interval.
    const metrics = (done as unknown as { weitiao: { metrics: Record<string, { value: number }> } }).weitiao.metrics;
    assert.ok(Math.abs(metrics.exact.value - 2 / 3) < 1e-9);
  });

  test('errors arrive as the SDK classes, naming the field', async () => {
    await assert.rejects(
      client.evals.create({
        data_source_config: { type: 'custom', item_schema: {} },
        testing_criteria: [{ type: 'label_model', name: 'l', model: 'm', input: [], labels: ['a'], passing_labels: ['a'] }],
      }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && (e.error as { param?: string }).param === 'testing_criteria[0].type',
    );
    await assert.rejects(
      client.evals.create({ data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [{ ...criteria[0], operation: 'nope' } as never] }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && String((e.error as { param?: string }).param).startsWith('testing_criteria[0].operation'),
    );
    await assert.rejects(client.evals.retrieve('eval_nope'), OpenAI.NotFoundError);
    const ev = await client.evals.create({ data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    await assert.rejects(
      client.evals.runs.create(ev.id, { data_source: { type: 'completions', model: 'no-such-model', source: { type: 'file_content', content: [{ item: {} }] }, input_messages: { type: 'template', template: [{ role: 'user', content: 'x' }] } } }),
      OpenAI.NotFoundError,
    );
    const deleted = await client.evals.delete(ev.id);
    assert.equal(deleted.deleted, true);
  });

  test('templates fill nested item fields and refuse missing ones', () => {
    assert.equal(renderTemplate('问：{{ item.q.text }} / {{item.n}}', { q: { text: '好吃吗' }, n: 3 }), '问：好吃吗 / 3');
    assert.throws(() => renderTemplate('{{item.missing}}', {}), /item\.missing/);
  });
  test('a criterion mean and its bootstrap interval from stored scores', () => {
    assert.deepEqual(meanWithInterval([1, 1, 1]), { value: 1, ci_low: 1, ci_high: 1, scale: 1 });
    const m = meanWithInterval([1, 0, 1, 0]);
    assert.equal(m.value, 0.5);
    assert.ok(m.ci_low >= 0 && m.ci_low < 0.5 && m.ci_high > 0.5 && m.ci_high <= 1, JSON.stringify(m));
    assert.deepEqual(meanWithInterval([1, 0, 1, 0]), m, 'seeded: the same interval every time');
  });
});

// ------------------------------------------------------------------------------------------ the queue

/** A pid no process has: the worker that wrote it is gone. */
const DEAD_PID = 2 ** 22 + 12_345;
const samples = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ item: { answer: i % 2 ? '差评' : '好评' }, sample: { output_text: '好评' } }));
const jsonlRun = (n: number) => ({ data_source: { type: 'jsonl' as const, source: { type: 'file_content' as const, content: samples(n) } } });

describe('eval runs in the durable queue', () => {
  test('two connections claim one queued run: exactly one gets it', () => {
    const ev = createEval(ctx, { data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    const run = createRun(ctx, ev.id, jsonlRun(1));
    // Claimed before this test yields, so the server's queue cannot take it first.
    const a = repo.claimRun(ctx, 'evalqueue-a:1', run.id);
    const b = repo.claimRun(other, 'evalqueue-b:1', run.id);
    assert.equal(a?.worker_id, 'evalqueue-a:1');
    assert.equal(b, null);
    assert.equal(repo.getRunRow(other, run.id)!.attempts, 1);
    cancelRun(ctx, ev.id, run.id);
  });

  test("a run whose worker died is queued again and finishes with one output item per row, its stored rows not scored again", async () => {
    const ev = createEval(ctx, { data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    const run = createRun(ctx, ev.id, jsonlRun(3));
    // As a queue in a process now gone left it: claimed, row 0 stored, heartbeat old.
    const gone = `evalqueue-gone:${DEAD_PID}`;
    assert.ok(repo.claimRun(ctx, gone, run.id));
    const first: repo.OutputItemObject = {
      object: 'eval.run.output_item', id: 'outputitem_stored_before', run_id: run.id, eval_id: ev.id, created_at: 0, status: 'pass',
      datasource_item_id: 0, datasource_item: samples(1)[0].item, results: [{ name: 'exact', type: 'string_check', score: 1, passed: true, sample: null }],
      sample: { output: [{ role: 'assistant', content: '好评' }] },
    };
    assert.ok(repo.insertOutputItems(ctx, run.id, gone, [first]));

    const queue = new EvalRunQueue(other, { chunkSize: 2 });
    const events: string[] = [];
    queue.on('event', (id, e) => id === run.id && events.push(e.message));
    assert.deepEqual(queue.recover(), [run.id]);
    assert.equal(await queue.runNext(run.id), run.id); // claims synchronously, before the server's queue can look

    const done = retrieveRun(ctx, ev.id, run.id);
    assert.equal(done.status, 'completed', JSON.stringify(done.error));
    assert.equal(done.weitiao.attempts, 2);
    assert.deepEqual(done.result_counts, { total: 3, errored: 0, failed: 1, passed: 2 });
    const items = listOutputItems(ctx, ev.id, run.id, { limit: 10 }).data;
    assert.deepEqual(items.map((i) => i.datasource_item_id), [0, 1, 2]);
    assert.equal(items[0].id, 'outputitem_stored_before', 'row 0 was kept, not scored again');
    assert.deepEqual(items.map((i) => i.status), ['pass', 'fail', 'pass']);
    assert.match(events[0], /stopped; queued again to continue after item 1/);
    assert.match(events[1], /^Resumed after item 1 of 3 \(attempt 2\)/);
    assert.match(events.at(-1)!, /^Completed: 2 of 3/);
  });

  test('a stale heartbeat counts as gone even when the pid lives; a fresh one does not; too many losses fail the run', () => {
    const ev = createEval(ctx, { data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    const stale = createRun(ctx, ev.id, jsonlRun(1));
    const fresh = createRun(ctx, ev.id, jsonlRun(1));
    const worn = createRun(ctx, ev.id, jsonlRun(1));
    const live = `evalqueue-hung:${process.pid}`;
    assert.ok(repo.claimRun(ctx, live, stale.id) && repo.claimRun(ctx, `evalqueue-busy:${process.pid}`, fresh.id));
    ctx.db.prepare('UPDATE eval_runs SET heartbeat_at = heartbeat_at - 3600 WHERE id = ?').run(stale.id);
    assert.ok(repo.claimRun(ctx, `evalqueue-gone:${DEAD_PID}`, worn.id));
    ctx.db.prepare('UPDATE eval_runs SET attempts = 3 WHERE id = ?').run(worn.id);

    const touched = new EvalRunQueue(other).recover();
    assert.deepEqual(touched.sort(), [stale.id, worn.id].sort());
    const row = repo.getRunRow(ctx, stale.id)!;
    assert.equal(row.worker_id, null);
    assert.ok(['queued', 'in_progress', 'completed'].includes(row.status), row.status); // the server's queue may take it now
    assert.equal(repo.getRunRow(ctx, fresh.id)!.worker_id, `evalqueue-busy:${process.pid}`);
    const failed = retrieveRun(ctx, ev.id, worn.id);
    assert.equal(failed.status, 'failed');
    assert.equal(failed.error!.code, 'interrupted');
    cancelRun(ctx, ev.id, fresh.id);
  });

  test('cancel: a queued run never runs; a running run stops between chunks, from another connection', async () => {
    const ev = createEval(ctx, { data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    const queued = createRun(ctx, ev.id, jsonlRun(2));
    assert.equal(cancelRun(other, ev.id, queued.id).status, 'canceled'); // before this test yields: still queued
    const queue = new EvalRunQueue(other, { chunkSize: 1, pollMs: 100 });
    await queue.drain();
    assert.equal(retrieveRun(ctx, ev.id, queued.id).status, 'canceled');
    assert.equal(listOutputItems(ctx, ev.id, queued.id).data.length, 0);

    const running = createRun(ctx, ev.id, jsonlRun(4));
    // Cancelled through the first connection as soon as the queue on the second has stored row 0.
    queue.on('event', (id, e) => {
      if (id === running.id && e.data?.current === 1) cancelRun(ctx, ev.id, running.id);
    });
    assert.equal(await queue.runNext(running.id), running.id);
    const run = retrieveRun(ctx, ev.id, running.id);
    assert.equal(run.status, 'canceled');
    assert.deepEqual(listOutputItems(ctx, ev.id, running.id).data.map((i) => i.datasource_item_id), [0]);
    const messages = listRunEvents(ctx, ev.id, running.id).data.map((e) => e.message);
    assert.match(messages.at(-1)!, /cancelled/);
    assert.equal(repo.getRunRow(ctx, running.id)!.worker_id, null);
  });

  test('a queue that stops mid-run queues the run again; the next queue finishes it after the stored rows', async () => {
    const ev = createEval(ctx, { data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    const run = createRun(ctx, ev.id, jsonlRun(2));
    const queue = new EvalRunQueue(other, { chunkSize: 1 });
    let stopped: Promise<void> | null = null;
    queue.on('event', (id, e) => {
      if (id === run.id && e.data?.current === 1) stopped ??= queue.stop();
    });
    assert.equal(await queue.runNext(run.id), run.id);
    await stopped;
    const row = repo.getRunRow(ctx, run.id)!;
    // Queued again (the server's queue may already have taken it up: then it is in progress or done).
    assert.ok(row.status !== 'canceled' && row.status !== 'failed', row.status);
    assert.ok(listRunEvents(ctx, ev.id, run.id).data.some((e) => /^Stopped with its process; queued again/.test(e.message)));
    if (row.status === 'queued') await new EvalRunQueue(other, { chunkSize: 1 }).runNext(run.id);
    const done = await waitForRun(ctx, ev.id, run.id, 100);
    assert.equal(done.status, 'completed', JSON.stringify(done.error));
    assert.deepEqual(listOutputItems(ctx, ev.id, run.id).data.map((i) => i.datasource_item_id), [0, 1]);
    assert.equal(done.weitiao.attempts, 2);
  });
});

// The job settings evaluation owns, through the one create schema: `weitiao.mix_general` over HTTP is mixed by
// the same submitJob the CLI's --mix-general calls (this file's server and tiny model; no training needed).
describe('weitiao.mix_general on POST /v1/fine_tuning/jobs', () => {
  test('the API stores the mix and the job trains on the same mixed file the CLI path makes', async () => {
    const reviews = ['好吃', '太咸了', '送餐很快', '凉了', 'great', 'awful', '还行', '再也不点了'];
    const lines = reviews.map((r, i) => JSON.stringify({ messages: [{ role: 'user', content: `评论：${r}` }, { role: 'assistant', content: i % 2 ? '差评' : '好评' }] }));
    const upload = await client.files.create({ file: await toFile(Buffer.from(lines.join('\n') + '\n'), 'train.jsonl'), purpose: 'fine-tune' });
    const body = { model: 'tiny', training_file: upload.id, seed: 3, weitiao: { mix_general: 0.25 } };
    const job = (await client.fineTuning.jobs.create(body as never)) as unknown as FineTuningJob;

    assert.notEqual(job.training_file, upload.id, 'the job names the mixed copy');
    assert.deepEqual(JSON.parse(job.metadata!['weitiao.mix_general']), { ratio: 0.25, seed: 3, added: 2, training_examples: 8, source_file: upload.id });
    const stored = ctx.db.prepare('SELECT extension FROM jobs WHERE id = ?').get(job.id) as { extension: string };
    assert.equal(JSON.parse(stored.extension).settings.mix_general, 0.25);
    const mixedText = readFileSync(fileContentPath(ctx, job.training_file), 'utf8');
    // What mixing the uploaded file by hand gives, and what the CLI's path (submitJob on the same request) stores.
    const byHand = await mixGeneralData(ctx, { trainingFile: fileContentPath(ctx, upload.id), ratio: 0.25, seed: 3, outputDir: path.join(dir, 'mix') });
    assert.equal(mixedText, readFileSync(byHand.file, 'utf8'));
    const cli = (await submitJob(other, body)) as FineTuningJob;
    assert.equal(readFileSync(fileContentPath(other, cli.training_file), 'utf8'), mixedText);
    assert.equal(mixedText.trim().split('\n').length, 10);

    await assert.rejects(
      client.fineTuning.jobs.create({ ...body, weitiao: { mix_general: 1.5 } } as never),
      (e: unknown) => e instanceof OpenAI.BadRequestError && String((e.error as { param?: string }).param).startsWith('weitiao.mix_general'),
    );
  });
});

