// Near duplicates (issue 18): hand-made Chinese near-duplicate reviews found by the shared index (the one the
// teacher's synthesis filter uses), reported by prepare beside exact duplicates, left out with `dedupe`
// (naming the line kept), validation examples that leak from the training split, and the same warnings from
// validateChatFile (the console's check), whose index is bounded.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { prepareDataset, validateChatFile } from './index.js';
import { waimaiRows } from '../testing/waimai.js';
import { NearDuplicateCheck, NearDuplicateIndex, similarity } from './near-duplicates.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-neardup-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('near-duplicate index', () => {
  test('one inserted character or changed punctuation is near; a different review is not', () => {
    assert.ok(similarity('这家店的外卖很好吃，送餐也快', '这家店的外卖很好吃，送餐也很快') >= 0.7);
    assert.ok(similarity('这家店的外卖很好吃，送餐也快', '这家店的外卖很好吃,送餐也快!') >= 0.7); // full-width vs half-width
    assert.ok(similarity('味道不错，分量足', '味道一般，分量少') < 0.3);
    const index = new NearDuplicateIndex(0.7);
    const reviews = ['菜都凉了，等了两个小时才送到', '这家店的外卖很好吃，送餐也快', '米饭太硬了，汤也洒了一半'];
    reviews.forEach((r) => index.add(r));
    assert.equal(index.find('这家店的外卖很好吃，送餐也很快')?.index, 1);
    assert.equal(index.find('米饭太硬了，汤也洒了一半。')?.index, 2);
    assert.equal(index.find('送餐小哥很有礼貌，五星好评'), null);
  });

  test('banding misses no near duplicate among many similar texts', () => {
    const index = new NearDuplicateIndex(0.7);
    for (let i = 0; i < 300; i++) index.add(`订单${i}：这家店的外卖很好吃，送餐也快，包装严实，下次还点`);
    let found = 0;
    for (let i = 0; i < 300; i++) if (index.find(`订单${i}：这家店的外卖很好吃，送餐也很快，包装严实，下次还点`)) found++;
    assert.equal(found, 300);
  });

  test('behind a template every prompt shares, an edited review is still matched to its original among 6000', () => {
    // The template's shingles put most prompts in the same few (long) buckets: the review's own must still lead to it.
    const template = '请判断下面这条外卖评论是好评还是差评，只回答好评或差评。评论：';
    const reviews = waimaiRows().map((r) => r.review);
    const index = new NearDuplicateIndex(0.7);
    for (const r of reviews.slice(0, 6000)) index.add(template + r); // index i is reviews[i]
    // The first hundred distinct reviews of 20+ characters, the last character changed and a full stop added.
    const originals = [...new Set(reviews.slice(0, 6000).filter((r) => r.length >= 20))].slice(0, 100);
    for (const review of originals) {
      const edited = template + review.slice(0, -1) + '好。';
      const match = index.find(edited);
      assert.ok(match, `no match for the edited ${review}`);
      assert.ok(similarity(edited, template + reviews[match.index]) >= similarity(edited, template + review), `${review}: matched ${reviews[match.index]}`);
    }
  });
});

// Line numbers below are the CSV's physical lines (header = line 1).
const ROWS = [
  ['1', '这家店的外卖很好吃，送餐也快'], // 2
  ['0', '菜都凉了，等了两个小时才送到'], // 3
  ['1', '这家店的外卖很好吃，送餐也很快'], // 4: near line 2
  ['0', '米饭太硬了，汤也洒了一半'], // 5
  ['0', '菜都凉了，等了两个小时才送到'], // 6: exact duplicate of line 3
  ['1', '送餐小哥很有礼貌，五星好评'], // 7
  ['0', '米饭太硬了，汤也洒了一半。'], // 8: near line 5
  ['1', '分量很足，价格实惠，推荐'], // 9
];
const csv = path.join(tmp, 'waimai.csv');
writeFileSync(csv, 'label,review\n' + ROWS.map((r) => r.join(',')).join('\n') + '\n');
const base = { input: csv, user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评', seed: 7 };
const readOut = (file: string) =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).messages[0].content as string);

