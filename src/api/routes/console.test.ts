/**
 * The console's extension routes in-process (`app.request` on the API app with the routes mounted):
 * preview, validate, prepare, stats, estimate and evaluations on real waimai rows, a GBK file and a
 * tiny model (the engine counts tokens and evaluates for real). Errors come out OpenAI-shaped and never
 * name a server path.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import iconv from 'iconv-lite';
import { openContext, type Context } from '../../context.js';
import { createFile, fileContentPath } from '../../files/index.js';
import { createKey } from '../../keys/index.js';
import { createTinyModel } from '../../models/index.js';
import { estimateJob } from '../../hyperparameters/estimate.js';
import { resolveHyperparameters } from '../../hyperparameters/index.js';
import { createApp } from '../index.js';

type Json = Record<string, any>;

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const WAIMAI = path.resolve(REPO, '..', 'shared', 'data', 'waimai_10k.csv');

describe('console extension routes /v1/weitiao', () => {
  let dir: string;
  let ctx: Context;
  let app: ReturnType<typeof createApp>;
  let key: string;
  let csvId: string;
  /** 30 positive then 30 negative reviews, like the sorted source file. */
  let rows: string[];

  const call = async (method: string, url: string, body?: unknown, auth: string | null = key) => {
    const headers: Record<string, string> = {};
    if (auth) headers.authorization = `Bearer ${auth}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await app.request(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, json: JSON.parse(text) as Json, text };
  };
  const post = (url: string, body: unknown) => call('POST', url, body);

  const upload = async (content: string | Buffer, filename: string): Promise<string> => {
    const form = new FormData();
    form.append('purpose', 'fine-tune');
    form.append('file', new Blob([content]), filename);
    const res = await app.request('/v1/files', { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
    assert.equal(res.status, 200, await res.clone().text());
    return ((await res.json()) as Json).id;
  };

  const mapping = { system: '你是一位外卖评论好评差评评论专家。', user: '{review}', assistant: '{label}' };

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-ext-'));
    ctx = openContext({ home: path.join(dir, 'home') });
    key = createKey(ctx, { name: 'test' }).key;
    app = createApp(ctx, { auth: true });
    const lines = readFileSync(WAIMAI, 'utf8').split(/\r?\n/).filter(Boolean);
    rows = [...lines.slice(1, 31), ...lines.slice(-30)];
    csvId = await upload([lines[0], ...rows].join('\n') + '\n', 'waimai-60.csv');
  });

  after(() => {
    ctx.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the routes sit behind the API key', async () => {
    const r = await call('POST', '/v1/weitiao/datasets/preview', { file_id: csvId }, null);
    assert.equal(r.status, 401);
    assert.equal(r.json.error.code, 'unauthorized');
  });

  test('preview: columns, a suggested mapping, and the first examples through the label map', async () => {
    const plain = await post('/v1/weitiao/datasets/preview', { file_id: csvId, limit: 3 });
    assert.equal(plain.status, 200, plain.text);
    assert.deepEqual(plain.json.columns, ['label', 'review']);
    assert.equal(plain.json.format, 'csv');
    assert.equal(plain.json.total_rows, 60);
    assert.deepEqual(plain.json.suggested_mapping, { user: '{review}', assistant: '{label}' });
    assert.deepEqual(plain.json.answers, ['0', '1']);
    assert.deepEqual(plain.json.label_set, ['0', '1']);
    assert.equal(plain.json.examples.length, 3);
    const [label, review] = rows[0].split(/,(.*)/s);
    assert.deepEqual(plain.json.rows[0], { label, review });
    assert.deepEqual(plain.json.examples[0], {
      line: 2,
      messages: [
        { role: 'user', content: review },
        { role: 'assistant', content: label },
      ],
    });

    const mapped = await post('/v1/weitiao/datasets/preview', { file_id: csvId, limit: 2, mapping, label_map: '1=好评,0=差评', from_line: 33 });
    assert.equal(mapped.status, 200, mapped.text);
    assert.deepEqual(
      mapped.json.examples.map((e: Json) => [e.line, e.messages.map((m: Json) => m.role).join(','), e.messages[2].content]),
      [
        [33, 'system,user,assistant', '差评'],
        [34, 'system,user,assistant', '差评'],
      ],
    );
  });

  test('preview reports a row the label map misses, with its line and field', async () => {
    const r = await post('/v1/weitiao/datasets/preview', { file_id: csvId, limit: 1, mapping, label_map: '1=好评', from_line: 40 });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.examples, []);
    assert.equal(r.json.issues.length, 1);
    assert.deepEqual(
      (({ file, line, field, code, severity }) => ({ file, line, field, code, severity }))(r.json.issues[0]),
      { file: 'waimai-60.csv', line: 40, field: 'label', code: 'unknown_label', severity: 'error' },
    );
  });

  test('a template naming a missing column is a 400 that lists the columns and no server path', async () => {
    const r = await post('/v1/weitiao/datasets/preview', { file_id: csvId, mapping: { user: '{text}', assistant: '{label}' } });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.param, 'user');
    assert.match(r.json.error.message, /'text'.*'label', 'review'/);
    assert.match(r.json.error.message, /waimai-60\.csv/);
    assert.doesNotMatch(r.text, new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
    assert.doesNotMatch(r.text, /\/home\/|\/tmp\//);
  });

  test('bodies are validated: unknown keys and wrong types name the field', async () => {
    const unknown = await post('/v1/weitiao/datasets/preview', { file_id: csvId, mapin: {} });
    assert.equal(unknown.status, 400);
    assert.equal(unknown.json.error.code, 'invalid_request');
    const wrong = await post('/v1/weitiao/datasets/prepare', { file_id: csvId, mapping, validation: 2 });
    assert.equal(wrong.status, 400);
    assert.equal(wrong.json.error.param, 'validation');
    const missing = await post('/v1/weitiao/datasets/preview', { file_id: 'file-nope' });
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.param, 'file_id');
    const notJson = await app.request('/v1/weitiao/estimate', {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: '{',
    });
    assert.equal(notJson.status, 400);
  });

  test('validate: every bad row with its line; prepare stores nothing then', async () => {
    const v = await post('/v1/weitiao/datasets/validate', { file_id: csvId, mapping, label_map: '1=好评' });
    assert.equal(v.status, 200, v.text);
    assert.equal(v.json.examples, 60);
    assert.equal(v.json.valid_examples, 30);
    assert.deepEqual(
      v.json.report.errors.map((i: Json) => i.line),
      Array.from({ length: 30 }, (_, i) => 32 + i),
    );
    assert.ok(v.json.report.errors.every((i: Json) => i.field === 'label' && i.file === 'waimai-60.csv'));
    assert.equal(v.json.stats, null);

    const before = (await call('GET', '/v1/files')).json.data.length;
    const p = await post('/v1/weitiao/datasets/prepare', { file_id: csvId, mapping, label_map: '1=好评', validation: 0.2 });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.written, false);
    assert.equal(p.json.training_file, null);
    assert.equal(p.json.report.errors.length, 30);
    assert.equal((await call('GET', '/v1/files')).json.data.length, before);
  });

  test('prepare: stratified split stored as files; stats of the result; the same split again for the same seed', async () => {
    const body = { file_id: csvId, mapping, label_map: '1=好评,0=差评', validation: 0.2, seed: 7 };
    const p = await post('/v1/weitiao/datasets/prepare', body);
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.written, true);
    assert.equal(p.json.training_file.filename, 'waimai-60-train.jsonl');
    assert.equal(p.json.validation_file.filename, 'waimai-60-validation.jsonl');
    assert.equal(p.json.training_file.purpose, 'fine-tune');
    assert.deepEqual(p.json.train_label_counts, { 好评: 24, 差评: 24 });
    assert.deepEqual(p.json.validation_label_counts, { 好评: 6, 差评: 6 });
    assert.equal(p.json.stratified, true);
    assert.equal(p.json.stats.examples, 48);
    assert.equal(p.json.stats.token_unit, 'characters');
    assert.equal(p.json.stats.file_id, p.json.training_file.id);
    assert.equal('file' in p.json.stats, false);

    const train = readFileSync(fileContentPath(ctx, p.json.training_file.id), 'utf8').trim().split('\n');
    assert.equal(train.length, 48);
    assert.deepEqual(JSON.parse(train[0]).messages[0], { role: 'system', content: mapping.system });

    const again = await post('/v1/weitiao/datasets/prepare', { ...body, name: 'again' });
    assert.equal(readFileSync(fileContentPath(ctx, again.json.training_file.id), 'utf8'), train.join('\n') + '\n');

    const stats = await call('GET', `/v1/weitiao/datasets/${p.json.validation_file.id}/stats?epochs=3`);
    assert.equal(stats.status, 200, stats.text);
    assert.equal(stats.json.examples, 12);
    assert.equal(stats.json.estimated_trained_tokens, stats.json.total_tokens * 3);
    assert.deepEqual(stats.json.answer_distribution.map((a: Json) => [a.answer, a.count]), [
      ['好评', 6],
      ['差评', 6],
    ]);
  });

  test('a GBK CSV (as Chinese Excel saves it) previews like UTF-8', async () => {
    const text = ['label,review', ...rows.slice(0, 5), ...rows.slice(-5)].join('\r\n') + '\r\n';
    const gbkId = await upload(iconv.encode(text, 'gbk'), 'gbk.csv');
    const r = await post('/v1/weitiao/datasets/preview', { file_id: gbkId, limit: 1, mapping, label_map: '1=好评,0=差评' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.encoding, 'utf8'); // re-encoded once, at upload (src/data/internal/upload.ts)
    assert.equal(r.json.examples[0].messages[1].content, rows[0].split(/,(.*)/s)[1]);
  });

  test('a chat-format JSONL file: previewed as is, its bad lines reported, re-split by prepare', async () => {
    const ok = (q: string, a: string) => JSON.stringify({ messages: [{ role: 'user', content: q }, { role: 'assistant', content: a }] });
    const lines = [ok('很好吃', '好评'), JSON.stringify({ messages: [{ role: 'bot', content: '？' }] }), ok('太难吃了', '差评'), ok('送得很快', '好评'), ok('凉了', '差评')];
    // An API upload refuses a file with bad lines; stored as the CLI stores it, the console previews its issues.
    const chatId = (await createFile(ctx, { source: Readable.from([Buffer.from(lines.join('\n') + '\n')]), filename: 'chat.jsonl', purpose: 'fine-tune' })).id;
    const r = await post('/v1/weitiao/datasets/preview', { file_id: chatId, limit: 3 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.format, 'chat');
    assert.equal(r.json.suggested_mapping, null);
    assert.deepEqual(r.json.examples.map((e: Json) => [e.line, e.messages[1].content]), [
      [1, '好评'],
      [3, '差评'],
    ]);
    assert.ok(r.json.issues.some((i: Json) => i.line === 2 && i.code === 'unrecognized_role' && i.field === 'messages[0].role'), r.text);

    const v = await post('/v1/weitiao/datasets/validate', { file_id: chatId });
    assert.equal(v.json.report.errors[0].line, 2);
    assert.equal(v.json.valid_examples, 4);
    assert.equal(v.json.stats.examples, 4);

    const fixedId = await upload([lines[0], ...lines.slice(2)].join('\n') + '\n', 'fixed.jsonl');
    const p = await post('/v1/weitiao/datasets/prepare', { file_id: fixedId, validation: 0.5, seed: 3 });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.written, true);
    assert.deepEqual(p.json.validation_label_counts, { 好评: 1, 差评: 1 });
  });

  describe('with a tiny model', () => {
    let trainId: string;
    let validId: string;

    before(async () => {
      await createTinyModel(ctx, { name: 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024 });
      const p = await post('/v1/weitiao/datasets/prepare', { file_id: csvId, mapping, label_map: '1=好评,0=差评', validation: 0.2, seed: 1, model: 'tiny' });
      assert.equal(p.status, 200, p.text);
      trainId = p.json.training_file.id;
      validId = p.json.validation_file.id;
      assert.equal(p.json.stats.token_unit, 'tokens');
    });

    test('estimate: the auto rules resolved with an explanation each, trained tokens, time and memory', async () => {
      const r = await post('/v1/weitiao/estimate', {
        model: 'tiny',
        training_file: trainId,
        validation_file: validId,
        hyperparameters: { n_epochs: 'auto', batch_size: 4, learning_rate_multiplier: 'auto' },
      });
      assert.equal(r.status, 200, r.text);
      const resolved = resolveHyperparameters({ n_examples: 48, requested: { batch_size: 4 } });
      assert.equal(r.json.examples, 48);
      assert.equal(r.json.hyperparameters.n_epochs.value, resolved.n_epochs); // ⌈100 / 48⌉ = 3
      assert.equal(r.json.hyperparameters.n_epochs.auto, true);
      assert.match(r.json.hyperparameters.n_epochs.explanation, /auto: 3 passes over 48 examples/);
      assert.equal(r.json.hyperparameters.batch_size.value, 4);
      assert.equal(r.json.hyperparameters.batch_size.auto, false);
      assert.equal(r.json.hyperparameters.learning_rate.value, resolved.learning_rate);
      assert.ok(r.json.hyperparameters.lora_r.explanation_i18n.zh.includes('LoRA 秩 8'));
      assert.equal(r.json.total_steps, resolved.estimated_total_steps);
      const stats = await call('GET', `/v1/weitiao/datasets/${trainId}/stats?model=tiny`);
      assert.equal(stats.json.token_unit, 'tokens');
      assert.equal(r.json.trained_tokens, stats.json.total_tokens * resolved.n_epochs);
      // One estimate everywhere: the engine's (src/hyperparameters's estimateJob), as `weitiao estimate` and a dry run give it.
      assert.equal(r.json.throughput_source, 'estimate');
      const e = r.json.estimate;
      assert.equal(e.object, 'weitiao.estimate');
      assert.equal(e.batch_size, 4);
      assert.equal(e.n_epochs, resolved.n_epochs);
      assert.equal(e.steps_per_epoch * e.n_epochs, r.json.total_steps);
      assert.equal(r.json.estimated_memory_bytes, e.peak_memory_bytes);
      assert.ok(r.json.estimated_seconds >= e.total_seconds);
      const direct = await estimateJob(ctx, { model: 'tiny', training_file: trainId, hyperparameters: { batch_size: 4, n_epochs: resolved.n_epochs } });
      assert.equal(direct.memory.base_weights_bytes, e.memory.base_weights_bytes);
      assert.equal(direct.trainable_parameters, e.trainable_parameters);
      assert.match(r.json.hyperparameters.lora_r.explanation, new RegExp(`≈ ${Math.round(e.trainable_parameters / 1e3)} k trainable`));
      // Only the epochs changed: the engine's answer is reused, the totals follow the epochs.
      const twice = await post('/v1/weitiao/estimate', { model: 'tiny', training_file: trainId, hyperparameters: { n_epochs: 6, batch_size: 4 } });
      assert.equal(twice.status, 200, twice.text);
      assert.equal(twice.json.estimate.time_per_epoch_seconds, e.time_per_epoch_seconds);
      assert.equal(twice.json.estimate.total_seconds, e.time_per_epoch_seconds * 6);
      const qlora = await post('/v1/weitiao/estimate', { model: 'tiny', training_file: trainId, method: 'qlora', hyperparameters: { batch_size: 4 } });
      assert.equal(qlora.status, 200, qlora.text);
      assert.equal(qlora.json.method, 'qlora');
      assert.ok(qlora.json.estimate.memory.base_weights_bytes < e.memory.base_weights_bytes);

      const bad = await post('/v1/weitiao/estimate', { model: 'nope', training_file: trainId });
      assert.equal(bad.status, 404);
      assert.equal(bad.json.error.param, 'model');
      const path = await post('/v1/weitiao/estimate', { model: dir, training_file: trainId });
      assert.equal(path.status, 404, 'a server path is not a model over HTTP');
    });

    test('evaluations: two models on one file, confusion matrices, misclassified examples with their lines', async () => {
      // The same model twice: a real comparison's plumbing with a known answer (it agrees with itself).
      const both = await post('/v1/weitiao/evaluations', { model: 'tiny', file_id: validId, compare_with: 'tiny' });
      assert.equal(both.status, 200, both.text);
      assert.equal(both.json.reports.length, 2);
      assert.deepEqual(both.json.comparison.n, 12);
      assert.equal(both.json.comparison.agreement, 1);
      assert.equal(both.json.comparison.only_first_correct + both.json.comparison.only_second_correct, 0);
      assert.deepEqual(both.json.reports[0].label_metrics, both.json.reports[1].label_metrics);
      const [report] = both.json.reports;
      assert.equal(report.n, 12);
      assert.equal(report.mode, 'labels');
      const m = report.label_metrics;
      assert.deepEqual(m.labels, ['好评', '差评'].sort());
      assert.equal(m.confusion_matrix.flat().reduce((s: number, v: number) => s + v, 0), 12);
      const correct = m.confusion_matrix.reduce((s: number, row: number[], i: number) => s + row[i], 0);
      assert.equal(report.misclassified_count, 12 - correct);
      assert.equal(report.misclassified.length, 12 - correct);
      const validLines = readFileSync(fileContentPath(ctx, validId), 'utf8').trim().split('\n');
      for (const x of report.misclassified) {
        const example = JSON.parse(validLines[x.line - 1]);
        assert.equal(x.prompt, example.messages[1].content);
        assert.equal(x.expected, example.messages[2].content);
        assert.notEqual(x.predicted, x.expected);
      }
      assert.equal('file' in report, false);

      const unknown = await post('/v1/weitiao/evaluations', { model: 'tiny', file_id: validId, compare_with: 'nope' });
      assert.equal(unknown.status, 404);
      assert.equal(unknown.json.error.param, 'compare_with');
    });
  });
});
