import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { after, before, describe, test } from 'node:test';
import { openContext } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { createExport, openExportContent, waitForExport } from '../export/index.js';
import { checkIntegrity, repairIntegrity } from '../store/integrity.js';
import { createFile, deleteFile, fileContentPath, materializeFile, openFileContent, retrieveFile } from '../files/index.js';
import { createTinyModel } from '../models/index.js';
import { startLocalS3 } from '../testing/s3rver.js';
import { TINY_WAIMAI } from '../testing/waimai.js';
import { MIN_PART_SIZE, openStore, parseStorageUrl, storageFor, type ObjectStore } from './index.js';

const BUCKET = 'weitiao-test';
const PREFIX = 'team/甲';

/** One backend under test: its store, and how to damage an object's bytes where the backend keeps them. */
interface Backend {
  name: 'local' | 's3';
  store: ObjectStore;
  /** `WEITIAO_STORAGE_URL` for the service-level test. */
  url: string;
  /** The requests the server saw (`PUT /bucket/key?partNumber=2&…`); empty for the local backend. */
  requests: string[];
  corrupt(key: string): void;
  close(): Promise<void>;
}

async function localBackend(tmp: string): Promise<Backend> {
  const root = path.join(tmp, 'objects');
  const store = openStore({ kind: 'local', root }, { cache: root });
  return { name: 'local', store, url: `file://${root}`, requests: [], corrupt: (key) => flipFirstByte(path.join(root, key)), close: async () => {} };
}

/** A local S3-compatible server on a free port, with its objects in a temp dir; the SDK reaches it through the usual variables. */
async function s3Backend(tmp: string): Promise<Backend> {
  const server = await startLocalS3(path.join(tmp, 's3rver'), BUCKET, PREFIX);
  const cache = path.join(tmp, 'cache');
  const store = openStore({ kind: 's3', bucket: BUCKET, prefix: PREFIX }, { cache, partSize: MIN_PART_SIZE });
  return { name: 's3', store, url: server.url, requests: server.requests, corrupt: server.corrupt, close: server.close };
}

function flipFirstByte(file: string): void {
  const bytes = readFileSync(file);
  bytes[0] = bytes[0]! ^ 0xff;
  writeFileSync(file, bytes); // same size: only the checksum can tell
}

const isMismatch = (key: string) => (err: unknown) =>
  err instanceof WeitiaoError && err.code === 'internal_error' && err.message.includes(key) && /checksum mismatch/.test(err.message) && /校验和不匹配/.test(err.message);

