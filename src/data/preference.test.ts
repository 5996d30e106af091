// validatePreferenceFile: OpenAI's preference format, every problem with its line and field.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { validatePreferenceFile } from './index.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-preference-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const pair = (preferred: unknown, nonPreferred: unknown, input: unknown = { messages: [{ role: 'user', content: '菜很好吃，送得也快' }] }) =>
  JSON.stringify({ input, preferred_output: preferred, non_preferred_output: nonPreferred });
const say = (content: string, role = 'assistant') => [{ role, content }];

test('good pairs pass; each bad line is reported with its line, field and code', async () => {
  const file = path.join(tmp, 'pairs.jsonl');
  const lines = [
    pair(say('好评'), say('差评')), // 1 fine
    pair(say('好评'), undefined), // 2 missing non_preferred_output
    pair(say('好评', 'user'), say('差评')), // 3 wrong role in an output
    pair(say('好评'), say('差评'), { messages: [{ role: 'bot', content: 'x' }] }), // 4 bad role in the prompt
    '{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": [{"role": "assistant", "content": ""}], "extra": 1}', // 5
    '{not json', // 6
    pair(say('好评'), say('好评')), // 7 identical: a warning
    '', // blank lines are skipped
    pair([{ role: 'assistant', content: '差评' }], say('好评'), { messages: [{ role: 'system', content: '判断好评差评' }, { role: 'user', content: '太慢了' }, { role: 'assistant', content: '差评', weight: 0 }, { role: 'user', content: '再想想' }] }), // 9 fine, multi-turn
  ];
  writeFileSync(file, lines.join('\n') + '\n');
  const report = await validatePreferenceFile(file);

  assert.equal(report.examples, 8);
  assert.equal(report.valid_examples, 3); // lines 1, 7 (a warning only) and 9
  assert.equal(report.label_set, null);
  const at = (line: number) => report.errors.filter((e) => e.line === line).map((e) => [e.field, e.code]);
  assert.deepEqual(at(1), []);
  assert.deepEqual(at(2), [['non_preferred_output', 'missing_output']]);
  assert.deepEqual(at(3), [['preferred_output[0].role', 'invalid_output_role']]);
  assert.deepEqual(at(4), [['input.messages[0].role', 'unrecognized_role']]);
  assert.deepEqual(at(5), [
    ['extra', 'unrecognized_key'],
    ['input.messages', 'missing_messages_list'],
    ['preferred_output', 'missing_output'],
    ['non_preferred_output[0].content', 'missing_content'],
  ]);
  assert.deepEqual(at(6), [[null, 'data_type']]);
  assert.deepEqual(report.warnings.map((w) => [w.line, w.field, w.code]), [[7, 'non_preferred_output', 'identical_outputs']]);
  // Bilingual messages, English first.
  assert.match(report.errors.find((e) => e.line === 2)!.message, /^missing 'non_preferred_output'.* \/ 缺少 non_preferred_output$/);
  for (const issue of [...report.errors, ...report.warnings]) assert.equal(issue.file, file);
});

test('an empty file is one whole-file error', async () => {
  const file = path.join(tmp, 'empty.jsonl');
  writeFileSync(file, '\n\n');
  const report = await validatePreferenceFile(file);
  assert.deepEqual(report.errors.map((e) => [e.line, e.code]), [[null, 'empty_file']]);
});
