/**
 * The API in-process (`app.request`): auth, the one error shape, validation params, pagination, uploads,
 * job event streams, model ids with '/' and ':', stream errors, start-up, and the OpenAPI document. The
 * engine runs once here (a chat that fails mid-stream); the integration tests train and chat for real.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { createKey, revokeKey } from '../keys/index.js';
import { registerModel } from '../models/index.js';
import { WeitiaoError } from '../errors.js';
import { createApp, startServer } from './index.js';

type Json = Record<string, any>;

describe('HTTP API (in-process)', () => {
  let dir: string;
  let ctx: Context;
  let app: ReturnType<typeof createApp>;
  let key: string;
  const MAX_UPLOAD = 4096;

  const call = async (method: string, url: string, init: { body?: unknown; headers?: Record<string, string>; auth?: string | null } = {}) => {
    const headers: Record<string, string> = { ...init.headers };
    const auth = init.auth === undefined ? key : init.auth;
    if (auth !== null) headers.authorization = `Bearer ${auth}`;
    let body: RequestInit['body'] | undefined;
    if (init.body instanceof FormData || typeof init.body === 'string') body = init.body as RequestInit['body'];
    else if (init.body !== undefined) {
      body = JSON.stringify(init.body);
      headers['content-type'] = 'application/json';
    }
    const res = await app.request(url, { method, headers, body });
    const text = await res.text();
    let json: Json | undefined;
    try {
      json = JSON.parse(text) as Json;
    } catch {
      /* not JSON */
    }
    return { status: res.status, headers: res.headers, text, json: json! };
  };

  const assertError = (r: { status: number; json: Json }, status: number, code: string, param: string | null = null) => {
    assert.equal(r.status, status, JSON.stringify(r.json));
    assert.deepEqual(Object.keys(r.json), ['error']);
    assert.deepEqual(Object.keys(r.json.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(r.json.error.code, code);
    assert.equal(r.json.error.param, param);
    assert.ok(r.json.error.message.length > 0);
  };

  const upload = (content: string, filename: string, purpose: string | null = 'fine-tune', purposeFirst = false) => {
    const form = new FormData();
    if (purposeFirst && purpose !== null) form.append('purpose', purpose);
    form.append('file', new Blob([content]), filename);
    if (!purposeFirst && purpose !== null) form.append('purpose', purpose);
    return call('POST', '/v1/files', { body: form });
  };

  const example = (review: string, label: string) =>
    JSON.stringify({ messages: [{ role: 'user', content: review }, { role: 'assistant', content: label }] }) + '\n';

  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-api-'));
    ctx = openContext({ home: dir });
    app = createApp(ctx, { auth: true, maxUploadBytes: MAX_UPLOAD });
    key = createKey(ctx, { name: 'test' }).key;
    const modelDir = path.join(ctx.home.models, 'tiny-test');
    mkdirSync(modelDir, { recursive: true });
    writeFileSync(path.join(modelDir, 'config.json'), '{}');
    registerModel(ctx, { id: 'tiny-test', kind: 'base', path: modelDir, source: 'local' });
  });
  after(() => {
    ctx.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe('auth', () => {
    test('/health needs no key', async () => {
      const r = await call('GET', '/health', { auth: null });
      assert.equal(r.status, 200);
      assert.equal(r.json.status, 'ok');
    });

    test('a /v1 route without a key is 401 in OpenAI shape, with WWW-Authenticate', async () => {
      const r = await call('GET', '/v1/models', { auth: null });
      assertError(r, 401, 'unauthorized');
      assert.equal(r.json.error.type, 'authentication_error');
      assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer/);
    });

    test('a wrong, malformed or revoked key is 401; a good key passes', async () => {
      assertError(await call('GET', '/v1/models', { auth: 'wt-' + 'x'.repeat(40) }), 401, 'unauthorized');
      assertError(await call('GET', '/v1/models', { auth: null, headers: { authorization: 'Basic abc' } }), 401, 'unauthorized');
      const other = createKey(ctx, { name: 'soon revoked' });
      assert.equal((await call('GET', '/v1/models', { auth: other.key })).status, 200);
      revokeKey(ctx, other.id);
      const r = await call('GET', '/v1/models', { auth: other.key });
      assertError(r, 401, 'unauthorized');
      assert.ok(!r.json.error.message.includes(other.key), 'the key is not echoed back');
    });

    test('unknown /v1 routes ask for a key first, then are 404 in the same shape', async () => {
      assertError(await call('GET', '/v1/nothing-here', { auth: null }), 401, 'unauthorized');
      assertError(await call('GET', '/v1/nothing-here'), 404, 'not_found');
      assertError(await call('GET', '/nothing-here', { auth: null }), 404, 'not_found');
    });

    test('auth: false lets requests through', async () => {
      const open = createApp(ctx, { auth: false });
      const res = await open.request('/v1/models');
      assert.equal(res.status, 200);
    });
  });

  describe('errors', () => {
    test('a body that fails its schema names the first bad param', async () => {
      assertError(await call('POST', '/v1/fine_tuning/jobs', { body: {} }), 400, 'invalid_request', 'model');
      const r = await call('POST', '/v1/fine_tuning/jobs', {
        body: { model: 'tiny-test', training_file: 'file-x', method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 0 } } } },
      });
      assertError(r, 400, 'invalid_request', 'method.supervised.hyperparameters.n_epochs');
      assert.equal(r.json.error.type, 'invalid_request_error');
      const chat = await call('POST', '/v1/chat/completions', { body: { model: 'tiny-test', messages: [{ role: 'bot', content: 'hi' }] } });
      assertError(chat, 400, 'invalid_request', 'messages[0].role');
    });

    test('a body that is not JSON is invalid_request', async () => {
      const r = await call('POST', '/v1/fine_tuning/jobs', { body: '{"model": ', headers: { 'content-type': 'application/json' } });
      assertError(r, 400, 'invalid_request');
      assert.match(r.json.error.message, /JSON/);
    });

    test('bad query params are 400 naming the param', async () => {
      assertError(await call('GET', '/v1/fine_tuning/jobs?limit=0'), 400, 'invalid_request', 'limit');
      assertError(await call('GET', '/v1/fine_tuning/jobs?limit=abc'), 400, 'invalid_request', 'limit');
    });

    test('unknown ids are 404 with the param at fault', async () => {
      assertError(await call('GET', '/v1/fine_tuning/jobs/ftjob-nope'), 404, 'not_found', 'fine_tuning_job_id');
      assertError(await call('GET', '/v1/files/file-nope'), 404, 'not_found', 'file_id');
      assertError(await call('GET', '/v1/models/nope:nope'), 404, 'not_found', 'model');
      const r = await call('POST', '/v1/fine_tuning/jobs', { body: { model: 'tiny-test', training_file: 'file-nope' } });
      assertError(r, 404, 'not_found', 'training_file');
    });

    test('an unexpected error is a 500 that hides its message and stack, which go to stderr', async () => {
      const probe = createApp(ctx, { auth: false });
      probe.get('/v1/boom', () => {
        throw new Error('secret detail at /home/someone/.weitiao');
      });
      const logged: string[] = [];
      const original = console.error;
      console.error = (...args: unknown[]) => void logged.push(args.join(' '));
      try {
        const res = await probe.request('/v1/boom');
        const body = (await res.json()) as Json;
        assert.equal(res.status, 500);
        assert.equal(body.error.code, 'internal_error');
        assert.equal(body.error.type, 'server_error');
        assert.ok(!JSON.stringify(body).includes('secret'), 'no internals in the body');
      } finally {
        console.error = original;
      }
      assert.ok(logged.some((l) => l.includes('secret detail') && l.includes('at ')), 'the stack is logged');
    });
  });

  describe('files', () => {
    test('upload (file before or after purpose), retrieve, content, delete', async () => {
      const content = example('味道不错，送餐很快', '好评') + example('太难吃了', '差评');
      for (const purposeFirst of [false, true]) {
        const r = await upload(content, '训练.jsonl', 'fine-tune', purposeFirst);
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.object, 'file');
        assert.equal(r.json.filename, '训练.jsonl');
        assert.equal(r.json.bytes, Buffer.byteLength(content));
        assert.equal(r.json.purpose, 'fine-tune');

        const got = await call('GET', `/v1/files/${r.json.id}`);
        assert.deepEqual(got.json, r.json);
        const bytes = await call('GET', `/v1/files/${r.json.id}/content`);
        assert.equal(bytes.status, 200);
        assert.equal(bytes.text, content);
        assert.match(bytes.headers.get('content-disposition') ?? '', /filename\*=UTF-8''%E8%AE%AD/);

        const del = await call('DELETE', `/v1/files/${r.json.id}`);
        assert.deepEqual(del.json, { id: r.json.id, object: 'file', deleted: true });
        assertError(await call('GET', `/v1/files/${r.json.id}`), 404, 'not_found', 'file_id');
      }
    });

    test('an upload over the limit is 413 and leaves nothing behind', async () => {
      const before = readdirSync(ctx.home.files).length;
      for (const purposeFirst of [false, true]) {
        const r = await upload('x'.repeat(MAX_UPLOAD + 1), 'big.jsonl', 'fine-tune', purposeFirst);
        assertError(r, 413, 'payload_too_large', 'file');
      }
      // A declared length far past the limit is refused before reading.
      const big = await call('POST', '/v1/files', {
        body: 'x'.repeat(MAX_UPLOAD * 20),
        headers: { 'content-type': 'multipart/form-data; boundary=b', 'content-length': String(MAX_UPLOAD * 20) },
      });
      assertError(big, 413, 'payload_too_large', 'file');
      assert.equal(readdirSync(ctx.home.files).length, before, 'no stored or temporary files remain');
      assert.deepEqual(readdirSync(ctx.home.cache), [], 'no spooled uploads remain');
    });

    test('a missing or unknown purpose, a missing file or a non-multipart body is 400', async () => {
      assertError(await upload('{}\n', 'a.jsonl', null), 400, 'invalid_request', 'purpose');
      assertError(await upload('{}\n', 'a.jsonl', 'nonsense'), 400, 'invalid_request', 'purpose');
      assertError(await upload('{}\n', 'a.jsonl', 'nonsense', true), 400, 'invalid_request', 'purpose');
      const noFile = new FormData();
      noFile.append('purpose', 'fine-tune');
      assertError(await call('POST', '/v1/files', { body: noFile }), 400, 'invalid_request', 'file');
      // JSON where the upload takes multipart: 415 (src/api/internal/hygiene.ts).
      assertError(await call('POST', '/v1/files', { body: { purpose: 'fine-tune' } }), 415, 'unsupported_media_type', 'Content-Type');
      assert.deepEqual(readdirSync(ctx.home.cache), []);
    });

    test('pages: every file exactly once, newest first, with has_more/first_id/last_id', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push((await upload(example(`第${i}条`, '好评'), `p${i}.jsonl`)).json.id);
      const seen: string[] = [];
      let cursor: string | undefined;
      for (;;) {
        const page = await call('GET', `/v1/files?limit=2${cursor ? `&after=${cursor}` : ''}`);
        assert.equal(page.json.object, 'list');
        assert.ok(page.json.data.length <= 2);
        assert.equal(page.json.first_id, page.json.data[0]?.id ?? null);
        assert.equal(page.json.last_id, page.json.data.at(-1)?.id ?? null);
        seen.push(...page.json.data.map((f: Json) => f.id));
        if (!page.json.has_more) break;
        cursor = page.json.last_id;
      }
      assert.deepEqual(
        seen.filter((id) => ids.includes(id)),
        [...ids].reverse(),
      );
      assertError(await call('GET', '/v1/files?after=file-nope'), 404, 'not_found', 'after');
    });
  });

  describe('fine-tuning jobs', () => {
    let trainingFile: string;
    const jobs: Json[] = [];

    before(async () => {
      trainingFile = (await upload(example('好吃', '好评') + example('难吃', '差评'), 'train.jsonl')).json.id;
    });

    test('create validates references and returns the job', async () => {
      for (const team of ['a', 'b', 'a']) {
        const r = await call('POST', '/v1/fine_tuning/jobs', {
          body: { model: 'tiny-test', training_file: trainingFile, suffix: 'waimai', metadata: { team }, weitiao: { max_steps: 2 } },
        });
        assert.equal(r.status, 200, r.text);
        assert.equal(r.json.object, 'fine_tuning.job');
        assert.equal(r.json.status, 'validating_files');
        assert.deepEqual(r.json.metadata, { team });
        assert.equal(r.json.weitiao.max_steps, 2);
        jobs.push(r.json);
      }
      const unknownKey = await call('POST', '/v1/fine_tuning/jobs', { body: { model: 'tiny-test', training_file: trainingFile, epochs: 3 } });
      assertError(unknownKey, 400, 'invalid_request', 'epochs');
    });

    test('list pages newest first and filters by metadata[k]=v', async () => {
      const all = await call('GET', '/v1/fine_tuning/jobs?limit=100');
      assert.deepEqual(
        all.json.data.map((j: Json) => j.id),
        jobs.map((j) => j.id).reverse(),
      );
      const teamA = await call('GET', '/v1/fine_tuning/jobs?metadata[team]=a');
      assert.deepEqual(
        teamA.json.data.map((j: Json) => j.id),
        [jobs[2].id, jobs[0].id],
      );
      const none = await call('GET', '/v1/fine_tuning/jobs?metadata[team]=zzz');
      assert.deepEqual(none.json, { object: 'list', data: [], has_more: false, first_id: null, last_id: null });

      const first = await call('GET', '/v1/fine_tuning/jobs?limit=1');
      assert.equal(first.json.has_more, true);
      const second = await call('GET', `/v1/fine_tuning/jobs?limit=1&after=${first.json.last_id}`);
      assert.equal(second.json.data[0].id, jobs[1].id);
    });

    test('cancel ends the job; the events page and the live stream agree', async () => {
      const job = jobs[0];
      const cancelled = await call('POST', `/v1/fine_tuning/jobs/${job.id}/cancel`);
      assert.equal(cancelled.json.status, 'cancelled');
      assertError(await call('POST', `/v1/fine_tuning/jobs/${job.id}/cancel`), 409, 'conflict', 'fine_tuning_job_id');
      assertError(await call('POST', `/v1/fine_tuning/jobs/${job.id}/resume`), 409, 'conflict', 'fine_tuning_job_id');

      const page = await call('GET', `/v1/fine_tuning/jobs/${job.id}/events?limit=100`);
      assert.ok(page.json.data.length >= 2);
      assert.ok(page.json.data.every((e: Json) => e.object === 'fine_tuning.job.event'));

      const res = await app.request(`/v1/fine_tuning/jobs/${job.id}/events?stream=true`, { headers: { authorization: `Bearer ${key}` } });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
      const streamed = parseSse(await res.text());
      // The stream is the page in reading order, and ends by itself because the job is finished.
      assert.deepEqual(
        streamed.map((e) => e.data.id),
        page.json.data.map((e: Json) => e.id).reverse(),
      );
      assert.deepEqual(
        streamed.map((e) => e.id),
        streamed.map((e) => e.data.id),
      );
      // Resuming after an event (Last-Event-ID) sends only what follows it.
      const resumed = await app.request(`/v1/fine_tuning/jobs/${job.id}/events?stream=true`, {
        headers: { authorization: `Bearer ${key}`, 'last-event-id': streamed[0].data.id },
      });
      assert.deepEqual(
        parseSse(await resumed.text()).map((e) => e.data.id),
        streamed.slice(1).map((e) => e.data.id),
      );
    });

    test('a live stream follows a job until it ends', async () => {
      const job = jobs[1];
      const res = await app.request(`/v1/fine_tuning/jobs/${job.id}/events?stream=true`, { headers: { authorization: `Bearer ${key}` } });
      const text = res.text();
      await new Promise((r) => setTimeout(r, 400)); // the follower is now polling a live job
      await call('POST', `/v1/fine_tuning/jobs/${job.id}/cancel`);
      const events = parseSse(await text);
      assert.match(events.at(-1)!.data.message, /cancelled/);
      assertError(await call('GET', `/v1/fine_tuning/jobs/${job.id}/events?stream=true&after=ftevent-nope`), 404, 'not_found', 'after');
    });

    test('pause holds a queued job; resume queues it again', async () => {
      const job = jobs[2];
      ctx.db.prepare("UPDATE jobs SET status = 'queued' WHERE id = ?").run(job.id); // what the worker's validation would do
      const paused = await call('POST', `/v1/fine_tuning/jobs/${job.id}/pause`);
      assert.equal(paused.json.status, 'paused');
      const resumed = await call('POST', `/v1/fine_tuning/jobs/${job.id}/resume`);
      assert.equal(resumed.json.status, 'queued');
      const checkpoints = await call('GET', `/v1/fine_tuning/jobs/${job.id}/checkpoints`);
      assert.deepEqual(checkpoints.json, { object: 'list', data: [], has_more: false, first_id: null, last_id: null });
      await call('POST', `/v1/fine_tuning/jobs/${job.id}/cancel`);
    });
  });

  describe('models', () => {
    test("ids with '/' and ':' work, encoded or not; base models cannot be deleted over HTTP", async () => {
      const baseDir = path.join(ctx.home.models, 'Org', 'Base-1.5B');
      mkdirSync(baseDir, { recursive: true });
      registerModel(ctx, { id: 'Org/Base-1.5B', kind: 'base', path: baseDir, source: 'local' });
      const adapter = path.join(ctx.home.jobs, 'ftjob-x', 'model');
      mkdirSync(adapter, { recursive: true });
      registerModel(ctx, { id: 'ft:Org/Base-1.5B:waimai:abcd1234', kind: 'fine-tuned', path: adapter, base_model: 'Org/Base-1.5B', source: 'training' });

      const list = await call('GET', '/v1/models');
      assert.equal(list.json.object, 'list');
      assert.ok(list.json.data.some((m: Json) => m.id === 'Org/Base-1.5B'));

      for (const url of ['/v1/models/Org/Base-1.5B', `/v1/models/${encodeURIComponent('Org/Base-1.5B')}`]) {
        const r = await call('GET', url);
        assert.equal(r.status, 200, url);
        assert.equal(r.json.id, 'Org/Base-1.5B');
        assert.equal(r.json.object, 'model');
      }
      const ft = await call('GET', `/v1/models/${encodeURIComponent('ft:Org/Base-1.5B:waimai:abcd1234')}`);
      assert.equal(ft.json.id, 'ft:Org/Base-1.5B:waimai:abcd1234');

      assertError(await call('DELETE', '/v1/models/Org/Base-1.5B'), 403, 'permission_denied', 'model');
      const del = await call('DELETE', '/v1/models/ft:Org/Base-1.5B:waimai:abcd1234');
      assert.deepEqual(del.json, { id: 'ft:Org/Base-1.5B:waimai:abcd1234', object: 'model', deleted: true });
      assertError(await call('GET', '/v1/models/ft:Org/Base-1.5B:waimai:abcd1234'), 404, 'not_found', 'model');
    });
  });

  describe('chat', () => {
    test('errors before the stream opens get a real status; one after it arrives as an error event', async () => {
      const messages = [{ role: 'user', content: '好吃吗' }];
      assertError(await call('POST', '/v1/chat/completions', { body: { model: 'nope', messages, stream: true } }), 404, 'not_found', 'model');
      assertError(await call('POST', '/v1/chat/completions', { body: { model: 'tiny-test', messages: [], stream: true } }), 400, 'invalid_request', 'messages');
      // tiny-test is a directory without weights: the engine starts, then fails, after the headers went out.
      const res = await app.request('/v1/chat/completions', {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-test', messages, stream: true, max_tokens: 2 }),
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
      const events = parseSse(await res.text());
      assert.equal(events[0].data.object, 'chat.completion.chunk');
      const last = events.at(-1)!.data;
      assert.deepEqual(Object.keys(last), ['error']);
      assert.ok(last.error.code && last.error.message && last.error.type);
    });
  });

  describe('startServer', () => {
    test('--no-auth warns loudly, serves over real HTTP, a taken port is a clear error, close is idempotent', async () => {
      const lines: string[] = [];
      const server = await startServer(ctx, { port: 0, auth: false, worker: false, handleSignals: false, log: (l) => lines.push(l) });
      try {
        assert.match(lines.join('\n'), /WARNING: authentication is OFF/);
        assert.match(lines.join('\n'), /身份验证/);
        assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
        const res = await fetch(`${server.url}/v1/models`);
        assert.equal(res.status, 200);
        await assert.rejects(
          startServer(ctx, { port: server.port, auth: true, worker: false, handleSignals: false, log: () => {} }),
          (e: unknown) => e instanceof WeitiaoError && e.code === 'conflict' && e.param === 'port',
        );
      } finally {
        await server.close();
        await server.close();
      }
      await assert.rejects(fetch(`${server.url}/health`));

      // `extend` mounts more routes (the web console's) behind the same key check.
      const quiet: string[] = [];
      const secured = await startServer(ctx, {
        port: 0,
        auth: true,
        worker: false,
        handleSignals: false,
        log: (l) => quiet.push(l),
        extend: (a) => a.get('/v1/extra', (c) => c.json({ ok: true })),
      });
      try {
        assert.equal((await fetch(`${secured.url}/v1/extra`)).status, 401);
        assert.deepEqual(await (await fetch(`${secured.url}/v1/extra`, { headers: { authorization: `Bearer ${key}` } })).json(), { ok: true });
      } finally {
        await secured.close();
      }
      assert.doesNotMatch(quiet.join('\n'), /WARNING/);
    });
  });

  describe('OpenAPI', () => {
    test('/openapi.json documents every route, with request schemas and resolvable refs', async () => {
      const r = await call('GET', '/openapi.json', { auth: null });
      assert.equal(r.status, 200);
      const doc = r.json;
      assert.equal(doc.openapi, '3.1.0');

      const documented = new Set<string>();
      for (const [p, ops] of Object.entries(doc.paths as Json)) for (const m of Object.keys(ops as Json)) documented.add(`${m.toUpperCase()} ${p}`);
      // A set: per-route middleware (the limits in src/api/internal/limits.ts) registers the same method and path again.
      const routes = [
        ...new Set(app.routes.filter((rt) => rt.method !== 'ALL').map((rt) => `${rt.method} ${rt.path.replace(/:(\w+)(\{[^}]*\})?/g, '{$1}')}`)),
      ];
      assert.equal(routes.length, documented.size);
      for (const rt of routes) assert.ok(documented.has(rt), `${rt} is documented`);

      const create = doc.paths['/v1/fine_tuning/jobs'].post;
      const schemaRef = create.requestBody.content['application/json'].schema.$ref as string;
      const schema = doc.components.schemas[schemaRef.split('/').pop()!];
      assert.ok(schema.required.includes('model') && schema.required.includes('training_file'));
      assert.ok(schema.properties.weitiao, 'the extension object is documented');
      assert.equal(schema.additionalProperties, false, 'unknown keys are refused, and documented so');

      const listParams = doc.paths['/v1/fine_tuning/jobs'].get.parameters as Json[];
      assert.equal(listParams.find((p) => p.name === 'metadata')?.style, 'deepObject');
      assert.equal(listParams.find((p) => p.name === 'limit')?.schema.type, 'integer');
      const events = doc.paths['/v1/fine_tuning/jobs/{fine_tuning_job_id}/events'].get;
      assert.ok(events.responses[200].content['text/event-stream']);
      assert.deepEqual(doc.paths['/v1/models/{model}'].get.parameters[0].name, 'model');
      assert.deepEqual(doc.paths['/health'].get.security, []);
      assert.ok(doc.paths['/v1/files'].post.requestBody.content['multipart/form-data']);
      // The console's routes, from their zod schemas like the rest.
      for (const p of ['/v1/weitiao/datasets/preview', '/v1/weitiao/datasets/validate', '/v1/weitiao/datasets/prepare', '/v1/weitiao/estimate', '/v1/weitiao/evaluations']) {
        assert.ok(doc.paths[p]?.post, `${p} is documented`);
      }
      const estimateRef = doc.paths['/v1/weitiao/estimate'].post.requestBody.content['application/json'].schema.$ref as string;
      const estimateBody = doc.components.schemas[estimateRef.split('/').pop()!];
      assert.deepEqual([...estimateBody.required].sort(), ['model', 'training_file']);
      assert.deepEqual(estimateBody.properties.method.enum, ['lora', 'qlora']);
      assert.equal(doc.paths['/v1/weitiao/datasets/{file_id}/stats'].get.parameters[0].name, 'file_id');
      // Job creation documents the dry run's answer too, and the training controls in `weitiao`.
      const created = doc.paths['/v1/fine_tuning/jobs'].post.responses[200].content['application/json'].schema.$ref as string;
      assert.ok(JSON.stringify(doc.components.schemas[created.split('/').pop()!]).includes('JobPlan') || JSON.stringify(doc.components.schemas).includes('weitiao.job_plan'));
      const settings = schema.properties.weitiao;
      const settingsSchema = settings.$ref ? doc.components.schemas[settings.$ref.split('/').pop()] : settings;
      for (const k of ['gradient_accumulation_steps', 'gradient_checkpointing', 'early_stopping_patience', 'bf16', 'nproc', 'dry_run']) {
        assert.ok(settingsSchema.properties[k], `weitiao.${k} is documented`);
      }

      const refs = JSON.stringify(doc).match(/"\$ref":"([^"]+)"/g) ?? [];
      assert.ok(refs.length > 10);
      for (const ref of refs) {
        const name = ref.slice('"$ref":"#/components/schemas/'.length, -1);
        assert.ok(doc.components.schemas[name], `${ref} resolves`);
      }
    });
  });
});

/** `data:` events of an SSE body, JSON-decoded, with their ids. */
function parseSse(text: string): { id?: string; data: Json }[] {
  return text
    .split('\n\n')
    .filter((block) => block.includes('data:'))
    .map((block) => {
      const lines = block.split('\n');
      const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      const id = lines.find((l) => l.startsWith('id:'))?.slice(3).trim();
      return { id, data: JSON.parse(data) as Json };
    });
}