for (const make of [localBackend, s3Backend]) {
  describe(`object storage: ${make.name.replace('Backend', '')} backend`, () => {
    let tmp: string;
    let b: Backend;
    before(async () => {
      tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-storage-'));
      b = await make(tmp);
    });
    after(async () => {
      await b.close();
      rmSync(tmp, { recursive: true, force: true });
    });

    test('a file with a Chinese name and content round-trips through put, head, get and getToFile', async () => {
      const key = 'files/file-1/训练数据.jsonl';
      const text = '{"messages":[{"role":"user","content":"味道不错，送得也快"}]}\n'.repeat(20);
      const put = await b.store.put(key, Readable.from([Buffer.from(text)]));
      assert.equal(put.size, Buffer.byteLength(text));
      assert.match(put.sha256!, /^[0-9a-f]{64}$/);
      const head = await b.store.head(key);
      assert.equal(head?.size, put.size);
      assert.equal(head?.sha256, put.sha256, 'the sha256 is stored with the object');
      assert.equal((await buffer(await b.store.get(key))).toString('utf8'), text);
      const dest = path.join(tmp, 'out', '下载.jsonl');
      await b.store.getToFile(key, dest);
      assert.equal(readFileSync(dest, 'utf8'), text);
      assert.equal(await b.store.head('files/file-1/none.jsonl'), null);
      await assert.rejects(b.store.get('files/file-1/none.jsonl'), (e) => e instanceof WeitiaoError && e.code === 'not_found');
    });

    test('a 12 MB object uploads in 5 MB parts and comes back whole', async () => {
      const bytes = randomBytes(12 * 1024 * 1024);
      const source = path.join(tmp, 'big.bin');
      writeFileSync(source, bytes);
      const key = 'exports/export-1/model.gguf';
      await b.store.putFile(key, source);
      assert.ok(existsSync(source), 'without move the source stays');
      const head = await b.store.head(key);
      assert.equal(head?.size, bytes.length);
      if (b.name === 's3') {
        // s3rver gives a multipart object a plain MD5 ETag, so count the parts on the wire instead.
        const parts = b.requests.filter((r) => r.startsWith(`PUT /${BUCKET}/${PREFIX}/${key}?`)).map((r) => /partNumber=(\d+)/.exec(r)?.[1]);
        assert.deepEqual(parts.sort(), ['1', '2', '3'], 'three parts: 5 + 5 + 2 MB');
      }
      assert.ok((await buffer(await b.store.get(key))).equals(bytes));
    });

    test('a damaged object is refused on get, getToFile and materialize, naming the object', async () => {
      const key = 'files/file-2/坏.jsonl';
      const source = path.join(tmp, 'bad-source.jsonl');
      writeFileSync(source, '{"a":"完好"}\n'.repeat(50));
      await b.store.putFile(key, source);
      b.corrupt(key);
      await assert.rejects(async () => buffer(await b.store.get(key)), isMismatch(key));
      const dest = path.join(tmp, 'bad-copy.jsonl');
      await assert.rejects(b.store.getToFile(key, dest), isMismatch(key));
      assert.ok(!existsSync(dest), 'nothing is left at the destination');
      if (b.name === 's3') {
        await assert.rejects(b.store.materialize(key), isMismatch(key));
        assert.ok(!existsSync(b.store.localPath(key)), 'no local copy is made of damaged bytes');
      }
    });

    test('materialize gives a local path, reuses a copy whose checksum matches and replaces an edited one', async () => {
      const key = 'files/file-3/验证.jsonl';
      const text = '{"b":"原文"}\n'.repeat(30);
      await b.store.put(key, Readable.from([Buffer.from(text)]));
      const local = await b.store.materialize(key);
      assert.equal(local, b.store.localPath(key));
      assert.equal(readFileSync(local, 'utf8'), text);
      if (b.name === 's3') {
        rmSync(local);
        assert.equal(readFileSync(await b.store.materialize(key), 'utf8'), text, 'a missing copy is downloaded');
        const mtime = statSync(local).mtimeMs;
        assert.equal(await b.store.materialize(key), local);
        assert.equal(statSync(local).mtimeMs, mtime, 'a matching copy is reused, not downloaded again');
        writeFileSync(local, text + '{"b":"改过"}\n');
        assert.equal(readFileSync(await b.store.materialize(key), 'utf8'), text, 'an edited copy is replaced by the stored bytes');
      }
    });

    test('list returns the objects under a prefix, sorted; delete removes an object and its local copy', async () => {
      const keys = ['runs/r1/b.txt', 'runs/r1/a.txt', 'runs/r1/sub/c.txt', 'runs/r2/d.txt'];
      for (const key of keys) await b.store.put(key, Readable.from([Buffer.from(`内容 ${key}`)]));
      const listed = await b.store.list('runs/r1/');
      assert.deepEqual(
        listed.map((o) => o.key),
        ['runs/r1/a.txt', 'runs/r1/b.txt', 'runs/r1/sub/c.txt'],
      );
      assert.deepEqual(listed.map((o) => o.size), listed.map((o) => Buffer.byteLength(`内容 ${o.key}`)));
      assert.deepEqual((await b.store.list('runs/')).map((o) => o.key).length, 4);
      await b.store.delete('runs/r1/b.txt');
      assert.equal(await b.store.head('runs/r1/b.txt'), null);
      assert.ok(!existsSync(b.store.localPath('runs/r1/b.txt')));
      assert.deepEqual((await b.store.list('runs/r1/')).map((o) => o.key), ['runs/r1/a.txt', 'runs/r1/sub/c.txt']);
      await b.store.delete('runs/r2/d.txt');
      assert.ok(!existsSync(path.dirname(b.store.localPath('runs/r2/d.txt'))), 'a folder left empty goes');
      assert.ok(existsSync(path.dirname(path.dirname(b.store.localPath('runs/r2/d.txt')))), 'the top folder (like files/) stays');
      await assert.rejects(b.store.put('../escape.txt', Readable.from([Buffer.from('x')])), (e) => e instanceof WeitiaoError && e.code === 'invalid_request');
    });

    test('the files service stores an upload in the store and reads it back materialized', async () => {
      const home = path.join(tmp, 'home');
      const previous = process.env.WEITIAO_STORAGE_URL;
      process.env.WEITIAO_STORAGE_URL = b.url;
      const ctx = openContext({ home });
      try {
        const line = JSON.stringify({ messages: [{ role: 'user', content: '送餐太慢了' }, { role: 'assistant', content: '差评' }] }) + '\n';
        const source = path.join(tmp, '外卖训练.jsonl');
        writeFileSync(source, line.repeat(8));
        const file = await createFile(ctx, { source, filename: '外卖训练.jsonl', purpose: 'fine-tune', check: true });
        assert.equal(storageFor(ctx).kind, b.name);
        const key = `files/${file.id}/外卖训练.jsonl`;
        assert.equal((await storageFor(ctx).head(key))?.size, file.bytes, 'the object holds the upload');
        if (b.name === 's3') {
          rmSync(path.dirname(fileContentPath(ctx, file.id)), { recursive: true }); // as on a host that did not upload it
          assert.ok(!existsSync(fileContentPath(ctx, file.id)));
          // The bucket holds the bytes: doctor finds nothing lost here and --repair keeps the row.
          assert.deepEqual(checkIntegrity(ctx).findings.filter((f) => f.kind === 'file_missing'), []);
          repairIntegrity(ctx);
          assert.equal(retrieveFile(ctx, file.id).id, file.id);
        }
        const local = await materializeFile(ctx, file.id);
        assert.equal(readFileSync(local, 'utf8'), line.repeat(8));
        assert.equal((await buffer(await openFileContent(ctx, file.id))).toString('utf8'), line.repeat(8));
        await deleteFile(ctx, file.id);
        assert.equal(await storageFor(ctx).head(key), null, 'deleting the file deletes the object');
        assert.ok(!existsSync(local));
        assert.throws(() => retrieveFile(ctx, file.id), (e) => e instanceof WeitiaoError && e.code === 'not_found');
      } finally {
        ctx.close();
        if (previous === undefined) delete process.env.WEITIAO_STORAGE_URL;
        else process.env.WEITIAO_STORAGE_URL = previous;
      }
    });
  });
}

