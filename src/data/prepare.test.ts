// prepareDataset on the real waimai file (conversion, split, conflicts) and on crafted bad files
// (every source problem at its line, nothing written), plus label maps, label sets and atomic writes.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WeitiaoError } from '../errors.js';
import {
  detectLabelSet,
  mulberry32,
  parseLabelMap,
  prepareDataset,
  PrepareOptions,
  splitExamples,
  validateChatFile,
  writeFilesAtomic,
  type PrepareResult,
} from './index.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(repoRoot, '../shared/data/waimai_10k.csv');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-data-prepare-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const SYSTEM = '你是一位外卖评论好评差评评论专家。';
const LABELS: Record<string, string> = { '1': '好评', '0': '差评' };
const waimaiOptions = { input: WAIMAI, system: SYSTEM, user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评' };

/**
 * An independent reading of the waimai file, as the oracle: it has no field spanning lines, so each
 * physical line is `label,review` with the review optionally quoted ("" for a quote inside).
 */
function oracle(): { line: number; label: string; review: string }[] {
  const lines = readFileSync(WAIMAI, 'utf8').split('\n');
  assert.equal(lines[0], 'label,review');
  const rows = [];
  for (let i = 1; i < lines.length; i++) {
    const text = lines[i];
    if (text === '') continue;
    const comma = text.indexOf(',');
    let review = text.slice(comma + 1);
    if (review.startsWith('"')) {
      assert.ok(review.endsWith('"') && review.length >= 2, `line ${i + 1} is one quoted field`);
      review = review.slice(1, -1).replaceAll('""', '"');
    }
    rows.push({ line: i + 1, label: text.slice(0, comma), review });
  }
  return rows;
}

function readJsonl(file: string): { messages: { role: string; content: string }[] }[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));
}