describe('prepare', () => {
  test('near duplicates are warnings beside the exact duplicate', async () => {
    const r = await prepareDataset({ ...base, output_dir: path.join(tmp, 'report') });
    assert.equal(r.written, true);
    assert.deepEqual(
      r.warnings.filter((w) => /duplicate/.test(w.code)).map((w) => [w.line, w.code, w.message.match(/line (\d+)/)?.[1]]),
      [
        [4, 'near_duplicate', '2'],
        [6, 'exact_duplicate', '3'],
        [8, 'near_duplicate', '5'],
      ],
    );
    assert.equal(r.examples, 8);
  });

  test('dedupe leaves them out, naming the line kept; the output holds one of each', async () => {
    const r = await prepareDataset({ ...base, output_dir: path.join(tmp, 'dedupe'), dedupe: true });
    assert.equal(r.written, true);
    assert.deepEqual(
      r.skipped.map((s) => [s.line, s.code, s.message.match(/like line (\d+)/)?.[1]]),
      [
        [4, 'near_duplicate', '2'],
        [6, 'near_duplicate', '3'],
        [8, 'near_duplicate', '5'],
      ],
    );
    assert.equal(r.skipped_rows, 3);
    assert.equal(r.examples, 5);
    assert.deepEqual(readOut(r.train!.file).sort(), [2, 3, 5, 7, 9].map((line) => ROWS[line - 2][1]).sort());
    assert.equal(r.warnings.filter((w) => /duplicate|leak/.test(w.code)).length, 0);
  });

  test("a user template's shared instruction is not compared: the same warnings, dedupe keeps the same rows", async () => {
    const user =
      '你是一位外卖平台的评论分析助手。请判断下面这条外卖评论是好评还是差评，只回答“好评”或“差评”，不要解释原因。' +
      '例如：“很好吃，下次还点”是好评；“送得太慢，菜都凉了”是差评。评论：{review}';
    const instruction = user.replace('{review}', '');
    // Whole prompts, any two rows would be near duplicates through the instruction alone (3 and 9: 78%).
    assert.ok(similarity(instruction + ROWS[1][1], instruction + ROWS[7][1]) >= 0.7);
    const r = await prepareDataset({ ...base, user, output_dir: path.join(tmp, 'template') });
    assert.deepEqual(
      r.warnings.filter((w) => /duplicate/.test(w.code)).map((w) => [w.line, w.code, w.message.match(/line (\d+)/)?.[1]]),
      [
        [4, 'near_duplicate', '2'],
        [6, 'exact_duplicate', '3'],
        [8, 'near_duplicate', '5'],
      ],
    );
    const deduped = await prepareDataset({ ...base, user, output_dir: path.join(tmp, 'template-dedupe'), dedupe: true });
    assert.deepEqual(deduped.skipped.map((s) => s.line), [4, 6, 8]);
  });

  test('a validation example near a training one is a leak, named at its line with the training line', async () => {
    // The rows without the exact duplicate, so each review's text names its line.
    const rows = ROWS.filter((_, i) => i !== 4);
    const file = path.join(tmp, 'leak.csv');
    writeFileSync(file, 'label,review\n' + rows.map((r) => r.join(',')).join('\n') + '\n');
    const r = await prepareDataset({ ...base, input: file, output_dir: path.join(tmp, 'leak'), validation: 0.5, stratify: false });
    const lineOf = (text: string) => rows.findIndex((row) => row[1] === text) + 2;
    const train = new Set(readOut(r.train!.file).map(lineOf));
    const partner: Record<number, number> = { 2: 4, 4: 2, 5: 7, 7: 5 };
    // The expected leaks from what the split wrote: a validation review whose near twin went to training.
    const expected = readOut(r.validation!.file)
      .map(lineOf)
      .filter((line) => partner[line] && train.has(partner[line]))
      .sort((a, b) => a - b);
    assert.ok(expected.length > 0, 'seed 7 puts at least one pair on both sides');
    const leaks = r.warnings.filter((w) => w.code === 'validation_leak');
    assert.deepEqual(
      leaks.map((w) => w.line),
      expected,
    );
    for (const w of leaks) assert.equal(Number(w.message.match(/training line (\d+)/)?.[1]), partner[w.line!]);
  });
});

// The console's check of a chat JSONL (validateChatFile) reports what prepare reports, with a bounded index.
describe('validateChatFile', () => {
  const chat = path.join(tmp, 'reviews.jsonl');
  const label = { '1': '好评', '0': '差评' } as Record<string, string>;
  writeFileSync(chat, ROWS.map(([l, review]) => JSON.stringify({ messages: [{ role: 'system', content: '你是评论专家。' }, { role: 'user', content: review }, { role: 'assistant', content: label[l] }] })).join('\n') + '\n');

  test('near-duplicate prompts are warnings beside the exact duplicate, as in prepare', async () => {
    const r = await validateChatFile(chat);
    assert.equal(r.error_count, 0);
    // JSONL lines are the CSV's rows one up (no header).
    assert.deepEqual(
      r.warnings.filter((w) => /duplicate/.test(w.code)).map((w) => [w.line, w.code, w.message.match(/line (\d+)/)?.[1]]),
      [
        [3, 'near_duplicate', '1'],
        [5, 'exact_duplicate', '2'],
        [7, 'near_duplicate', '4'],
      ],
    );
  });

  test('a bounded check stops when its index is full and says from which line', () => {
    // Bounds of 3 prompts: lines 1-3 are indexed (3 is near 1), line 4 finds the index full.
    const check = new NearDuplicateCheck(chat, { bounds: { texts: 3, shingles: 1_000 } });
    const examples = readFileSync(chat, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const results = examples.map((e, i) => check.check(e, i + 1));
    assert.deepEqual(
      results.map((r) => (r && 'problem' in r ? r.problem.code : null)),
      [null, null, 'near_duplicate', 'near_duplicate_check_limited', null, null, null, null],
      'line 7 (near line 4) goes unchecked after the stop',
    );
    assert.equal(check.stoppedAt, 4);
    assert.match((results[3] as { problem: { message: string } }).problem.message, /stopped at line 4.*3 prompts/);
    // The shingle bound stops it too: line 1's 12 shingles fill a bound of 10.
    const byShingles = new NearDuplicateCheck(chat, { bounds: { texts: 1_000, shingles: 10 } });
    examples.forEach((e, i) => byShingles.check(e, i + 1));
    assert.equal(byShingles.stoppedAt, 2);
  });
});