describe('object storage that cannot be reached', () => {
  test('an upload fails with unavailable, naming the store and the object', async () => {
    const saved = { ...process.env };
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-storage-down-'));
    try {
      // Port 1 on loopback: nothing listens, so the connection is refused at once.
      Object.assign(process.env, { AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:1', AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: 'x', AWS_SECRET_ACCESS_KEY: 'x', AWS_MAX_ATTEMPTS: '1' });
      const store = openStore({ kind: 's3', bucket: BUCKET, prefix: '' }, { cache: tmp });
      await assert.rejects(
        store.put('files/file-9/数据.jsonl', Readable.from([Buffer.from('{}\n')])),
        (e) => e instanceof WeitiaoError && e.code === 'unavailable' && e.message.includes(`s3://${BUCKET}/`) && e.message.includes('files/file-9/数据.jsonl'),
      );
      assert.ok(!existsSync(store.localPath('files/file-9/数据.jsonl')), 'no local copy of what was not stored');
    } finally {
      process.env = saved;
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('WEITIAO_STORAGE_URL', () => {
  test('unset is the home, s3:// names a bucket and prefix, anything else is refused naming the variable', () => {
    assert.deepEqual(parseStorageUrl(undefined, '/h'), { kind: 'local', root: '/h' });
    assert.deepEqual(parseStorageUrl('s3://bucket/a/b/', '/h'), { kind: 's3', bucket: 'bucket', prefix: 'a/b' });
    assert.deepEqual(parseStorageUrl('s3://bucket', '/h'), { kind: 's3', bucket: 'bucket', prefix: '' });
    assert.deepEqual(parseStorageUrl('file:///data/objects', '/h'), { kind: 'local', root: '/data/objects' });
    assert.throws(() => parseStorageUrl('minio://x', '/h'), (e) => e instanceof WeitiaoError && e.param === 'WEITIAO_STORAGE_URL');
  });
});

/** The files of a ustar stream (as tarEntries writes it): name → bytes. */
function untar(tar: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (let at = 0; at + 512 <= tar.length && tar[at] !== 0; ) {
    const field = (from: number, len: number) => tar.subarray(at + from, at + from + len).toString('utf8').replace(/\0.*$/s, '');
    const prefix = field(345, 155);
    const name = (prefix ? `${prefix}/` : '') + field(0, 100);
    const size = parseInt(field(124, 12), 8);
    out.set(name, tar.subarray(at + 512, at + 512 + size));
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('exports in object storage', () => {
  let tmp: string;
  let b: Backend;
  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-storage-export-'));
    b = await s3Backend(tmp);
    process.env.WEITIAO_STORAGE_URL = b.url;
  });
  after(async () => {
    delete process.env.WEITIAO_STORAGE_URL;
    await b.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('a finished Ollama export is uploaded and its download is streamed from the store, not the local folder', async () => {
    const ctx = openContext({ home: path.join(tmp, 'home') });
    try {
      const model = await createTinyModel(ctx, { name: 'tiny', ...TINY_WAIMAI });
      const done = await waitForExport(ctx, createExport(ctx, { model: model.id, format: 'ollama', quantize: 'f16', check: false }).id, undefined, 100);
      assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
      const folder = path.join(ctx.home.root, 'exports', done.id);
      const local = new Map(['Modelfile', 'README.md', 'model.gguf'].map((n) => [n, readFileSync(path.join(folder, n))]));
      const stored = await storageFor(ctx).list(`exports/${done.id}/`);
      assert.deepEqual(stored.map((o) => o.key), [...local.keys()].map((n) => `exports/${done.id}/${n}`).sort());
      for (const o of stored) assert.equal((await storageFor(ctx).head(o.key))?.sha256, sha256(local.get(path.basename(o.key))!));

      rmSync(folder, { recursive: true }); // as on an API host that did not run the export
      const content = await openExportContent(ctx, done.id);
      assert.equal(content.kind, 'directory');
      const files = untar(await buffer(content.body));
      assert.deepEqual([...files.keys()].sort(), [...local.keys()].map((n) => `${done.id}/${n}`).sort());
      for (const [name, bytes] of local) assert.equal(sha256(files.get(`${done.id}/${name}`)!), sha256(bytes), name);
    } finally {
      ctx.close();
    }
  });
});
