import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { Context } from '../context.js';
import { openTestContext } from '../testing/postgres.js';
import { WeitiaoError } from '../errors.js';
import { createFile, deleteFile, fileContentPath, FileObject, listFiles, retrieveFile } from './index.js';

let tmp: string;
let ctx: Context;

before(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-files-'));
  ctx = openTestContext(path.join(tmp, 'home'));
});
after(() => {
  ctx.close();
  rmSync(tmp, { recursive: true, force: true });
});

const line = JSON.stringify({ messages: [{ role: 'user', content: '味道不错，送得也快' }, { role: 'assistant', content: '好评' }] }) + '\n';

describe('files', () => {
  test('createFile copies a path into files/<id>/<name> and returns the OpenAI file object', async () => {
    const src = path.join(tmp, '训练.jsonl');
    writeFileSync(src, line.repeat(3));
    const file = await createFile(ctx, { source: src, filename: src, purpose: 'fine-tune' });
    FileObject.parse(file);
    assert.equal(file.object, 'file');
    assert.equal(file.filename, '训练.jsonl');
    assert.equal(file.bytes, Buffer.byteLength(line) * 3);
    assert.equal(file.status, 'processed');
    assert.match(file.id, /^file-[a-z0-9]{24}$/);
    const stored = fileContentPath(ctx, file.id);
    assert.equal(stored, path.join(ctx.home.files, file.id, '训练.jsonl'));
    assert.equal(readFileSync(stored, 'utf8'), line.repeat(3));
    assert.deepEqual(retrieveFile(ctx, file.id), file);
  });

  test('createFile with move: true moves a scratch file in (one write, not two) and the source is gone', async () => {
    const src = path.join(ctx.home.cache, 'spooled-upload');
    writeFileSync(src, line.repeat(4));
    const file = await createFile(ctx, { source: src, filename: '上传.jsonl', purpose: 'fine-tune', move: true });
    assert.equal(file.bytes, Buffer.byteLength(line) * 4);
    assert.equal(readFileSync(fileContentPath(ctx, file.id), 'utf8'), line.repeat(4));
    assert.equal(existsSync(src), false, 'moved, not copied');
  });

  test('createFile drains a stream chunk by chunk and keeps only the last part of a Windows path', async () => {
    const chunks = Array.from({ length: 50 }, () => Buffer.from(line));
    const file = await createFile(ctx, { source: Readable.from(chunks), filename: 'C:\\data\\upload.jsonl', purpose: 'fine-tune' });
    assert.equal(file.filename, 'upload.jsonl');
    assert.equal(file.bytes, Buffer.byteLength(line) * 50);
    assert.equal(readFileSync(fileContentPath(ctx, file.id), 'utf8'), line.repeat(50));
  });

  test('the size limit rejects with payload_too_large and leaves nothing behind', async () => {
    const before = readdirSync(ctx.home.files).sort();
    const count = listFiles(ctx).data.length;
    const stream = Readable.from(Array.from({ length: 10 }, () => Buffer.alloc(1000, 97)));
    await assert.rejects(createFile(ctx, { source: stream, filename: 'big.jsonl', purpose: 'fine-tune', maxBytes: 4500 }), (err) => {
      assert.ok(err instanceof WeitiaoError);
      assert.equal(err.code, 'payload_too_large');
      assert.equal(err.httpStatus, 413);
      assert.match(err.message, /4500 bytes/);
      return true;
    });
    const src = path.join(tmp, 'big.jsonl');
    writeFileSync(src, Buffer.alloc(5000, 97));
    await assert.rejects(createFile(ctx, { source: src, filename: 'big.jsonl', purpose: 'fine-tune', maxBytes: 4999 }), { code: 'payload_too_large' });
    // Exactly at the limit is fine.
    const ok = await createFile(ctx, { source: src, filename: 'big.jsonl', purpose: 'fine-tune', maxBytes: 5000 });
    assert.equal(ok.bytes, 5000);
    assert.deepEqual(readdirSync(ctx.home.files).sort(), [...before, ok.id].sort());
    assert.equal(listFiles(ctx).data.length, count + 1);
  });

  test('bad purpose, bad filename and a missing source are request errors naming the parameter', async () => {
    const src = path.join(tmp, 'x.jsonl');
    writeFileSync(src, line);
    await assert.rejects(createFile(ctx, { source: src, filename: 'x.jsonl', purpose: 'training' }), { code: 'invalid_request', param: 'purpose' });
    await assert.rejects(createFile(ctx, { source: src, filename: '..', purpose: 'fine-tune' }), { code: 'invalid_request', param: 'filename' });
    await assert.rejects(createFile(ctx, { source: src, filename: 'a\u0000b', purpose: 'fine-tune' }), { param: 'filename' });
    await assert.rejects(createFile(ctx, { source: path.join(tmp, 'nope.jsonl'), filename: 'nope.jsonl', purpose: 'fine-tune' }), {
      code: 'not_found',
      param: 'file',
    });
  });

  test('listFiles pages newest first with has_more, first_id, last_id and after; filters by purpose', async () => {
    const home = mkdtempSync(path.join(tmp, 'list-'));
    const c = openTestContext(home);
    try {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        ids.push((await createFile(c, { source: Readable.from([Buffer.from(`${i}\n`)]), filename: `f${i}.jsonl`, purpose: i === 2 ? 'evals' : 'fine-tune' })).id);
      }
      const newestFirst = [...ids].reverse();
      const p1 = listFiles(c, { limit: 2 });
      assert.deepEqual(p1.data.map((f) => f.id), newestFirst.slice(0, 2));
      assert.equal(p1.object, 'list');
      assert.equal(p1.has_more, true);
      assert.equal(p1.first_id, newestFirst[0]);
      assert.equal(p1.last_id, newestFirst[1]);
      const p2 = listFiles(c, { limit: 2, after: p1.last_id! });
      assert.deepEqual(p2.data.map((f) => f.id), newestFirst.slice(2, 4));
      const p3 = listFiles(c, { limit: 2, after: p2.last_id! });
      assert.deepEqual(p3.data.map((f) => f.id), newestFirst.slice(4));
      assert.equal(p3.has_more, false);
      assert.deepEqual(listFiles(c, { order: 'asc' }).data.map((f) => f.id), ids);
      assert.deepEqual(listFiles(c, { purpose: 'evals' }).data.map((f) => f.id), [ids[2]]);
      assert.throws(() => listFiles(c, { after: 'file-nope' }), { code: 'not_found', param: 'after' });
      assert.throws(() => listFiles(c, { limit: 0 }), { code: 'invalid_request', param: 'limit' });
    } finally {
      c.close();
    }
  });

  test('deleteFile removes the record and the bytes; unknown ids are not_found', async () => {
    const file = await createFile(ctx, { source: Readable.from([Buffer.from(line)]), filename: 'gone.jsonl', purpose: 'fine-tune' });
    const stored = fileContentPath(ctx, file.id);
    assert.deepEqual(await deleteFile(ctx, file.id), { id: file.id, object: 'file', deleted: true });
    assert.equal(existsSync(path.dirname(stored)), false);
    assert.throws(() => retrieveFile(ctx, file.id), { code: 'not_found', param: 'file_id' });
    await assert.rejects(deleteFile(ctx, file.id), { code: 'not_found' });
  });

  test('deleteFile refuses a file an unfinished job still needs', async () => {
    const file = await createFile(ctx, { source: Readable.from([Buffer.from(line)]), filename: 'in-use.jsonl', purpose: 'fine-tune' });
    ctx.db
      .prepare(
        `INSERT INTO jobs (id, model, training_file, status, method, seed, created_at) VALUES ('ftjob-files-test', 'm', ?, 'queued', '{}', 1, 0)`,
      )
      .run(file.id);
    await assert.rejects(deleteFile(ctx, file.id), { code: 'conflict', param: 'file_id' });
    ctx.db.prepare(`UPDATE jobs SET status = 'succeeded' WHERE id = 'ftjob-files-test'`).run();
    assert.equal((await deleteFile(ctx, file.id)).deleted, true);
  });
});
