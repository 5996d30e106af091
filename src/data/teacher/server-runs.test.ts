// Teacher runs as server tasks (issue 18) through the API app (/v1/weitiao/teacher-runs) against the
// stand-in teacher on 127.0.0.1: estimate, label to the end with progress and output, then a run
// cancelled part-way (its request in flight answered and journaled) and resumed: every prompt asked once.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createApp } from '../../api/index.js';
import { openContext, type Context } from '../../context.js';
import { createKey } from '../../keys/index.js';
import { startStandIn, type StandIn } from '../../testing/teacher-stand-in.js';

type Json = Record<string, any>;
const REVIEWS = ['送餐很快，味道不错', '等了两个小时，凉了', '香！下次还点', '一般般吧', '难吃', '包装很好，分量足'];

let dir: string;
let ctx: Context;
let app: ReturnType<typeof createApp>;
let key: string;
let server: StandIn;
let fileId: string;

const call = async (method: string, url: string, body?: unknown) => {
  const headers: Record<string, string> = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await app.request(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    // the content route answers JSONL
  }
  return { status: res.status, text, json };
};

/** Polls until `done(run)`; generous deadline, no timing assertion. */
async function until(id: string, done: (run: Json) => boolean): Promise<Json> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const r = await call('GET', `/v1/weitiao/teacher-runs/${id}`);
    assert.equal(r.status, 200, r.text);
    if (done(r.json)) return r.json;
    assert.ok(Date.now() < deadline, `run ${id} stuck: ${r.text}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'weitiao-trun-'));
  ctx = openContext({ home: path.join(dir, 'home') });
  key = createKey(ctx, { name: 'test' }).key;
  app = createApp(ctx, { auth: true });
  server = await startStandIn();
  const form = new FormData();
  form.append('purpose', 'user_data');
  form.append('file', new Blob(['id,review\n' + REVIEWS.map((r, i) => `${i + 1},${r}`).join('\n') + '\n']), 'reviews.csv');
  const res = await app.request('/v1/files', { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
  assert.equal(res.status, 200, await res.clone().text());
  fileId = ((await res.json()) as Json).id;
});
after(async () => {
  await server.close();
  ctx.close();
  rmSync(dir, { recursive: true, force: true });
});

const labelBody = (concurrency: number) => ({
  kind: 'label',
  teacher: { base_url: server.url, model: 'labeller', concurrency },
  input: fileId,
  column: 'review',
  labels: ['好评', '差评'],
});

describe('teacher runs over the API', () => {
  test('estimate, then a label run to the end: progress, label counts, the output JSONL', async () => {
    const est = await call('POST', '/v1/weitiao/teacher-runs/estimate', labelBody(2));
    assert.equal(est.status, 200, est.text);
    assert.equal(est.json.estimate.requests, REVIEWS.length);
    assert.equal(server.received.size, 0, 'an estimate sends nothing');

    const created = await call('POST', '/v1/weitiao/teacher-runs', labelBody(2));
    assert.equal(created.status, 202, created.text);
    assert.match(created.json.id, /^trun-/);
    assert.equal(created.json.options.teacher.api_key_env, 'WEITIAO_TEACHER_API_KEY', 'the name of the key variable, never a key');
    const run = await until(created.json.id, (r) => r.status !== 'queued' && r.status !== 'running');
    assert.equal(run.status, 'succeeded', JSON.stringify(run.error));
    assert.equal(run.estimate.requests, REVIEWS.length);
    assert.equal(run.progress.done, REVIEWS.length);
    assert.equal(run.requests_sent, REVIEWS.length);
    const content = await call('GET', `/v1/weitiao/teacher-runs/${run.id}/content`);
    const lines = content.text.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, run.progress.written);
    assert.ok(lines.every((l) => ['好评', '差评'].includes(l.label)));
    const list = await call('GET', '/v1/weitiao/teacher-runs');
    assert.deepEqual(list.json.data.map((r: Json) => r.id), [run.id]);
  });

  test('cancel part-way, then resume: the request in flight is answered and journaled, nothing requested twice', async () => {
    server.received.clear();
    // One request at a time; the third is held by the teacher until released, so the cancel lands mid-run.
    server.holdAfter = [...server.answered.values()].reduce((a, b) => a + b, 0) + 2;
    const created = await call('POST', '/v1/weitiao/teacher-runs', labelBody(1));
    const id = created.json.id;
    await until(id, (r) => r.progress?.done === 2 && server.received.size === 3);
    const cancelling = await call('POST', `/v1/weitiao/teacher-runs/${id}/cancel`);
    assert.equal(cancelling.status, 200, cancelling.text);
    assert.equal(cancelling.json.status, 'cancelling');
    server.holdAfter = null;
    server.releaseHeld();
    const cancelled = await until(id, (r) => r.status !== 'cancelling');
    assert.equal(cancelled.status, 'cancelled');
    assert.equal(cancelled.progress.done, 3, 'the held request was answered and its row written');
    assert.equal(cancelled.requests_sent, 3);

    const resumed = await call('POST', `/v1/weitiao/teacher-runs/${id}/resume`);
    assert.equal(resumed.status, 202, resumed.text);
    const run = await until(id, (r) => r.status !== 'queued' && r.status !== 'running');
    assert.equal(run.status, 'succeeded', JSON.stringify(run.error));
    assert.equal(run.progress.done, REVIEWS.length);
    assert.equal(run.requests_sent, REVIEWS.length);
    assert.deepEqual([...server.received.values()], REVIEWS.map(() => 1), 'each review asked once over both starts');
    const again = await call('POST', `/v1/weitiao/teacher-runs/${id}/resume`);
    assert.equal(again.status, 409, 'a finished run does not resume');
  });

  test('an unknown input file is refused before anything is recorded', async () => {
    const r = await call('POST', '/v1/weitiao/teacher-runs', { ...labelBody(1), input: 'file-doesnotexist' });
    assert.equal(r.status, 404, r.text);
  });
});
