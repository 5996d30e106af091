// Hugging Face `datasets` input (issue 18): a save_to_disk folder made by `datasets` (.venv) with Chinese
// text, an integer label and a missing review, prepared through the same mapping, on_invalid and split; a
// plain Arrow IPC file (file format, pyarrow); a DatasetDict folder refused, naming its splits.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { prepareDataset } from './index.js';

const PYTHON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '.venv', 'bin', 'python');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-arrow-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const WRITE = `
import sys, os, datasets, pyarrow as pa
datasets.disable_progress_bars()
root = sys.argv[1]
d = datasets.Dataset.from_dict({"label": [1, 0, 1, 0], "review": ["房间干净，早餐丰富", "隔音太差", None, "前台态度冷淡"]})
d.save_to_disk(os.path.join(root, "hotel"))
datasets.DatasetDict({"train": d, "test": d}).save_to_disk(os.path.join(root, "hotel-splits"))
t = pa.table({"instruction": ["把下面的句子翻译成英文", "总结这段话"], "output": ["Translate", "Summary"]})
with pa.OSFile(os.path.join(root, "tasks.arrow"), "wb") as sink:
    with pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
`;

before(() => {
  execFileSync(PYTHON, ['-c', WRITE, tmp]);
});

const firstTurns = (file: string) =>
  readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).messages.map((m: { content: string }) => m.content));

describe('datasets folder and Arrow file', () => {
  test('save_to_disk folder: rows mapped by the templates; the missing review is row 3, skipped and reported', async () => {
    const options = { input: path.join(tmp, 'hotel'), output_dir: path.join(tmp, 'out'), user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评' };
    const strict = await prepareDataset(options);
    assert.equal(strict.format, 'arrow');
    assert.equal(strict.written, false);
    assert.deepEqual(
      strict.errors.map((e) => [e.line, e.field, e.code]),
      [[3, 'review', 'empty_value']],
    );
    const r = await prepareDataset({ ...options, on_invalid: 'skip', validation: 0.34 });
    assert.equal(r.written, true);
    assert.equal(r.rows, 4);
    assert.deepEqual(
      r.skipped.map((s) => s.line),
      [3],
    );
    const all = [...firstTurns(r.train!.file), ...firstTurns(r.validation!.file)];
    assert.deepEqual(
      all.sort(),
      [
        ['前台态度冷淡', '差评'],
        ['房间干净，早餐丰富', '好评'],
        ['隔音太差', '差评'],
      ].sort(),
    );
  });

  test('a plain .arrow file (IPC file format) reads the same way', async () => {
    const r = await prepareDataset({ input: path.join(tmp, 'tasks.arrow'), output_dir: path.join(tmp, 'tasks'), user: '{instruction}', assistant: '{output}' });
    assert.equal(r.format, 'arrow');
    assert.deepEqual(firstTurns(r.train!.file).sort(), [
      ['总结这段话', 'Summary'],
      ['把下面的句子翻译成英文', 'Translate'],
    ].sort());
  });

  test('a folder of several splits is refused, naming them', async () => {
    await assert.rejects(
      prepareDataset({ input: path.join(tmp, 'hotel-splits'), output_dir: path.join(tmp, 'x'), user: '{review}', assistant: '{label}' }),
      (err: Error & { code?: string }) => err.code === 'invalid_file' && /train, test/.test(err.message) && /hotel-splits\/train/.test(err.message),
    );
  });

  test('a template naming a missing column fails on the header, listing the columns', async () => {
    await assert.rejects(
      prepareDataset({ input: path.join(tmp, 'hotel'), output_dir: path.join(tmp, 'y'), user: '{text}', assistant: '{label}' }),
      /column 'text'.*'label', 'review'/,
    );
  });
});
