// Evaluation through the real engine on tiny models, with waimai reviews prepared by the data service.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { prepareDataset } from '../data/index.js';
import { createTinyModel } from '../models/index.js';
import { compareModels, evaluateModel, writeEvalReport } from './index.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(REPO, '../shared/data/waimai_10k.csv');
const N = 64;

let home: string;
let ctx: Context;
let validation: string;
let expected: string[];

before(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'weitiao-eval-'));
  ctx = openContext({ home });
  const prepared = await prepareDataset({
    input: WAIMAI,
    output_dir: path.join(home, 'data'),
    system: '你是一位外卖评论好评差评评论专家。',
    user: '{review}',
    assistant: '{label}',
    label_map: '1=好评,0=差评',
    validation: 0.3,
    seed: 100,
  });
  validation = prepared.validation!.file;
  expected = readFileSync(validation, 'utf8')
    .split('\n')
    .filter(Boolean)
    .slice(0, N)
    .map((line) => JSON.parse(line).messages.at(-1).content);
  // Two different random models (seeds 0 and 1), built side by side.
  await Promise.all(
    [0, 1].map((seed) =>
      createTinyModel(ctx, { name: seed ? 'tiny-seed1' : 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024, seed }),
    ),
  );
});
after(() => {
  ctx.close();
  rmSync(home, { recursive: true, force: true });
});

describe('evaluateModel', () => {
  test('scores the auto-detected labels on waimai examples; compareModels lists exactly where two models differ', async () => {
    const progress: number[] = [];
    const both = await compareModels(ctx, {
      models: ['tiny', 'tiny-seed1'],
      file: validation,
      maxExamples: N,
      batchSize: 16,
      onProgress: (p) => progress.push(p.current),
    });
    const [a, b] = both.reports;
    assert.deepEqual([a.model, a.base_model, a.mode, a.n], ['tiny', 'tiny', 'labels', N]);
    assert.deepEqual([b.model, b.n], ['tiny-seed1', N]);
    assert.deepEqual(both.labels, ['好评', '差评']);
    assert.deepEqual(a.labels, both.labels);
    assert.deepEqual(b.labels, both.labels);
    for (const report of [a, b]) {
      const m = report.label_metrics!;
      assert.deepEqual(m.labels, ['好评', '差评']);
      assert.equal(m.confusion_matrix.flat().reduce((x, y) => x + y, 0), N);
      assert.deepEqual(
        report.predictions.map((p) => p.expected),
        expected,
      );
      assert.ok(report.predictions.every((p) => m.labels.includes(p.predicted)));
      // Recompute from the predictions: accuracy, and each confusion cell.
      const correct = report.predictions.filter((p) => p.predicted === p.expected).length;
      assert.equal(m.accuracy, correct / N);
      m.labels.forEach((e, i) =>
        m.labels.forEach((p, j) =>
          assert.equal(m.confusion_matrix[i][j], report.predictions.filter((x) => x.expected === e && x.predicted === p).length),
        ),
      );
      assert.equal(m.per_class['好评'].support + m.per_class['差评'].support, N);
      assert.ok(report.valid_loss !== null && report.valid_loss > 0);
    }
    assert.equal(progress.at(-1), N);

    const differ = a.predictions.filter((p, i) => p.predicted !== b.predictions[i].predicted);
    assert.deepEqual(
      both.disagreements,
      differ.map((p) => ({ index: p.index, expected: p.expected, predictions: [p.predicted, b.predictions[p.index].predicted] })),
    );
    const s = both.summary;
    assert.equal(s.both_correct + s.only_first_correct + s.only_second_correct + s.both_wrong, N);
    assert.equal(s.both_correct + s.only_first_correct, a.predictions.filter((p) => p.predicted === p.expected).length);
    assert.equal(s.both_correct + s.only_second_correct, b.predictions.filter((p) => p.predicted === p.expected).length);
    assert.equal(s.agreement, (N - differ.length) / N);

    const out = path.join(home, 'reports', '对比.json');
    await writeEvalReport(out, both);
    const text = readFileSync(out, 'utf8');
    assert.deepEqual(JSON.parse(text), both);
    assert.match(text, /"好评"/, 'Chinese is written as is');
  });

  test('without labels it generates and compares text', async () => {
    const report = await evaluateModel(ctx, { model: 'tiny', file: validation, labels: null, maxExamples: 2, batchSize: 2 });
    assert.deepEqual([report.mode, report.labels, report.label_metrics, report.n], ['generation', null, null, 2]);
    assert.deepEqual(
      report.predictions.map((p) => p.expected),
      expected.slice(0, 2),
    );
  });

  test('bad input is reported before the engine runs', async () => {
    const bad = path.join(home, 'bad.jsonl');
    writeFileSync(
      bad,
      [
        JSON.stringify({ messages: [{ role: 'user', content: '好吃' }, { role: 'assistant', content: '好评' }] }),
        JSON.stringify({ messages: [{ role: 'bot', content: '难吃' }, { role: 'assistant', content: '差评' }] }),
      ].join('\n') + '\n',
    );
    await assert.rejects(evaluateModel(ctx, { model: 'tiny', file: bad }), (err: any) => {
      assert.equal(err.code, 'invalid_file');
      assert.equal(err.line, 2);
      assert.equal(err.param, 'messages[0].role');
      assert.match(err.message, /bad\.jsonl:2/);
      return true;
    });
    await assert.rejects(evaluateModel(ctx, { model: 'tiny', file: path.join(home, 'missing.jsonl') }), { code: 'not_found', param: 'file' });
    await assert.rejects(evaluateModel(ctx, { model: 'tiny', file: validation, labels: ['好评'] }), { code: 'invalid_request', param: 'labels' });
    await assert.rejects(evaluateModel(ctx, { model: 'nope', file: validation }), { code: 'not_found', param: 'model' });
  });
});
