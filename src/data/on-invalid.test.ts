// `on_invalid: 'skip'` (issue 18): a hotel-review-like CSV with one empty review prepares with the bad
// row left out and reported at its exact line; the default still refuses the file; whole-file problems
// are never skipped. The service and the real `weitiao data prepare` command in a subprocess.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { prepareDataset } from './index.js';

const MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'main.ts');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-on-invalid-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const REVIEWS = [
  '距离川沙公路较近,但是公交指示不对,如果是"蔡陆线"的话,会非常麻烦.',
  '商务大床房，房间很大，床有2M宽，整体感觉经济实惠不错!',
  '早餐太差，无论去多少人，那边也不加食品的。',
  '宾馆在小街道上，不大好找，但还好北京热心同胞很多~',
  'CBD中心,周围没什么店铺,说5星有点勉强.不知道为什么卫生间没有电吹风',
  '总的来说，这样的酒店配这样的价格还算可以。',
  '房间设施难以够得上五星级，服务还不错。',
  '不错，在同等档次酒店中应该是值得推荐的！',
];
const EMPTY_LINE = 5; // header is line 1: the 4th data row has an empty review

/** label,review rows (1 = positive, 0 = negative); one row's review is empty. */
function hotelCsv(): string {
  const file = path.join(tmp, `hotel-${Math.random().toString(36).slice(2)}.csv`);
  const lines = ['label,review'];
  REVIEWS.forEach((review, i) => {
    if (lines.length + 1 === EMPTY_LINE) lines.push('1,');
    lines.push(`${i % 3 === 0 ? 0 : 1},"${review.replaceAll('"', '""')}"`);
  });
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

const mapping = { user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评' };

describe('on_invalid', () => {
  test('default error: the empty review stops the file and nothing is written', async () => {
    const out = path.join(tmp, 'default');
    const r = await prepareDataset({ input: hotelCsv(), output_dir: out, ...mapping });
    assert.equal(r.written, false);
    assert.deepEqual(
      r.errors.map((e) => [e.line, e.field, e.code]),
      [[EMPTY_LINE, 'review', 'empty_value']],
    );
    assert.equal(r.skipped_rows, 0);
    assert.deepEqual(r.skipped, []);
  });

  test('skip: that row is left out, reported at its line, and every other row is written', async () => {
    const out = path.join(tmp, 'skip');
    const r = await prepareDataset({ input: hotelCsv(), output_dir: out, ...mapping, on_invalid: 'skip', validation: 0.25, seed: 7 });
    assert.equal(r.written, true);
    assert.deepEqual(r.errors, []);
    assert.equal(r.rows, REVIEWS.length + 1);
    assert.equal(r.skipped_rows, 1);
    assert.deepEqual(
      r.skipped.map((e) => [e.line, e.field, e.code]),
      [[EMPTY_LINE, 'review', 'empty_value']],
    );
    assert.equal(r.examples, REVIEWS.length);
    const written = [r.train!, r.validation!].flatMap((p) =>
      readFileSync(p.file, 'utf8').trim().split('\n').map((l) => JSON.parse(l).messages[0].content as string),
    );
    assert.deepEqual(written.sort(), [...REVIEWS].sort());
  });

  test('skip never hides a file problem: a missing template column or no row left', async () => {
    const file = path.join(tmp, 'all-bad.csv');
    writeFileSync(file, 'label,review\n1,\n0,\n');
    const r = await prepareDataset({ input: file, output_dir: path.join(tmp, 'all-bad'), ...mapping, on_invalid: 'skip' });
    assert.equal(r.written, false);
    assert.equal(r.skipped_rows, 2);
    assert.deepEqual(
      r.errors.map((e) => [e.line, e.code]),
      [[null, 'empty_file']],
    );
    const dup = path.join(tmp, 'dup-header.csv');
    writeFileSync(dup, 'label,review,review\n1,好,好\n');
    const h = await prepareDataset({ input: dup, output_dir: path.join(tmp, 'dup'), ...mapping, on_invalid: 'skip' });
    assert.equal(h.written, false);
    assert.deepEqual(
      h.errors.map((e) => [e.line, e.code]),
      [[1, 'duplicate_column']],
    );
  });

  test('weitiao data prepare --on-invalid skip prints the skipped line and the count', () => {
    const input = hotelCsv();
    const out = path.join(tmp, 'cli');
    const args = ['--import', 'tsx', MAIN, '--home', path.join(tmp, 'home'), 'data', 'prepare', input, '-o', out];
    const args2 = ['--user', '{review}', '--assistant', '{label}', '--label-map', '1=好评,0=差评'];
    const refused = spawnSync(process.execPath, [...args, ...args2], { encoding: 'utf8', timeout: 120_000 });
    assert.notEqual(refused.status, 0);
    const r = spawnSync(process.execPath, [...args, ...args2, '--on-invalid', 'skip'], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`skipped 已跳过: ${input.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:${EMPTY_LINE}: review: error: column 'review' is empty`));
    assert.match(r.stdout, /skipped 1 invalid row\(s\) \/ 跳过 1 行无效数据/);
    assert.match(r.stdout, new RegExp(`→ ${REVIEWS.length} examples`));
  });
});
