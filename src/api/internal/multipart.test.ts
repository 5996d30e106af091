import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { WeitiaoError } from '../../errors.js';
import { multipartBoundary, readMultipart } from './multipart.js';

/** A body split into chunks of the given sizes (cycled), as a network would deliver it. */
function chunked(body: Buffer, sizes: number[]): ReadableStream<Uint8Array> {
  let offset = 0;
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= body.length) return controller.close();
      const n = sizes[i++ % sizes.length];
      controller.enqueue(new Uint8Array(body.subarray(offset, offset + n)));
      offset += n;
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>, boundary: string) {
  const out: { name: string; filename?: string; contentType?: string; data: Buffer }[] = [];
  for await (const part of readMultipart(stream, boundary)) {
    const chunks: Buffer[] = [];
    for await (const c of part.body) chunks.push(c);
    out.push({ name: part.name, filename: part.filename, contentType: part.contentType, data: Buffer.concat(chunks) });
  }
  return out;
}

describe('readMultipart', () => {
  const boundary = '----weitiaoBoundary7MA4YWxkTrZu0gW';
  // Bytes that look like a delimiter's beginning, CRLFs, and UTF-8 Chinese, to stress the boundary search.
  const tricky = Buffer.concat([
    Buffer.from('{"messages":[{"role":"user","content":"好吃"}]}\r\n\r\n--'),
    Buffer.from(`\r\n--${boundary.slice(0, -1)}X`),
    randomBytes(3000),
  ]);
  const body = Buffer.concat([
    Buffer.from('preamble to ignore\r\n'),
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="训练 数据.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n`),
    tricky,
    Buffer.from(`\r\n--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune`),
    Buffer.from(`\r\n--${boundary}--\r\nepilogue`),
  ]);

  for (const sizes of [[1], [7, 3, 64], [65536], [boundary.length + 3]]) {
    test(`parts and bytes survive chunks of ${sizes.join('/')} bytes`, async () => {
      const parts = await collect(chunked(body, sizes), boundary);
      assert.equal(parts.length, 2);
      assert.equal(parts[0].name, 'file');
      assert.equal(parts[0].filename, '训练 数据.jsonl');
      assert.equal(parts[0].contentType, 'application/jsonl');
      assert.ok(parts[0].data.equals(tricky), 'file bytes are exact');
      assert.equal(parts[1].name, 'purpose');
      assert.equal(parts[1].filename, undefined);
      assert.equal(parts[1].data.toString(), 'fine-tune');
    });
  }

  test('an unread part is skipped and the next one still parses', async () => {
    const names: string[] = [];
    let purpose = '';
    for await (const part of readMultipart(chunked(body, [13]), boundary)) {
      names.push(part.name);
      if (part.name === 'purpose') purpose = await part.text(100);
    }
    assert.deepEqual(names, ['file', 'purpose']);
    assert.equal(purpose, 'fine-tune');
  });

  test('a truncated body is a clear invalid_request', async () => {
    await assert.rejects(
      collect(chunked(body.subarray(0, body.length - 60), [100]), boundary),
      (e: unknown) => e instanceof WeitiaoError && e.code === 'invalid_request' && /multipart/.test(e.message),
    );
  });

  test('field values over the limit are refused', async () => {
    await assert.rejects(
      (async () => {
        for await (const part of readMultipart(chunked(body, [100]), boundary)) await part.text(5);
      })(),
      (e: unknown) => e instanceof WeitiaoError && e.param === 'file',
    );
  });

  test('filename* (RFC 5987) wins over filename', async () => {
    const b = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"; filename*=UTF-8''%E5%A5%BD%E8%AF%84.jsonl\r\n\r\nx\r\n--${boundary}--`,
    );
    const [part] = await collect(chunked(b, [5]), boundary);
    assert.equal(part.filename, '好评.jsonl');
    assert.equal(part.data.toString(), 'x');
  });

  test('boundary from the content type', () => {
    assert.equal(multipartBoundary('multipart/form-data; boundary=abc'), 'abc');
    assert.equal(multipartBoundary('multipart/form-data; charset=utf-8; boundary="a b"'), 'a b');
    assert.equal(multipartBoundary('application/json'), null);
    assert.equal(multipartBoundary(undefined), null);
  });
});