describe('the real waimai file', () => {
  const expected = oracle();
  let result: PrepareResult;
  const out = path.join(tmp, 'waimai-100');

  before(async () => {
    result = await prepareDataset({ ...waimaiOptions, output_dir: out, validation: 0.3, seed: 100 });
  });

  test('converts every row: 11,987 examples, 好评 4,000 / 差评 7,987, each review byte-exact', () => {
    assert.equal(expected.length, 11987);
    assert.deepEqual(result.errors, []);
    assert.equal(result.written, true);
    assert.equal(result.format, 'csv');
    assert.equal(result.encoding, 'utf8');
    assert.equal(result.rows, expected.length);
    assert.equal(result.examples, expected.length);
    assert.deepEqual(result.label_set, ['好评', '差评']);
    assert.equal(result.stratified, true);

    const examples = [...readJsonl(result.train!.file), ...readJsonl(result.validation!.file)];
    assert.equal(examples.length, expected.length);
    for (const e of examples) {
      assert.equal(Object.keys(e).join(), 'messages');
      assert.deepEqual(
        e.messages.map((m) => Object.keys(m).join()),
        ['role,content', 'role,content', 'role,content'],
      );
      assert.deepEqual(
        e.messages.map((m) => m.role),
        ['system', 'user', 'assistant'],
      );
      assert.equal(e.messages[0].content, SYSTEM);
    }
    // Same multiset of (review, answer) as the oracle: nothing lost, added or altered.
    const got = examples.map((e) => `${e.messages[2].content}\u0000${e.messages[1].content}`).sort();
    const want = expected.map((r) => `${LABELS[r.label]}\u0000${r.review}`).sort();
    assert.deepEqual(got, want);

    const count = (answer: string) => examples.filter((e) => e.messages[2].content === answer).length;
    assert.equal(count('好评'), expected.filter((r) => r.label === '1').length);
    assert.equal(count('差评'), expected.filter((r) => r.label === '0').length);
    assert.deepEqual([count('好评'), count('差评')], [4000, 7987]);
    assert.deepEqual(
      { ...result.train!.label_counts },
      { 好评: count('好评') - result.validation!.label_counts!['好评'], 差评: count('差评') - result.validation!.label_counts!['差评'] },
    );
  });

  test('the tricky reviews (commas, quotes, full-width punctuation, emoji) survive byte-exact, unescaped, no BOM', () => {
    const tricky = [
      expected.find((r) => r.review.includes('""') || r.review.includes('O__O"')), // doubled quote in the CSV
      expected.find((r) => r.review.includes('＂') && r.review.includes('"')), // full-width and ASCII quotes
      expected.find((r) => r.review.includes('❤️')), // emoji with a variation selector
      expected.find((r) => r.review.includes('༵')), // combining marks
      expected.find((r) => r.review.includes(',') && r.review.includes('，')), // both commas
    ];
    const raw = readFileSync(result.train!.file).toString('utf8') + readFileSync(result.validation!.file).toString('utf8');
    assert.notEqual(readFileSync(result.train!.file)[0], 0xef, 'no BOM');
    assert.ok(!raw.includes('\\u'), 'nothing \\u-escaped');
    for (const row of tricky) {
      assert.ok(row, 'the oracle found the tricky row');
      const line = JSON.stringify({ role: 'user', content: row.review });
      assert.ok(raw.includes(line), `line ${row.line} is in the output as is: ${row.review}`);
    }
  });

  test('the split is reproducible: same seed, identical files; another seed, another split', async () => {
    const again = await prepareDataset({ ...waimaiOptions, output_dir: path.join(tmp, 'waimai-100b'), validation: 0.3, seed: 100 });
    assert.deepEqual(readFileSync(again.train!.file), readFileSync(result.train!.file));
    assert.deepEqual(readFileSync(again.validation!.file), readFileSync(result.validation!.file));
    const other = await prepareDataset({ ...waimaiOptions, output_dir: path.join(tmp, 'waimai-101'), validation: 0.3, seed: 101 });
    assert.notDeepEqual(readFileSync(other.validation!.file), readFileSync(result.validation!.file));
    assert.equal(other.validation!.examples, result.validation!.examples);
  });

  test('the split is stratified (each answer within ±1 example of its share) and mixed, not sorted by label', () => {
    const validation = readJsonl(result.validation!.file).map((e) => e.messages[2].content);
    const train = readJsonl(result.train!.file).map((e) => e.messages[2].content);
    for (const answer of ['好评', '差评']) {
      const total = validation.filter((a) => a === answer).length + train.filter((a) => a === answer).length;
      const inValidation = validation.filter((a) => a === answer).length;
      assert.ok(Math.abs(inValidation - total * 0.3) <= 1, `${answer}: ${inValidation} of ${total}`);
      assert.equal(result.validation!.label_counts![answer], inValidation);
    }
    // The source lists all 好评 first; the first 100 lines of each part must hold both answers.
    assert.equal(new Set(validation.slice(0, 100)).size, 2);
    assert.equal(new Set(train.slice(0, 100)).size, 2);
  });

  test('the 7 conflicting duplicates are warnings at their source lines, naming the earlier line; no exact duplicates', () => {
    const firstByReview = new Map<string, { line: number; label: string }>();
    const wantConflicts: string[] = [];
    let wantExact = 0;
    for (const r of expected) {
      const first = firstByReview.get(r.review);
      if (!first) firstByReview.set(r.review, r);
      else if (first.label !== r.label) wantConflicts.push(`${r.line}<${first.line}`);
      else wantExact++;
    }
    const conflicts = result.warnings.filter((w) => w.code === 'conflicting_duplicate');
    assert.deepEqual(
      conflicts.map((w) => `${w.line}<${/line (\d+)/.exec(w.message)![1]}`),
      wantConflicts,
    );
    assert.equal(conflicts.length, 7);
    assert.ok(conflicts.every((w) => w.file === WAIMAI && w.field === 'messages' && w.severity === 'warning'));
    assert.match(conflicts[0].message, /different answer .* \/ 与第 \d+ 行提示相同但答案不同/);
    assert.equal(result.warnings.filter((w) => w.code === 'exact_duplicate').length, wantExact);
    assert.equal(wantExact, 0);
  });

  test('conflicts as errors: reported the same way, and nothing is written', async () => {
    const dir = path.join(tmp, 'waimai-strict');
    const strict = await prepareDataset({ ...waimaiOptions, output_dir: dir, validation: 0.3, conflicts: 'error' });
    assert.equal(strict.errors.length, 7);
    assert.ok(strict.errors.every((e) => e.code === 'conflicting_duplicate' && e.severity === 'error'));
    assert.equal(strict.written, false);
    assert.equal(strict.train, null);
    assert.equal(existsSync(dir), false);
  });

  test('validating the whole converted file finds the same 7 conflicts at their lines in that file', async () => {
    const all = await prepareDataset({ ...waimaiOptions, output_dir: path.join(tmp, 'waimai-all') });
    assert.equal(all.validation, null);
    const report = await validateChatFile(all.train!.file);
    assert.deepEqual(report.errors, []);
    assert.equal(report.examples, 11987);
    assert.deepEqual(report.label_set, ['好评', '差评']);
    const conflicts = report.warnings.filter((w) => w.code === 'conflicting_duplicate');
    assert.equal(conflicts.length, 7);
    const lines = readJsonl(all.train!.file);
    for (const w of conflicts) {
      const earlier = Number(/line (\d+)/.exec(w.message)![1]);
      const [a, b] = [lines[w.line! - 1], lines[earlier - 1]];
      assert.equal(a.messages[1].content, b.messages[1].content);
      assert.notEqual(a.messages[2].content, b.messages[2].content);
    }
  });
});

