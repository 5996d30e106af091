/**
 * The remote worker's HTTP client against a real HTTP server on 127.0.0.1: transient failures are retried,
 * lease_lost is not, a corrupt download is refused, and a directory survives upload and download as tar with
 * its sha256 checked (file names in Chinese included); the base-model cache downloads once.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import * as tar from 'tar';
import { LeaseResponse, SHA256_HEADER, UploadResponse, WORKERS_PATH } from './protocol.js';
import { cachedDir, LeaseLostError, WorkerClient } from './transfer.js';

let dir: string;
let server: http.Server;
let url: string;
const hits = new Map<string, number>();
let handler: (req: http.IncomingMessage, res: http.ServerResponse, n: number) => unknown = () => {};

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-transfer-'));
  server = http.createServer((req, res) => {
    const route = req.url!.slice(WORKERS_PATH.length);
    const n = (hits.get(route) ?? 0) + 1;
    hits.set(route, n);
    void Promise.resolve(handler(req, res, n)).catch((err) => res.writeHead(500).end(String(err)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

const client = () => new WorkerClient(url, 'key', { budgetMs: 10_000, firstDelayMs: 20, maxDelayMs: 100 });
const json = (res: http.ServerResponse, status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));

test('503 and 502 are retried; the answer after them is parsed', async () => {
  handler = (req, res, n) => {
    assert.equal(req.headers.authorization, 'Bearer key');
    if (n <= 2) return json(res, n === 1 ? 503 : 502, { error: { code: 'unavailable', message: 'busy' } });
    json(res, 200, { requested_action: 'pause' });
  };
  assert.deepEqual(await client().json('POST', '/leases/a/heartbeat', {}, LeaseResponse), { requested_action: 'pause' });
  assert.equal(hits.get('/leases/a/heartbeat'), 3);
});

test('409 lease_lost is LeaseLostError at once; another 4xx is a WeitiaoError with its code', async () => {
  handler = (req, res) =>
    req.url!.endsWith('/events')
      ? json(res, 409, { error: { code: 'lease_lost', message: 'lease b no longer holds a job' } })
      : json(res, 403, { error: { code: 'permission_denied', message: 'not a worker key' } });
  await assert.rejects(client().json('POST', '/leases/b/events', { events: [] }, LeaseResponse), (e: Error) => e instanceof LeaseLostError && /no longer holds/.test(e.message));
  assert.equal(hits.get('/leases/b/events'), 1);
  await assert.rejects(client().json('POST', '/claim', {}, LeaseResponse), { code: 'permission_denied' });
  assert.equal(hits.get('/claim'), 1);
});

test('a download whose sha256 does not match is refused and leaves nothing; a matching one lands', async () => {
  const content = '{"messages": [{"role": "user", "content": "好吃"}]}\n';
  const sha = createHash('sha256').update(content).digest('hex');
  handler = (req, res) => res.writeHead(200, { [SHA256_HEADER]: req.url!.includes('bad') ? '0'.repeat(64) : sha }).end(content);
  const bad = path.join(dir, 'bad.jsonl');
  await assert.rejects(client().downloadFile('/leases/c/inputs/bad', bad, null), /sha256/);
  assert.ok(!existsSync(bad) && !existsSync(`${bad}.partial`));
  await assert.rejects(client().downloadFile('/leases/c/inputs/good', path.join(dir, 'x.jsonl'), 'f'.repeat(64)), /sha256/, 'the claim\'s sha256 is checked too');
  const good = path.join(dir, 'inputs', 'training.jsonl');
  await client().downloadFile('/leases/c/inputs/good', good, sha);
  assert.equal(readFileSync(good, 'utf8'), content);
});

test('a directory goes up as tar with its sha256 and comes down again; the cache downloads once', async () => {
  const src = path.join(dir, 'step-000004');
  mkdirSync(path.join(src, 'sub'), { recursive: true });
  writeFileSync(path.join(src, 'adapter.safetensors'), Buffer.alloc(70_000, 7));
  writeFileSync(path.join(src, 'sub', '说明.json'), '{"步": 4}');
  const received = path.join(dir, 'received');
  mkdirSync(received);
  let stored: Buffer = Buffer.alloc(0);
  handler = async (req, res) => {
    if (req.method === 'PUT') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      stored = Buffer.concat(chunks);
      const sha = createHash('sha256').update(stored).digest('hex');
      assert.equal(req.headers[SHA256_HEADER], sha);
      assert.equal(Number(req.headers['content-length']), stored.length);
      await pipeline(Readable.from([stored]), tar.x({ cwd: received }) as unknown as NodeJS.WritableStream);
      return json(res, 200, { path: 'checkpoints/step-000004', bytes: stored.length, sha256: sha });
    }
    res.writeHead(200, { 'content-type': 'application/x-tar' }).end(stored);
  };
  const up = await client().uploadDir('/leases/d/checkpoints/4', src, path.join(dir, 'scratch'), UploadResponse);
  assert.equal(up.bytes, stored.length);
  assert.deepEqual(readFileSync(path.join(received, 'adapter.safetensors')), Buffer.alloc(70_000, 7));
  assert.equal(readFileSync(path.join(received, 'sub', '说明.json'), 'utf8'), '{"步": 4}');

  const cacheRoot = path.join(dir, 'cache');
  let fetched = 0;
  const fetchBase = (dest: string) => {
    fetched++;
    return client().downloadDir('/leases/d/inputs/inputs%2Fbase', dest);
  };
  const first = await cachedDir(cacheRoot, 'tiny@1733120000', fetchBase);
  const second = await cachedDir(cacheRoot, 'tiny@1733120000', fetchBase);
  assert.deepEqual([first.hit, second.hit, fetched], [false, true, 1]);
  assert.equal(first.dir, second.dir);
  assert.equal(readFileSync(path.join(first.dir, 'sub', '说明.json'), 'utf8'), '{"步": 4}');
  const changed = await cachedDir(cacheRoot, 'tiny@1733129999', fetchBase);
  assert.ok(!changed.hit && changed.dir !== first.dir, 'a changed model is a new cache entry');
});
