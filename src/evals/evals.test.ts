// The Evals API through the official openai SDK against a real server on 127.0.0.1: an eval with grader
// criteria, a run answered by a real tiny model (engine subprocess), a run grading given samples from an
// uploaded file, output items, and the errors the SDK turns into its own classes.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI, { toFile } from 'openai';
import { startServer, type RunningServer } from '../api/index.js';
import { openContext, type Context } from '../context.js';
import { createKey } from '../keys/index.js';
import { createTinyModel } from '../models/index.js';
import { recoverRuns } from './index.js';
import { renderTemplate } from './internal/runner.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', '..');
const WAIMAI = path.resolve(REPO, '../shared/data/waimai_10k.csv');

let dir: string;
let ctx: Context;
let server: RunningServer;
let client: OpenAI;

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-evals-'));
  ctx = openContext({ home: path.join(dir, 'home') });
  await createTinyModel(ctx, { name: 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024 });
  const key = createKey(ctx, { name: 'evals' }).key;
  server = await startServer(ctx, { host: '127.0.0.1', port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: key, maxRetries: 0 });
});
after(async () => {
  await server?.close();
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

  test('a run a dead process left in progress is failed when a server starts', async () => {
    const ev = await client.evals.create({ data_source_config: { type: 'custom', item_schema: {} }, testing_criteria: [criteria[0]] });
    const stuck = 'evalrun_stuck';
    ctx.db
      .prepare("INSERT INTO eval_runs (id, eval_id, name, model, data_source, status, created_at) VALUES (?, ?, 'r', 'tiny', '{}', 'in_progress', 0)")
      .run(stuck, ev.id);
    assert.equal(recoverRuns(ctx), 1);
    const run = await client.evals.runs.retrieve(stuck, { eval_id: ev.id });
    assert.equal(run.status, 'failed');
    assert.equal(run.error.code, 'interrupted');
    assert.equal(recoverRuns(ctx), 0);
  });

  test('templates fill nested item fields and refuse missing ones', () => {
    assert.equal(renderTemplate('问：{{ item.q.text }} / {{item.n}}', { q: { text: '好吃吗' }, n: 3 }), '问：好吃吗 / 3');
    assert.throws(() => renderTemplate('{{item.missing}}', {}), /item\.missing/);
  });
});