describe('crafted source files', () => {
  test('every source problem is reported at its physical line and field; nothing is written', async () => {
    const file = path.join(tmp, 'bad.csv');
    writeFileSync(
      file,
      [
        'label,review', // 1
        '1,"一条评论，跨越', // 2
        '三行', // 3
        '的好评"', // 4
        '2,标签不在映射里', // 5: unknown label
        '0,', // 6: empty review
        '1', // 7: missing column
        '0,"   "', // 8: whitespace-only review
        '1,"坏引号"x', // 9: text after closing quote
        '0,正常的差评', // 10
      ].join('\n') + '\n',
    );
    const dir = path.join(tmp, 'bad-out');
    const result = await prepareDataset({ input: file, output_dir: dir, user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评' });
    assert.deepEqual(
      result.errors.map((e) => [e.line, e.field, e.code]),
      [
        [5, 'label', 'unknown_label'],
        [6, 'review', 'empty_value'],
        [7, null, 'field_count'],
        [8, 'review', 'empty_value'],
        [9, null, 'csv_syntax'],
      ],
    );
    assert.ok(result.errors.every((e) => e.file === file && e.severity === 'error'));
    assert.match(result.errors[0].message, /value '2' is not in the label map \('0', '1'\) \/ 值 '2' 不在标签映射中/);
    assert.match(result.errors[2].message, /row has 1 field\(s\) but the header has 2/);
    assert.equal(result.rows, 7); // records, not lines: lines 2-4 are one
    assert.equal(result.examples, 2);
    assert.equal(result.written, false);
    assert.equal(existsSync(dir), false);
  });

  test('an unknown placeholder column is an invalid_request naming it and the available columns', async () => {
    const file = path.join(tmp, 'ok.csv');
    writeFileSync(file, 'label,review\n1,好吃\n');
    await assert.rejects(
      prepareDataset({ input: file, output_dir: path.join(tmp, 'x'), user: '{reviw}', assistant: '{label}' }),
      (err: unknown) => {
        assert.ok(err instanceof WeitiaoError);
        assert.equal(err.code, 'invalid_request');
        assert.equal(err.param, 'user');
        assert.match(err.message, /column 'reviw'.*available columns: 'label', 'review' \/ .*'reviw' 不存在/);
        return true;
      },
    );
    await assert.rejects(prepareDataset({ input: file, output_dir: path.join(tmp, 'x'), user: '{review}' }), /assistant template is required/);
    await assert.rejects(prepareDataset({ input: path.join(tmp, 'missing.csv'), output_dir: tmp, user: '{a}', assistant: '{b}' }), (err: unknown) => {
      assert.ok(err instanceof WeitiaoError && err.code === 'not_found');
      return true;
    });
  });

  test('an empty value inside a template with other text is a warning, and the example is written', async () => {
    const file = path.join(tmp, 'title.csv');
    writeFileSync(file, 'title,body,label\n,正文一,1\n标题,正文二,0\n');
    const result = await prepareDataset({
      input: file,
      output_dir: path.join(tmp, 'title-out'),
      user: '标题：{title}\n正文：{body}',
      assistant: '{label}',
      label_map: '1＝好评，0＝差评',
    });
    assert.deepEqual(result.errors, []);
    assert.deepEqual(
      result.warnings.map((w) => [w.line, w.field, w.code]),
      [[2, 'title', 'empty_value']],
    );
    assert.deepEqual(readJsonl(result.train!.file)[0].messages, [
      { role: 'user', content: '标题：\n正文：正文一' },
      { role: 'assistant', content: '好评' },
    ]);
  });

  test('JSONL of plain records: numbers fill templates; missing or nested fields are reported per line', async () => {
    const file = path.join(tmp, 'records.jsonl');
    writeFileSync(
      file,
      [
        JSON.stringify({ text: '好吃', label: 1 }),
        JSON.stringify({ text: '难吃', label: 0 }),
        JSON.stringify({ label: 1 }),
        JSON.stringify({ text: { nested: true }, label: 0 }),
        '',
        '[1]',
      ].join('\n'),
    );
    const result = await prepareDataset({ input: file, output_dir: path.join(tmp, 'rec'), user: '{text}', assistant: '{label}', label_map: { 1: '好评', 0: '差评' } });
    assert.equal(result.mode, 'columns');
    assert.deepEqual(
      result.errors.map((e) => [e.line, e.field, e.code]),
      [
        [3, 'text', 'missing_field'],
        [4, 'text', 'invalid_value'],
        [6, null, 'data_type'],
      ],
    );
    assert.equal(result.examples, 2);
  });

  test('chat-format JSONL is checked, split and written as it was (keeping e.g. name)', async () => {
    const file = path.join(tmp, 'chat.jsonl');
    const lines = Array.from({ length: 10 }, (_, i) =>
      JSON.stringify({ messages: [{ role: 'user', content: `问题${i}`, name: 'u' }, { role: 'assistant', content: i % 2 ? '是' : '否' }] }),
    );
    writeFileSync(file, lines.join('\r\n') + '\r\n');
    const result = await prepareDataset({ input: file, output_dir: path.join(tmp, 'chat-out'), validation: 0.2, seed: 7 });
    assert.equal(result.mode, 'chat');
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.label_set, ['否', '是']);
    assert.deepEqual(result.validation!.label_counts, { 否: 1, 是: 1 });
    const written = [...readFileSync(result.train!.file, 'utf8').split('\n'), ...readFileSync(result.validation!.file, 'utf8').split('\n')]
      .filter(Boolean)
      .sort();
    assert.deepEqual(written, [...lines].sort());
    await assert.rejects(prepareDataset({ input: file, output_dir: tmp, user: '{x}', assistant: '{y}' }), /already in chat format/);
  });
});

describe('label maps, label sets and the split', () => {
  test('parseLabelMap accepts half- and full-width separators and rejects malformed entries', () => {
    assert.deepEqual(parseLabelMap('1=好评,0=差评'), { 1: '好评', 0: '差评' });
    assert.deepEqual(parseLabelMap(' 1 ＝ 好评 ，0=差评, '), { 1: '好评', 0: '差评' });
    for (const bad of ['1好评', '1=好评,1=差评', '=好评', '1=', '', ' , ']) {
      assert.throws(() => parseLabelMap(bad), (err: unknown) => err instanceof WeitiaoError && err.param === 'label_map', bad);
    }
  });

  test('detectLabelSet: a few short repeated answers form a set; free text, too many or too long do not', () => {
    const repeat = (xs: string[], n: number) => Array.from({ length: n }, (_, i) => xs[i % xs.length]);
    assert.deepEqual(detectLabelSet(repeat(['差评', '好评'], 100)), ['好评', '差评']);
    assert.deepEqual(detectLabelSet(['是', '否']), ['否', '是']);
    assert.equal(detectLabelSet(repeat(['好评'], 100)), null); // one answer is not a classification
    assert.equal(detectLabelSet(Array.from({ length: 100 }, (_, i) => `回答${i}`)), null); // free text
    assert.equal(detectLabelSet(repeat(['a', 'b', 'c'], 40)), null); // 3 distinct > 5 % of 40
    assert.deepEqual(detectLabelSet(repeat(['a', 'b', 'c'], 60)), ['a', 'b', 'c']);
    assert.equal(detectLabelSet(repeat(Array.from({ length: 21 }, (_, i) => `L${i}`), 10000)), null);
    assert.equal(detectLabelSet(repeat(['这是一个超过二十个字符的很长很长很长的回答', '短'], 100)), null);
  });

  test('splitExamples: seeded, stratified within ±1 per class, both parts non-empty, fraction 0 keeps all', () => {
    const answers = [...Array(50).fill('a'), ...Array(7).fill('b'), 'c'];
    const a = splitExamples(answers, { validation: 0.3, seed: 5, stratify: true });
    assert.deepEqual(splitExamples(answers, { validation: 0.3, seed: 5, stratify: true }), a);
    assert.deepEqual([...a.train, ...a.validation].sort((x, y) => x - y), answers.map((_, i) => i));
    for (const label of ['a', 'b', 'c']) {
      const n = answers.filter((x) => x === label).length;
      const k = a.validation.filter((i) => answers[i] === label).length;
      assert.ok(Math.abs(k - n * 0.3) <= 1, `${label}: ${k} of ${n}`);
    }
    assert.equal(a.validation.length, Math.round(answers.length * 0.3));
    // Forced stratification over free text (every answer distinct) still gives the requested size.
    const distinct = Array.from({ length: 100 }, (_, i) => `answer ${i}`);
    const free = splitExamples(distinct, { validation: 0.3, seed: 3, stratify: true });
    assert.equal(free.validation.length, 30);
    assert.notDeepEqual(free.validation.slice().sort((x, y) => x - y), Array.from({ length: 30 }, (_, i) => i)); // not the first 30
    const tiny = splitExamples(['x', 'y'], { validation: 0.1, seed: 1, stratify: true });
    assert.equal(tiny.validation.length, 1);
    assert.equal(tiny.train.length, 1);
    assert.equal(splitExamples(answers, { validation: 0, seed: 1, stratify: true }).validation.length, 0);
    const plain = splitExamples(answers, { validation: 0.25, seed: 1, stratify: false });
    assert.equal(plain.validation.length, Math.round(answers.length * 0.25));
  });

  test('mulberry32 matches an independent implementation (Python, 32-bit arithmetic), so splits agree across machines', () => {
    // Reference values computed with a separate Python port of mulberry32.
    const g = mulberry32(42);
    assert.deepEqual([g(), g(), g()], [0.6011037519201636, 0.44829055899754167, 0.8524657934904099]);
    const h = mulberry32(100);
    assert.deepEqual([h(), h(), h()], [0.2043598669115454, 0.31482121953740716, 0.531918739201501]);
  });

  test('PrepareOptions is the schema shells validate with: defaults filled, bad values rejected', async () => {
    const parsed = PrepareOptions.parse({ input: 'a.csv', output_dir: 'out' });
    assert.equal(parsed.validation, 0);
    assert.equal(parsed.encoding, 'auto');
    assert.equal(parsed.stratify, 'auto');
    assert.equal(PrepareOptions.safeParse({ input: 'a.csv', output_dir: 'out', validation: 1 }).success, false);
    await assert.rejects(prepareDataset({ input: 'a.csv', output_dir: 'out', validation: 1.5 }), (err: unknown) => {
      assert.ok(err instanceof WeitiaoError && err.code === 'invalid_request' && err.param === 'validation');
      return true;
    });
  });
});

describe('atomic writes', () => {
  const csv = path.join(tmp, 'atomic.csv');
  const options = () => ({ input: csv, user: '{review}', assistant: '{label}', validation: 0.5, seed: 1 });
  before(() => writeFileSync(csv, 'label,review\n1,好\n0,差\n1,很好\n0,很差\n'));

  test('when the second file cannot be written, the first is not left behind (and an old one is untouched)', async () => {
    const dir = path.join(tmp, 'atomic-1');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'train.jsonl'), 'old\n');
    await assert.rejects(
      prepareDataset({ ...options(), output_dir: dir, validation_file: 'no-such-dir/validation.jsonl' }),
      (err: unknown) => err instanceof WeitiaoError && /cannot write the prepared files/.test(err.message),
    );
    assert.deepEqual(readdirSync(dir), ['train.jsonl']); // no temporaries
    assert.equal(readFileSync(path.join(dir, 'train.jsonl'), 'utf8'), 'old\n');
  });

  test('when the second rename fails, the first renamed file is removed and no temporaries remain', async () => {
    const dir = path.join(tmp, 'atomic-2');
    mkdirSync(path.join(dir, 'validation.jsonl'), { recursive: true }); // a directory where the file should go
    await assert.rejects(prepareDataset({ ...options(), output_dir: dir }));
    assert.deepEqual(readdirSync(dir), ['validation.jsonl']);
  });

  test('writeFilesAtomic writes every chunk and replaces the old content', async () => {
    const dir = path.join(tmp, 'atomic-3');
    mkdirSync(dir);
    const file = path.join(dir, 'a.txt');
    writeFileSync(file, 'old');
    const chunks = Array.from({ length: 20000 }, (_, i) => `第${i}行\n`);
    await writeFilesAtomic([{ path: file, chunks }]);
    assert.equal(readFileSync(file, 'utf8'), chunks.join(''));
    assert.deepEqual(readdirSync(dir), ['a.txt']);
  });
});
