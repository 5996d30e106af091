// Parquet input (issue 18): a file written by pyarrow (.venv) with Chinese text, an integer label column
// and a null review, prepared through the same mapping, on_invalid and split; problems at their row number.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { prepareDataset } from './index.js';

const PYTHON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '.venv', 'bin', 'python');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-parquet-'));
const file = path.join(tmp, 'hotel.parquet');
after(() => rmSync(tmp, { recursive: true, force: true }));

const WRITE = `
import sys, pyarrow as pa, pyarrow.parquet as pq
table = pa.table({"label": pa.array([1, 0, 1, 0], pa.int64()), "review": ["房间干净，早餐丰富", "隔音太差", None, "前台态度冷淡"]})
pq.write_table(table, sys.argv[1])  # snappy, pyarrow's default
`;

before(() => {
  execFileSync(PYTHON, ['-c', WRITE, file]);
});

describe('parquet', () => {
  test('rows mapped by the templates; the null review is row 3, skipped and reported', async () => {
    const options = { input: file, output_dir: path.join(tmp, 'out'), user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评' };
    const strict = await prepareDataset(options);
    assert.equal(strict.format, 'parquet');
    assert.deepEqual(
      strict.errors.map((e) => [e.line, e.field, e.code]),
      [[3, 'review', 'empty_value']],
    );
    const r = await prepareDataset({ ...options, on_invalid: 'skip' });
    assert.equal(r.written, true);
    assert.equal(r.rows, 4);
    assert.equal(r.examples, 3);
    const out = readFileSync(r.train!.file, 'utf8').trim().split('\n').map((l) => JSON.parse(l).messages);
    assert.deepEqual(
      out.map((m) => [m[0].content, m[1].content]).sort(),
      [
        ['前台态度冷淡', '差评'],
        ['房间干净，早餐丰富', '好评'],
        ['隔音太差', '差评'],
      ].sort(),
    );
  });
});
