// Reading: the RFC 4180 parser (line numbers, quotes, line breaks, chunk boundaries), line splitting,
// and encodings (UTF-8 with and without BOM, GB18030 as Chinese Excel writes it, UTF-16 with BOM).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import iconv from 'iconv-lite';
import { parseDelimited, type RawRecord } from './internal/csv.js';
import { decodeFile, detectEncoding } from './internal/encoding.js';
import { splitLines } from './internal/lines.js';
import { prepareDataset } from './index.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-data-read-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

async function* chunked(text: string, sizes: number[]): AsyncGenerator<string> {
  let i = 0;
  for (let k = 0; i < text.length; k++) {
    const n = sizes[k % sizes.length];
    yield text.slice(i, i + n);
    i += n;
  }
}

async function collect<T>(gen: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of gen) out.push(x);
  return out;
}

// Every way of cutting the text must give the same records: quotes, "" and CRLF may straddle chunks.
async function parseAllWays(text: string, delimiter: ',' | '\t' = ','): Promise<RawRecord[]> {
  const whole = await collect(parseDelimited(chunked(text, [text.length || 1]), delimiter));
  for (const sizes of [[1], [2], [3, 1], [7, 2, 1]]) {
    assert.deepEqual(await collect(parseDelimited(chunked(text, sizes), delimiter)), whole, `chunk sizes ${sizes}`);
  }
  return whole;
}

describe('CSV/TSV parser', () => {
  test('quoted fields with commas, doubled quotes and line breaks; each record starts at its physical line', async () => {
    const text =
      'label,review\r\n' + // line 1
      '1,"送餐快,态度好"\r\n' + // line 2
      '0,"无语O__O""…问苍天"\r\n' + // line 3
      '1,"第一行\r\n第二行\n第三行"\r\n' + // lines 4-6
      '\r\n' + // line 7: blank, skipped
      '0,plain ☺ 😀 text\n' + // line 8
      '1,"ends here"\r' + // line 9, old-Mac line end
      '0,""\n' + // line 10: empty quoted field
      '1,last line without newline'; // line 11
    const records = await parseAllWays(text);
    assert.deepEqual(
      records.map((r) => [r.line, ...r.fields]),
      [
        [1, 'label', 'review'],
        [2, '1', '送餐快,态度好'],
        [3, '0', '无语O__O"…问苍天'],
        [4, '1', '第一行\r\n第二行\n第三行'],
        [8, '0', 'plain ☺ 😀 text'],
        [9, '1', 'ends here'],
        [10, '0', ''],
        [11, '1', 'last line without newline'],
      ],
    );
    assert.ok(records.every((r) => r.problem === undefined));
  });

  test('TSV uses the same quoting; commas are plain text there', async () => {
    const records = await parseAllWays('a\tb\n"x\ty"\t1,2\n', '\t');
    assert.deepEqual(
      records.map((r) => r.fields),
      [
        ['a', 'b'],
        ['x\ty', '1,2'],
      ],
    );
  });

  test('a quote inside an unquoted field is literal; text after a closing quote is reported', async () => {
    const records = await parseAllWays('a,b\n1,say "hi"\n2,"x"y\n');
    assert.deepEqual(records[1].fields, ['1', 'say "hi"']);
    assert.equal(records[1].problem, undefined);
    assert.equal(records[2].line, 3);
    assert.match(records[2].problem ?? '', /after the closing quote of field 2/);
  });

  test('an unclosed quote is reported at the line where it opened', async () => {
    const records = await parseAllWays('a,b\n1,ok\n2,"never\nclosed\n3,x\n');
    assert.equal(records.length, 3);
    assert.equal(records[2].line, 3);
    assert.match(records[2].problem ?? '', /opened on line 3 is never closed/);
  });
});

