// validateChatFile on a JSONL file with one planted problem per category (each reported with its exact
// line and field), token-length checks with an injected counter (the real engine: engine.test.ts), and
// datasetStats.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ChatExample } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { datasetStats, formatIssue, Issue, prepareDataset, reportError, validateChatFile, ValidationReport, type TokenCounter } from './index.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(repoRoot, '../shared/data/waimai_10k.csv');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-data-validate-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const ok = (user: string, answer: string) =>
  JSON.stringify({
    messages: [
      { role: 'system', content: '你是评论专家。' },
      { role: 'user', content: user },
      { role: 'assistant', content: answer },
    ],
  });
const LONG = '这家店的菜真的很好吃，'.repeat(8);

// line → the JSON text; each planted line carries exactly one problem, named in `planted` below.
const lines: string[] = [
  ok('好吃', '好评'), // 1
  'not json at all', // 2
  '[1, 2]', // 3
  JSON.stringify({ prompt: '好吃', completion: '好评' }), // 4
  JSON.stringify({ messages: [{ content: '没有角色' }, { role: 'assistant', content: '差评' }] }), // 5
  JSON.stringify({ messages: [{ role: 'user', content: '多了键', foo: 1 }, { role: 'assistant', content: '好评' }] }), // 6
  JSON.stringify({ messages: [{ role: 'bot', content: '机器人' }, { role: 'user', content: '好' }, { role: 'assistant', content: '好评' }] }), // 7
  JSON.stringify({ messages: [{ role: 'user', content: '  \n ' }, { role: 'assistant', content: '好评' }] }), // 8
  JSON.stringify({ messages: [{ role: 'user', content: '只有用户' }] }), // 9
  JSON.stringify({ messages: [{ role: 'user', content: '权重' }, { role: 'assistant', content: '好评', weight: 2 }] }), // 10
  '', // 11: blank, skipped
  ok('好吃', '好评'), // 12
  ok('好吃', '差评'), // 13
  JSON.stringify({ messages: [{ role: 'user' }, { role: 'assistant', content: '好评' }] }), // 14
  JSON.stringify({ messages: [{ role: 'user', content: 123 }, { role: 'assistant', content: '好评' }] }), // 15
  ok(LONG, '好评'), // 16
  '"just a string"', // 17
  JSON.stringify({ messages: [] }), // 18
  JSON.stringify({ messages: [{ role: 'user', content: '用户的权重', weight: 1 }, { role: 'assistant', content: '差评' }] }), // 19
];
const planted: [number, string | null, string, 'error' | 'warning'][] = [
  [2, null, 'data_type', 'error'],
  [3, null, 'data_type', 'error'],
  [4, 'messages', 'missing_messages_list', 'error'],
  [5, 'messages[0].role', 'message_missing_key', 'error'],
  [6, 'messages[0].foo', 'message_unrecognized_key', 'error'],
  [7, 'messages[0].role', 'unrecognized_role', 'error'],
  [8, 'messages[0].content', 'missing_content', 'error'],
  [9, 'messages', 'example_missing_assistant_message', 'error'],
  [10, 'messages[1].weight', 'invalid_weight', 'error'],
  [12, 'messages', 'exact_duplicate', 'warning'],
  [13, 'messages', 'conflicting_duplicate', 'warning'],
  [14, 'messages[0].content', 'message_missing_key', 'error'],
  [15, 'messages[0].content', 'missing_content', 'error'],
  [17, null, 'data_type', 'error'],
  [18, 'messages', 'missing_messages_list', 'error'],
  [19, 'messages[0].weight', 'invalid_weight', 'error'],
];
const file = path.join(tmp, 'planted.jsonl');
writeFileSync(file, lines.join('\n') + '\n');

const located = (issues: Issue[]) => issues.map((i) => [i.line, i.field, i.code, i.severity]);

/** A stand-in tokenizer for the logic: characters plus 3 per message, as a template would add. */
function fakeCounter(maxLength: number, calls: ChatExample[][]): TokenCounter {
  return async (examples) => {
    calls.push(examples);
    const tokens = (m: { content: string }) => [...m.content].length + 3;
    return {
      counts: examples.map((e) => e.messages.reduce((s, m) => s + tokens(m), 0)),
      trained_counts: examples.map((e) => e.messages.filter((m) => m.role === 'assistant').reduce((s, m) => s + tokens(m), 0)),
      model_max_length: maxLength,
    };
  };
}

