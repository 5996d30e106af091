// Excel input (issue 18): a workbook written by openpyxl (.venv) with a notes sheet first, a Chinese-named
// data sheet, a merged title row above the header and a merged header cell; prepared through the same
// mapping, on_invalid and split, each problem at the sheet's own row number.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WeitiaoError } from '../errors.js';
import { prepareDataset } from './index.js';
import { headerNames } from './internal/xlsx.js';

const PYTHON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '.venv', 'bin', 'python');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-xlsx-'));
const book = path.join(tmp, 'hotel.xlsx');
after(() => rmSync(tmp, { recursive: true, force: true }));

// Row 1: a title merged over A1:C1; row 2: the header, "评论" merged over B2:C2 (text + source);
// rows 3..: data, row 6 has an empty review.
const WRITE = `
import sys, openpyxl
wb = openpyxl.Workbook()
wb.active.title = "说明"
wb.active["A1"] = "数据说明：1=好评, 0=差评"
ws = wb.create_sheet("酒店评论")
ws["A1"] = "2024 年酒店评论"
ws.merge_cells("A1:C1")
ws["A2"] = "标签"
ws["B2"] = "评论"
ws.merge_cells("B2:C2")
rows = [(1, "房间干净，早餐丰富", "携程"), (0, "隔音太差，一夜没睡好", "美团"), (1, "位置方便，离地铁近", "携程"), (1, None, "美团"), (0, "前台态度冷淡", "飞猪")]
for r in rows:
    ws.append(r)
wb.save(sys.argv[1])
`;

before(() => {
  execFileSync(PYTHON, ['-c', WRITE, book]);
});

describe('xlsx', () => {
  test('merged header cells get names; a sheet by its Chinese name, the header row below a title', async () => {
    assert.deepEqual(headerNames(['标签', '评论', null, null, '']), ['标签', '评论', '评论_2', '评论_3', '评论_4']);
    assert.deepEqual(headerNames([null, 'a']), ['column_1', 'a']);
    const options = { input: book, output_dir: path.join(tmp, 'out'), sheet: '酒店评论', header_row: 2, system: '来源：{评论_2}', user: '{评论}', assistant: '{标签}', label_map: '1=好评,0=差评' };
    const strict = await prepareDataset(options);
    assert.equal(strict.format, 'xlsx');
    assert.deepEqual(
      strict.errors.map((e) => [e.line, e.field, e.code]),
      [[6, '评论', 'empty_value']],
    );
    const r = await prepareDataset({ ...options, on_invalid: 'skip', validation: 0 });
    assert.equal(r.written, true);
    assert.equal(r.rows, 5);
    assert.deepEqual(
      r.skipped.map((e) => e.line),
      [6],
    );
    const out = readFileSync(r.train!.file, 'utf8').trim().split('\n').map((l) => JSON.parse(l).messages);
    assert.equal(out.length, 4);
    assert.ok(out.some((m) => m[0].content === '来源：美团' && m[1].content === '隔音太差，一夜没睡好' && m[2].content === '差评'));
  });

  test('a missing sheet names the sheets there are; the first sheet by default', async () => {
    await assert.rejects(
      prepareDataset({ input: book, output_dir: path.join(tmp, 'x'), sheet: '评论', user: '{a}', assistant: '{b}' }),
      (err: WeitiaoError) => err.code === 'invalid_request' && err.param === 'sheet' && /说明, 酒店评论/.test(err.message),
    );
    await assert.rejects(
      prepareDataset({ input: book, output_dir: path.join(tmp, 'y'), user: '{评论}', assistant: '{标签}' }),
      (err: WeitiaoError) => err.code === 'invalid_request' && /数据说明/.test(err.message), // the notes sheet's only column
    );
  });
});