describe('line splitting', () => {
  test('LF, CRLF and lone CR, across chunk boundaries', async () => {
    const text = 'a\r\nb\nc\rd\r\n\r\ne';
    for (const sizes of [[text.length], [1], [2], [3]]) {
      assert.deepEqual(await collect(splitLines(chunked(text, sizes))), [
        { text: 'a', line: 1 },
        { text: 'b', line: 2 },
        { text: 'c', line: 3 },
        { text: 'd', line: 4 },
        { text: '', line: 5 },
        { text: 'e', line: 6 },
      ]);
    }
  });
});

describe('encodings', () => {
  // Full-width punctuation, a quote, a comma and a line break inside a field, and an emoji (which GBK
  // cannot encode but GB18030 can: the reason to read GB18030 rather than GBK).
  const csv = 'label,review\r\n1,"好吃，送餐快,""赞""！"\r\n0,"太咸了\r\n不会再点"\r\n1,味道不错😀\r\n';

  test('GB18030 bytes are detected and read back identically to the UTF-8 text', async () => {
    const gb = path.join(tmp, 'gb.csv');
    const encoded = iconv.encode(csv, 'gb18030');
    assert.notDeepEqual(encoded, Buffer.from(csv, 'utf8')); // really a different byte sequence
    writeFileSync(gb, encoded);
    assert.equal(await detectEncoding(gb), 'gb18030');
    assert.equal((await collect(decodeFile(gb, 'gb18030'))).join(''), csv);

    const utf8 = path.join(tmp, 'utf8.csv');
    writeFileSync(utf8, csv);
    const options = { user: '{review}', assistant: '{label}', label_map: '1=好评,0=差评' };
    const fromGb = await prepareDataset({ input: gb, output_dir: path.join(tmp, 'out-gb'), ...options });
    const fromUtf8 = await prepareDataset({ input: utf8, output_dir: path.join(tmp, 'out-utf8'), ...options });
    assert.equal(fromGb.encoding, 'gb18030');
    assert.equal(fromUtf8.encoding, 'utf8');
    assert.deepEqual(fromGb.errors, []);
    assert.equal(fromGb.examples, 3);
    assert.equal(readFileSync(fromGb.train!.file, 'utf8'), readFileSync(fromUtf8.train!.file, 'utf8'));
    assert.match(readFileSync(fromGb.train!.file, 'utf8'), /太咸了\\r\\n不会再点/);
  });

  test('an explicit gbk encoding reads GBK bytes; plain GBK text is also detected', async () => {
    const text = 'label,review\n1,好吃，送餐快\n';
    const gbk = path.join(tmp, 'gbk.csv');
    writeFileSync(gbk, iconv.encode(text, 'gbk'));
    assert.equal(await detectEncoding(gbk), 'gb18030');
    const result = await prepareDataset({ input: gbk, output_dir: path.join(tmp, 'out-gbk'), encoding: 'gbk', user: '{review}', assistant: '{label}' });
    assert.equal(result.encoding, 'gb18030');
    assert.equal(result.examples, 1);
  });

  test('a UTF-8 BOM is dropped (the first column is still found); UTF-16 with BOM is detected', async () => {
    const bom = path.join(tmp, 'bom.csv');
    writeFileSync(bom, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(csv, 'utf8')]));
    assert.equal(await detectEncoding(bom), 'utf8');
    assert.equal((await collect(decodeFile(bom, 'utf8'))).join(''), csv);
    const result = await prepareDataset({ input: bom, output_dir: path.join(tmp, 'out-bom'), user: '{review}', assistant: '{label}' });
    assert.deepEqual(result.errors, []);

    const u16 = path.join(tmp, 'u16.tsv');
    writeFileSync(u16, iconv.encode(csv.replaceAll(',', '\t'), 'utf16le', { addBOM: true }));
    assert.equal(await detectEncoding(u16), 'utf16le');
    assert.equal((await collect(decodeFile(u16, 'utf16le'))).join(''), csv.replaceAll(',', '\t'));
  });
});
