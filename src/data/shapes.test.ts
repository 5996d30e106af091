// Alpaca and ShareGPT JSONL (issue 18): mapped to chat messages automatically, then the same checks,
// on_invalid and split as every other source; bad records reported at their line.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { prepareDataset } from './index.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-shapes-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const jsonl = (name: string, records: unknown[]) => {
  const file = path.join(tmp, name);
  writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
};
const written = (file: string) =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

describe('record shapes', () => {
  test('Alpaca: instruction (+ input) → user, output → assistant, system kept; a record without output is reported', async () => {
    const file = jsonl('alpaca.jsonl', [
      { instruction: '判断这条酒店评论的情感', input: '房间干净，早餐丰富', output: '好评', system: '你是评论分析专家。' },
      { instruction: '把“你好”翻译成英文', input: '', output: 'Hello' },
      { instruction: '判断情感', input: '隔音太差' },
    ]);
    const strict = await prepareDataset({ input: file, output_dir: path.join(tmp, 'a1') });
    assert.equal(strict.mode, 'alpaca');
    assert.deepEqual(
      strict.errors.map((e) => [e.line, e.field, e.code]),
      [[3, 'output', 'missing_field']],
    );
    const r = await prepareDataset({ input: file, output_dir: path.join(tmp, 'a2'), on_invalid: 'skip' });
    assert.equal(r.written, true);
    assert.equal(r.examples, 2);
    assert.deepEqual(
      r.skipped.map((e) => e.line),
      [3],
    );
    const byAnswer = Object.fromEntries(written(r.train!.file).map((e) => [e.messages.at(-1).content, e.messages]));
    assert.deepEqual(byAnswer['好评'], [
      { role: 'system', content: '你是评论分析专家。' },
      { role: 'user', content: '判断这条酒店评论的情感\n\n房间干净，早餐丰富' },
      { role: 'assistant', content: '好评' },
    ]);
    assert.deepEqual(byAnswer['Hello'], [
      { role: 'user', content: '把“你好”翻译成英文' },
      { role: 'assistant', content: 'Hello' },
    ]);
  });

  test('ShareGPT: human/gpt/system turns → roles, multi-turn kept; an unknown speaker is reported at its line and field', async () => {
    const file = jsonl('sharegpt.jsonl', [
      { conversations: [{ from: 'human', value: '这家酒店怎么样？' }, { from: 'gpt', value: '位置好，服务热情。' }] },
      {
        system: '你是客服。',
        conversations: [
          { from: 'human', value: '能开发票吗' },
          { from: 'gpt', value: '可以。' },
          { from: 'human', value: '几点退房' },
          { from: 'gpt', value: '中午十二点。' },
        ],
      },
      { conversations: [{ from: 'robot', value: '你好' }, { from: 'gpt', value: '你好' }] },
    ]);
    const r = await prepareDataset({ input: file, output_dir: path.join(tmp, 's'), on_invalid: 'skip', validation: 0 });
    assert.equal(r.mode, 'sharegpt');
    assert.deepEqual(
      r.skipped.map((e) => [e.line, e.field, e.code]),
      [[3, 'conversations[0].from', 'unrecognized_role']],
    );
    const out = written(r.train!.file);
    const multi = out.find((e) => e.messages.length === 5)!;
    assert.deepEqual(
      multi.messages.map((m: { role: string }) => m.role),
      ['system', 'user', 'assistant', 'user', 'assistant'],
    );
    assert.equal(multi.messages[4].content, '中午十二点。');
    assert.equal(out.length, 2);
  });
});
