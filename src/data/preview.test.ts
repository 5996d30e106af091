/**
 * The console's preview on real small files: records through prepare's own mapper in memory (nothing
 * written beside the file), problems at their line, a chat file shown as it is.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { previewDataset } from './preview.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-preview-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('a CSV previews through the suggested mapping and the label map, writing nothing', async () => {
  const file = path.join(dir, 'reviews.csv');
  writeFileSync(file, 'label,review\n1,"很好吃，下次还点"\n0,"送得太慢了，菜都凉了"\n2,"一般"\n');
  const p = await previewDataset(file, 'reviews.csv', { limit: 3, label_map: '1=好评,0=差评' });
  assert.deepEqual(p.suggested_mapping, { user: '{review}', assistant: '{label}' });
  assert.deepEqual(
    p.examples.map((e) => [e.line, e.messages.map((m) => m.content)]),
    [
      [2, ['很好吃，下次还点', '好评']],
      [3, ['送得太慢了，菜都凉了', '差评']],
    ],
  );
  assert.deepEqual(
    p.issues.map((i) => [i.file, i.line, i.field, i.code]),
    [['reviews.csv', 4, 'label', 'unknown_label']],
  );
  assert.deepEqual(readdirSync(dir), ['reviews.csv']);
});

test('plain-record JSONL: a field that is not text is a problem at its line, as prepare reports it', async () => {
  const file = path.join(dir, 'records.jsonl');
  writeFileSync(file, [{ q: '几点送到？', a: '半小时内' }, { q: { nested: true }, a: '不知道' }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const p = await previewDataset(file, 'records.jsonl', { limit: 5, mapping: { user: '{q}', assistant: '{a}' } });
  assert.equal(p.format, 'jsonl');
  assert.deepEqual(p.examples, [{ line: 1, messages: [{ role: 'user', content: '几点送到？' }, { role: 'assistant', content: '半小时内' }] }]);
  assert.deepEqual(p.issues.map((i) => [i.line, i.field, i.code]), [[2, 'q', 'invalid_value']]);
});

test('a chat file is shown as it is; a bad line is reported, not shown', async () => {
  const file = path.join(dir, 'chat.jsonl');
  const ok = { messages: [{ role: 'user', content: '你好' }, { role: 'assistant', content: '您好！' }] };
  writeFileSync(file, [JSON.stringify({ messages: [{ role: 'robot', content: '？' }] }), JSON.stringify(ok)].join('\n') + '\n');
  const p = await previewDataset(file, 'chat.jsonl', { limit: 5 });
  assert.equal(p.format, 'chat');
  assert.equal(p.suggested_mapping, null);
  assert.deepEqual(p.examples, [{ line: 2, messages: ok.messages }]);
  assert.ok(p.issues.some((i) => i.line === 1 && i.code === 'unrecognized_role'), JSON.stringify(p.issues));
});