describe('validateChatFile', () => {
  test('every planted problem is reported, with its exact line, field, code and severity, and nothing else', async () => {
    const report = await validateChatFile(file);
    assert.deepEqual(located([...report.errors, ...report.warnings].sort((a, b) => a.line! - b.line!)), planted);
    assert.equal(report.examples, 18); // non-blank lines
    assert.equal(report.valid_examples, 4); // lines 1, 12, 13, 16
    assert.equal(report.token_counts, undefined); // no model, no counts
    assert.deepEqual(report.label_set, ['好评', '差评']); // 2 distinct short answers: always allowed
    ValidationReport.parse(report); // the wire schema holds
    for (const issue of [...report.errors, ...report.warnings]) {
      assert.equal(issue.file, file);
      assert.match(issue.message, /^[a-z'].* \/ .*[\u4e00-\u9fff]/u, `English, then Chinese: ${issue.message}`);
    }
    const byLine = (n: number) => [...report.errors, ...report.warnings].find((i) => i.line === n)!;
    assert.match(byLine(7).message, /unrecognized role 'bot' .* \/ 无法识别的角色 'bot'/);
    assert.match(byLine(12).message, /same messages as line 1 /);
    assert.match(byLine(13).message, /same prompt as line 1 but a different answer \('差评' here, '好评' there\)/);
    assert.equal(formatIssue(byLine(7)), `${file}:7: messages[0].role: error: ${byLine(7).message} [unrecognized_role]`);
  });

  test('conflicts can be errors; the first error becomes an invalid_file WeitiaoError with file, line and field', async () => {
    const report = await validateChatFile(file, { conflicts: 'error' });
    assert.ok(report.errors.some((e) => e.line === 13 && e.code === 'conflicting_duplicate'));
    const err = reportError(report);
    assert.ok(err instanceof WeitiaoError);
    assert.equal(err.code, 'invalid_file');
    assert.equal(err.line, 2);
    assert.equal(err.file, file);
    assert.match(err.message, new RegExp(`and ${report.errors.length - 1} more error`));
    assert.equal(reportError({ errors: [] }), null);
  });

  test('too_many_tokens: counts from the tokenizer, only valid examples counted, over the max length is an error', async () => {
    const calls: ChatExample[][] = [];
    const report = await validateChatFile(file, {}, { countTokens: fakeCounter(60, calls) });
    assert.equal(calls.length, 1, 'one tokenizer call for the whole file');
    assert.deepEqual(
      calls[0].map((e) => e.messages[1].content),
      ['好吃', '好吃', '好吃', LONG],
    );
    const expected = calls[0].map((e) => e.messages.reduce((s, m) => s + [...m.content].length + 3, 0));
    assert.deepEqual(report.token_counts, expected);
    assert.equal(report.max_length, 60);
    const over = report.errors.filter((e) => e.code === 'too_many_tokens');
    assert.deepEqual(located(over), [[16, 'messages', 'too_many_tokens', 'error']]);
    assert.match(over[0].message, new RegExp(`example has ${expected[3]} tokens, more than the maximum length 60`));
    // An explicit max_length overrides the model's.
    const relaxed = await validateChatFile(file, { max_length: 1000 }, { countTokens: fakeCounter(60, []) });
    assert.equal(relaxed.errors.filter((e) => e.code === 'too_many_tokens').length, 0);
  });

  test('prepareDataset runs the same token check on what it produces, at the source line', async () => {
    const csv = path.join(tmp, 'long.csv');
    writeFileSync(csv, `label,review\n1,好吃\n0,"${LONG}"\n`);
    const options = { input: csv, output_dir: path.join(tmp, 'long-out'), user: '{review}', assistant: '{label}' };
    const result = await prepareDataset({ ...options, long_examples: 'error' }, { countTokens: fakeCounter(40, []) });
    assert.deepEqual(located(result.errors), [[3, 'messages', 'too_many_tokens', 'error']]);
    assert.equal(result.written, false);
    // The default, truncate: written, with a warning naming the line (training keeps the answer whole).
    const truncated = await prepareDataset(options, { countTokens: fakeCounter(40, []) });
    assert.equal(truncated.written, true);
    assert.equal(truncated.examples, 2);
    assert.deepEqual(located(truncated.warnings.filter((w) => w.code === 'too_many_tokens')), [[3, 'messages', 'too_many_tokens', 'warning']]);
    // skip: left out and listed, whatever on_invalid says.
    const skipped = await prepareDataset({ ...options, long_examples: 'skip' }, { countTokens: fakeCounter(40, []) });
    assert.equal(skipped.written, true);
    assert.equal(skipped.examples, 1);
    assert.equal(skipped.skipped_rows, 1);
    assert.deepEqual(located(skipped.skipped), [[3, 'messages', 'too_many_tokens', 'error']]);
  });

  test('an empty file is one error; a missing file is not_found', async () => {
    const empty = path.join(tmp, 'empty.jsonl');
    writeFileSync(empty, '\n\n');
    const report = await validateChatFile(empty);
    assert.deepEqual(located(report.errors), [[null, null, 'empty_file', 'error']]);
    await assert.rejects(validateChatFile(path.join(tmp, 'nope.jsonl')), (err: unknown) => err instanceof WeitiaoError && err.code === 'not_found');
  });
});

describe('datasetStats', () => {
  test('waimai: counts, answer distribution, character lengths (labelled), trained-token estimate, histogram', async () => {
    const prepared = await prepareDataset({
      input: WAIMAI,
      output_dir: path.join(tmp, 'waimai'),
      system: '你是一位外卖评论好评差评评论专家。',
      user: '{review}',
      assistant: '{label}',
      label_map: '1=好评,0=差评',
    });
    const stats = await datasetStats(prepared.train!.file, { epochs: 3 });
    // Independent figures from the written file.
    const examples = readFileSync(prepared.train!.file, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as ChatExample);
    const chars = examples.map((e) => e.messages.reduce((s, m) => s + [...m.content].length, 0));
    const total = chars.reduce((s, x) => s + x, 0);
    assert.equal(stats.examples, 11987);
    assert.equal(stats.invalid_examples, 0);
    assert.equal(stats.token_unit, 'characters');
    assert.deepEqual(stats.messages_per_example, { min: 3, mean: 3, p50: 3, p95: 3, max: 3 });
    assert.equal(stats.tokens_per_example!.min, Math.min(...chars));
    assert.equal(stats.tokens_per_example!.max, Math.max(...chars));
    const sorted = [...chars].sort((a, b) => a - b);
    assert.equal(stats.tokens_per_example!.p95, sorted[Math.ceil(0.95 * sorted.length) - 1]);
    assert.equal(stats.total_tokens, total);
    assert.equal(stats.estimated_trained_tokens, total * 3);
    assert.equal(stats.total_assistant_tokens, 2 * 11987); // every answer is two characters
    assert.deepEqual(
      stats.answer_distribution!.map((d) => [d.answer, d.count]),
      [
        ['差评', 7987],
        ['好评', 4000],
      ],
    );
    assert.ok(Math.abs(stats.answer_distribution![1].share - 4000 / 11987) < 1e-12);
    assert.equal(
      stats.histogram.bins.reduce((s, b) => s + b.count, 0),
      11987,
    );
    for (const b of stats.histogram.bins) assert.equal(b.count, chars.filter((c) => c >= b.start && c < b.end).length);
  });

  test('with a tokenizer: whole-example and final-answer token counts, over-length count, skipped invalid lines', async () => {
    const stats = await datasetStats(file, { epochs: 2 }, { countTokens: fakeCounter(60, []) });
    assert.equal(stats.token_unit, 'tokens');
    assert.equal(stats.examples, 4);
    assert.equal(stats.invalid_examples, 14);
    // The fake counts chars + 3 per message, and trains the assistant turns: a 2-character answer is 5.
    assert.deepEqual(stats.assistant_tokens_per_example, { min: 5, mean: 5, p50: 5, p95: 5, max: 5 });
    assert.equal(stats.estimated_trained_tokens, stats.total_tokens * 2);
    assert.equal(stats.max_length, 60);
    assert.equal(stats.over_max_length, 1);
  });
});
