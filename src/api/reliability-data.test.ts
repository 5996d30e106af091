/**
 * Reliability, part A (issue 13): uploads that cannot hurt the server, limits, HTTP hygiene. Every
 * refused request is checked for its status, for a message that names the file:line: field or the
 * parameter, and for leaving the store as it was (files table and home directory unchanged).
 * In-process (`app.request`) except where a real server is the point (the openai SDK, the console's
 * headers); the cancel case runs the real worker against a file that never ends (a FIFO).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import iconv from 'iconv-lite';
import OpenAI, { toFile } from 'openai';
import { openContext, type Context } from '../context.js';
import { runValidationTask, validateChatFile, type ValidationReport } from '../data/index.js';
import { DuplicateFinder } from '../data/internal/check.js';
import { createFile, fileContentPath } from '../files/index.js';
import { cancelJob, createJob, Worker, type FineTuningJobEvent } from '../jobs/index.js';
import { createKey } from '../keys/index.js';
import { registerModel } from '../models/index.js';
import { createApp, startServer } from './index.js';
import { CONTENT_SECURITY_POLICY } from './internal/hygiene.js';
import { DEFAULT_LIMITS, limitsFromEnv, type Limits } from './internal/limits.js';

type Json = Record<string, any>;
type App = ReturnType<typeof createApp>;

const chat = (user: string, answer: string) =>
  JSON.stringify({ messages: [{ role: 'system', content: '你是评论专家。' }, { role: 'user', content: user }, { role: 'assistant', content: answer }] });
const CHAT_TEXT = [chat('送餐很快，味道不错', '好评'), chat('等了两个小时，菜都凉了', '差评'), chat('𠀀字也能存', '好评')].join('\n') + '\n';
const pair = (prompt: string) =>
  JSON.stringify({
    input: { messages: [{ role: 'user', content: prompt }] },
    preferred_output: [{ role: 'assistant', content: '好评' }],
    non_preferred_output: [{ role: 'assistant', content: '差评' }],
  });

let tmp: string;
let ctx: Context;
let key: string;
let otherKey: string;
let app: App;

before(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-reliability-a-'));
  ctx = openContext({ home: path.join(tmp, 'home') });
  key = createKey(ctx, { name: 'a' }).key;
  otherKey = createKey(ctx, { name: 'b' }).key;
  const modelDir = path.join(ctx.home.models, 'tiny-fake');
  mkdirSync(modelDir, { recursive: true });
  writeFileSync(path.join(modelDir, 'config.json'), '{}');
  registerModel(ctx, { id: 'tiny-fake', kind: 'base', path: modelDir, source: 'local' });
  app = createApp(ctx, { auth: true, maxUploadBytes: 16 * 1024 * 1024, limits: { requests_per_second: 0 } });
});
after(() => {
  ctx.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function call(target: App, method: string, url: string, init: { body?: RequestInit['body']; json?: unknown; headers?: Record<string, string>; auth?: string } = {}) {
  const headers: Record<string, string> = { authorization: `Bearer ${init.auth ?? key}`, ...init.headers };
  let body = init.body;
  if (init.json !== undefined) {
    body = JSON.stringify(init.json);
    headers['content-type'] ??= 'application/json';
  }
  const res = await target.request(url, { method, headers, body });
  const text = await res.text();
  let json: Json = {};
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, headers: res.headers, text, json };
}

function uploadForm(content: Uint8Array | string, filename: string, purpose = 'fine-tune', purposeFirst = false): FormData {
  const form = new FormData();
  if (purposeFirst) form.append('purpose', purpose);
  form.append('file', new Blob([content]), filename);
  if (!purposeFirst) form.append('purpose', purpose);
  return form;
}
const upload = (content: Uint8Array | string, filename: string, purpose?: string, purposeFirst?: boolean, target = app, auth?: string) =>
  call(target, 'POST', '/v1/files', { body: uploadForm(content, filename, purpose, purposeFirst), auth });

/** Everything a refused request must leave alone: the files table and every path under the home. */
function snapshot(): string {
  const rows = ctx.db.prepare('SELECT id, bytes, path FROM files ORDER BY id').all();
  const walk = (dir: string): string[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? [`${e.name}/`, ...walk(path.join(dir, e.name)).map((p) => `${e.name}/${p}`)] : [e.name]));
  const jobs = ctx.db.prepare('SELECT id, status FROM jobs ORDER BY id').all();
  return JSON.stringify({ rows, jobs, tree: walk(ctx.home.root).filter((p) => !p.startsWith('weitiao.sqlite')) });
}

function assertRefused(r: { status: number; json: Json }, status: number, code: string, mentions: (string | RegExp)[], param?: string | null) {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.deepEqual(Object.keys(r.json.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(r.json.error.code, code);
  if (param !== undefined) assert.equal(r.json.error.param, param);
  for (const m of mentions) assert.match(r.json.error.message, typeof m === 'string' ? new RegExp(m.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : m);
  assert.doesNotMatch(r.json.error.message, new RegExp(tmp.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'no server path in the message');
}

async function storedText(id: string): Promise<Buffer> {
  const r = await app.request(`/v1/files/${id}/content`, { headers: { authorization: `Bearer ${key}` } });
  assert.equal(r.status, 200);
  return Buffer.from(await r.arrayBuffer());
}

// ------------------------------------------------------------------------------------------ encodings

describe('uploads are normalised to UTF-8 once, at upload', () => {
  const cases: [string, (text: string) => Buffer][] = [
    ['GBK', (t) => iconv.encode(t.replace('𠀀字也能存', '字也能存'), 'gbk')],
    ['GB18030 (a character outside GBK)', (t) => iconv.encode(t, 'gb18030')],
    ['UTF-16 LE with BOM', (t) => Buffer.concat([Buffer.from([0xff, 0xfe]), iconv.encode(t, 'utf16le')])],
    ['UTF-16 BE with BOM', (t) => Buffer.concat([Buffer.from([0xfe, 0xff]), iconv.encode(t, 'utf16-be')])],
    ['UTF-8 with BOM', (t) => Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(t)])],
  ];
  for (const [name, encode] of cases) {
    test(`${name} chat JSONL is stored as UTF-8 without BOM; bytes counts the stored file`, async () => {
      const text = name === 'GBK' ? CHAT_TEXT.replace('𠀀字也能存', '字也能存') : CHAT_TEXT;
      const r = await upload(encode(text), '训练.jsonl');
      assert.equal(r.status, 200, r.text);
      const stored = await storedText(r.json.id);
      assert.equal(stored.toString('utf8'), text);
      assert.equal(r.json.bytes, Buffer.byteLength(text));
      const report = await validateChatFile(fileContentPath(ctx, r.json.id));
      assert.equal(report.encoding, 'utf8');
      assert.equal(report.valid_examples, 3);
    });
  }

  test('plain UTF-8 is stored byte for byte', async () => {
    const r = await upload(CHAT_TEXT, 'plain.jsonl');
    assert.equal(r.status, 200, r.text);
    assert.ok((await storedText(r.json.id)).equals(Buffer.from(CHAT_TEXT)));
  });

  test('a GBK CSV for the console to prepare is accepted and normalised (tables are checked for syntax only)', async () => {
    const csv = 'label,review\n1,很好吃\n0,太慢了\n';
    const r = await upload(iconv.encode(csv, 'gbk'), 'waimai.csv');
    assert.equal(r.status, 200, r.text);
    assert.equal((await storedText(r.json.id)).toString('utf8'), csv);
  });

  test('files the service stores for the CLI (createFile, no check) are normalised too', async () => {
    const source = path.join(tmp, 'utf16.jsonl');
    writeFileSync(source, Buffer.concat([Buffer.from([0xff, 0xfe]), iconv.encode(CHAT_TEXT, 'utf16le')]));
    const file = await createFile(ctx, { source, filename: 'utf16.jsonl', purpose: 'fine-tune' });
    assert.equal(file.bytes, Buffer.byteLength(CHAT_TEXT));
  });
});

// ------------------------------------------------------------------------------------------ bad uploads

describe('bad uploads are refused with file:line: field, and nothing is stored', () => {
  test('a truncated JSON line: 400 invalid_file naming train.jsonl:2', async () => {
    const before = snapshot();
    const text = chat('好吃', '好评') + '\n' + chat('不好吃', '差评').slice(0, 40) + '\n' + chat('一般', '差评') + '\n';
    const r = await upload(text, 'train.jsonl');
    assertRefused(r, 400, 'invalid_file', ['train.jsonl:2', 'not valid JSON', '[data_type]']);
    assert.equal(snapshot(), before);
  });

  test('the same truncated line in a GBK file is found at the same line after normalisation', async () => {
    const before = snapshot();
    const text = chat('好吃', '好评') + '\n' + chat('好吃吗', '好评') + '\n' + chat('不好吃', '差评').slice(0, 30) + '\n';
    const r = await upload(iconv.encode(text, 'gbk'), 'gbk.jsonl');
    assertRefused(r, 400, 'invalid_file', ['gbk.jsonl:3']);
    assert.equal(snapshot(), before);
  });

  test('an unrecognised role: the field is named (messages[0].role) and is the param', async () => {
    const before = snapshot();
    const bad = JSON.stringify({ messages: [{ role: 'bot', content: '你好' }, { role: 'assistant', content: '好评' }] });
    const r = await upload(chat('好吃', '好评') + '\n' + bad + '\n', 'roles.jsonl', 'fine-tune', true);
    assertRefused(r, 400, 'invalid_file', ['roles.jsonl:2: messages[0].role', "unrecognized role 'bot'"], 'messages[0].role');
    assert.equal(snapshot(), before);
  });

  test('an empty file: 400 empty_file naming the file, not a server path', async () => {
    const before = snapshot();
    const r = await upload('', 'empty.jsonl');
    assertRefused(r, 400, 'invalid_file', ['empty.jsonl', '[empty_file]']);
    assert.equal(snapshot(), before);
  });

  test('a line longer than 8 Mi characters is reported at its line without being read whole', async () => {
    const before = snapshot();
    const huge = JSON.stringify({ messages: [{ role: 'user', content: 'a'.repeat(8.5 * 1024 * 1024) }, { role: 'assistant', content: '好评' }] });
    const r = await upload(chat('好吃', '好评') + '\n' + huge + '\n', 'huge.jsonl');
    assertRefused(r, 400, 'invalid_file', ['huge.jsonl:2', '[line_too_long]']);
    assert.equal(snapshot(), before);
  });

  test('many bad lines: the first is named and all are counted', async () => {
    const before = snapshot();
    const r = await upload(Array.from({ length: 1500 }, (_, i) => `{"broken": ${i}`).join('\n') + '\n', 'many.jsonl');
    assertRefused(r, 400, 'invalid_file', ['many.jsonl:1', 'and 1499 more error']);
    assert.equal(snapshot(), before);
  });

  test('a preference (DPO) file is checked as one: the bad output is named', async () => {
    const before = snapshot();
    const bad = JSON.stringify({ input: { messages: [{ role: 'user', content: '好吃' }] }, preferred_output: [], non_preferred_output: [{ role: 'assistant', content: '差评' }] });
    const r = await upload(pair('好吃') + '\n' + bad + '\n', 'dpo.jsonl');
    assertRefused(r, 400, 'invalid_file', ['dpo.jsonl:2: preferred_output', '[missing_output]'], 'preferred_output');
    assert.equal(snapshot(), before);
  });

  test('a CSV with a row short of fields: its line is named', async () => {
    const before = snapshot();
    const r = await upload('label,review\n1,好吃\n0\n', 'short.csv');
    assertRefused(r, 400, 'invalid_file', ['short.csv:3', '[field_count]']);
    assert.equal(snapshot(), before);
  });

  test("purpose 'fine-tune-results' (sent after the file) is the server's: 400 naming purpose", async () => {
    const before = snapshot();
    const r = await upload(CHAT_TEXT, 'x.jsonl', 'fine-tune-results');
    assertRefused(r, 400, 'invalid_request', ['fine-tune-results'], 'purpose');
    assert.equal(snapshot(), before);
  });

  test("purpose 'fine-tune-results' sent before the file: 400 naming purpose, the body is drained", async () => {
    const before = snapshot();
    const r = await upload(CHAT_TEXT, 'x.jsonl', 'fine-tune-results', true);
    assertRefused(r, 400, 'invalid_request', ["'fine-tune-results' is for files the server writes"], 'purpose');
    assert.equal(snapshot(), before);
  });

  test('an unknown purpose: 400 naming purpose', async () => {
    const before = snapshot();
    assertRefused(await upload(CHAT_TEXT, 'x.jsonl', 'training'), 400, 'invalid_request', ["'training'"], 'purpose');
    assert.equal(snapshot(), before);
  });
});

// ------------------------------------------------------------------------------------------ content types

describe('JSON endpoints take application/json only', () => {
  test('a cross-site text/plain form post to create a job: 415 naming Content-Type; no job', async () => {
    const before = snapshot();
    const r = await call(app, 'POST', '/v1/fine_tuning/jobs', {
      body: JSON.stringify({ model: 'tiny-fake', training_file: 'file-x' }),
      headers: { 'content-type': 'text/plain;charset=UTF-8' },
    });
    assertRefused(r, 415, 'unsupported_media_type', ['application/json', 'text/plain'], 'Content-Type');
    assert.equal(snapshot(), before);
  });

  test('an urlencoded chat request: 415', async () => {
    const r = await call(app, 'POST', '/v1/chat/completions', { body: 'model=tiny-fake', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assertRefused(r, 415, 'unsupported_media_type', ['application/x-www-form-urlencoded'], 'Content-Type');
  });

  test('a multipart post to a JSON route: 415', async () => {
    const r = await call(app, 'POST', '/v1/fine_tuning/jobs', { body: uploadForm('x', 'x.jsonl') });
    assertRefused(r, 415, 'unsupported_media_type', ['multipart/form-data'], 'Content-Type');
  });

  test('an upload as text/plain: 415, nothing stored', async () => {
    const before = snapshot();
    const r = await call(app, 'POST', '/v1/files', { body: CHAT_TEXT, headers: { 'content-type': 'text/plain' } });
    assertRefused(r, 415, 'unsupported_media_type', ['multipart/form-data'], 'Content-Type');
    assert.equal(snapshot(), before);
  });

  test('application/json with a charset passes on to the route (here: 404 for the unknown file)', async () => {
    const r = await call(app, 'POST', '/v1/fine_tuning/jobs', {
      json: { model: 'tiny-fake', training_file: 'file-nope' },
      headers: { 'content-type': 'application/json; charset=utf-8' },
    });
    assertRefused(r, 404, 'not_found', ['file-nope'], 'training_file');
  });

  test('a body-less POST (cancel, as the SDK sends it) needs no Content-Type', async () => {
    const r = await call(app, 'POST', '/v1/fine_tuning/jobs/ftjob-nope/cancel');
    assertRefused(r, 404, 'not_found', ['ftjob-nope']);
  });

  test("a browser's cross-site multipart upload is refused (Sec-Fetch-Site), nothing stored", async () => {
    const before = snapshot();
    const r = await call(app, 'POST', '/v1/files', { body: uploadForm(CHAT_TEXT, 'x.jsonl'), headers: { 'sec-fetch-site': 'cross-site' } });
    assertRefused(r, 403, 'permission_denied', ['cross-site'], 'file');
    assert.equal(snapshot(), before);
  });
});

// ------------------------------------------------------------------------------------------ headers

describe('security headers', () => {
  const assertHeaders = (h: Headers) => {
    assert.equal(h.get('content-security-policy'), CONTENT_SECURITY_POLICY);
    assert.match(h.get('content-security-policy')!, /frame-ancestors 'none'/);
    assert.equal(h.get('x-content-type-options'), 'nosniff');
    assert.equal(h.get('referrer-policy'), 'no-referrer');
  };
  test('on API answers, public routes and errors', async () => {
    assertHeaders((await call(app, 'GET', '/health')).headers);
    assertHeaders((await call(app, 'GET', '/v1/files')).headers);
    assertHeaders((await call(app, 'GET', '/v1/nowhere')).headers);
    assertHeaders((await call(app, 'GET', '/v1/files', { auth: 'sk-wrong' })).headers);
  });
});

// ------------------------------------------------------------------------------------------ limits

describe('limits answer 429 in OpenAI shape with retry-after', () => {
  const limited = (limits: Partial<Limits>) => createApp(ctx, { auth: true, maxUploadBytes: 1 << 20, limits: { ...limits } });
  const assert429 = (r: { status: number; headers: Headers; json: Json }, mentions: (string | RegExp)[], param: string | null = null) => {
    assertRefused(r, 429, 'rate_limited', mentions, param);
    assert.equal(r.json.error.type, 'rate_limit_error');
    assert.ok(Number(r.headers.get('retry-after')) >= 1, `retry-after: ${r.headers.get('retry-after')}`);
  };

  test('request rate: a key past its burst gets 429; another key does not', async () => {
    const a = limited({ requests_per_second: 0.01, request_burst: 2 });
    assert.equal((await call(a, 'GET', '/v1/files')).status, 200);
    assert.equal((await call(a, 'GET', '/v1/files')).status, 200);
    assert429(await call(a, 'GET', '/v1/files'), ['too many requests', 'per second']);
    assert.equal((await call(a, 'GET', '/v1/files', { auth: otherKey })).status, 200);
  });

  const chatBody = { model: 'tiny-fake-missing', messages: [{ role: 'user', content: '你好' }] };
  const chatCall = async (target: App, auth = key): Promise<Response> =>
    target.request('/v1/chat/completions', { method: 'POST', headers: { authorization: `Bearer ${auth}`, 'content-type': 'application/json' }, body: JSON.stringify(chatBody) });
  const asJson = async (res: Response) => ({ status: res.status, headers: res.headers, json: JSON.parse(await res.text()) as Json });

  test('chat: a slot is held until the answer has been read; past concurrency + queue it is 429 at once', async () => {
    const a = limited({ chat_concurrent: 1, chat_concurrent_per_key: 1, chat_queue: 0 });
    const first = await chatCall(a); // answered (404 for the model) but its body not yet read: the slot is held
    assert429(await asJson(await chatCall(a)), ['too many chat completions at once']);
    await first.text();
    assert.equal((await chatCall(a)).status, 404, 'free again once the first answer was read');
  });

  test('chat: a bounded line waits for a slot in order; the one past the line is refused', async () => {
    const a = limited({ chat_concurrent: 1, chat_concurrent_per_key: 1, chat_queue: 1 });
    const first = await chatCall(a);
    const order: string[] = [];
    const second = chatCall(a).then((r) => (order.push('second answered'), r));
    await new Promise((r) => setImmediate(r));
    assert429(await asJson(await chatCall(a)), ['1 waiting']);
    order.push('first read');
    await first.text();
    assert.equal((await second).status, 404);
    assert.deepEqual(order, ['first read', 'second answered']);
  });

  test('chat: the per-key limit leaves other keys their share', async () => {
    const a = limited({ chat_concurrent: 4, chat_concurrent_per_key: 1, chat_queue: 0 });
    const first = await chatCall(a);
    assert429(await asJson(await chatCall(a)), ['1 for this key']);
    const other = await chatCall(a, otherKey);
    assert.equal(other.status, 404);
    await Promise.all([first.text(), other.text()]);
  });

  test('unfinished jobs per project: past the limit 429 and no job is created; a cancel frees a place', async () => {
    const a = limited({ queued_jobs_per_project: 1 });
    const file = (await upload(CHAT_TEXT, 'jobs.jsonl', 'fine-tune', false, a)).json.id;
    const create = () => call(a, 'POST', '/v1/fine_tuning/jobs', { json: { model: 'tiny-fake', training_file: file } });
    const job = await create();
    assert.equal(job.status, 200, job.text);
    const before = snapshot();
    assert429(await create(), ['1 unfinished fine-tuning jobs', 'limit is 1']);
    assert.equal(snapshot(), before);
    assert.equal((await call(a, 'POST', `/v1/fine_tuning/jobs/${job.json.id}/cancel`)).status, 200);
    const next = await create();
    assert.equal(next.status, 200, next.text);
    cancelJob(ctx, next.json.id);
  });

  test('upload bytes per day: the upload that does not fit is 429 naming file; nothing stored', async () => {
    const a = limited({ upload_bytes_per_day: 3000 });
    const lines = CHAT_TEXT.repeat(6); // ~2 KB
    assert.equal((await upload(lines, 'day1.jsonl', 'fine-tune', false, a)).status, 200);
    const before = snapshot();
    assert429(await upload(lines, 'day2.jsonl', 'fine-tune', false, a), ['daily upload limit', 'of 3000 bytes'], 'file');
    assert.equal(snapshot(), before);
    assert.equal((await upload(lines, 'day2.jsonl', 'fine-tune', false, a, otherKey)).status, 200, "another key's quota is its own");
  });

  test('limits come from the environment; a bad value names its variable', () => {
    const limits = limitsFromEnv({ WEITIAO_RATE_LIMIT_RPS: '5', WEITIAO_CHAT_QUEUE: '0' });
    assert.equal(limits.requests_per_second, 5);
    assert.equal(limits.chat_queue, 0);
    assert.equal(limits.upload_bytes_per_day, DEFAULT_LIMITS.upload_bytes_per_day);
    assert.throws(() => limitsFromEnv({ WEITIAO_UPLOAD_BYTES_PER_DAY: 'lots' }), (err: any) => err.code === 'invalid_request' && err.param === 'WEITIAO_UPLOAD_BYTES_PER_DAY');
  });
});

// ------------------------------------------------------------------------------------------ streaming validation

describe('validation streams, runs off the event loop and stops when told', () => {
  let big: string;
  before(() => {
    // ~1.5 MB: over the in-process limit, so it goes to a worker thread; a few bad lines and duplicates.
    big = path.join(tmp, 'big.jsonl');
    const lines: string[] = [];
    for (let i = 0, size = 0; size < 1.5 * 1024 * 1024; i++) {
      lines.push(i % 997 === 5 ? '{"messages": [' : chat(`第${i % 5000}条评论，味道还可以`, i % 2 ? '好评' : '差评'));
      size += lines[i].length + 1;
    }
    writeFileSync(big, lines.join('\n') + '\n');
  });

  test('a thread gives the same report as in-process validation', async () => {
    const inThread = await runValidationTask({ kind: 'chat', file: big, options: {}, count_tokens: false }, { inProcessMaxBytes: 0 });
    const inProcess = await runValidationTask({ kind: 'chat', file: big, options: {}, count_tokens: false }, { inProcessMaxBytes: Infinity });
    assert.deepEqual(inThread, inProcess);
    assert.ok(inThread.error_count! > 0 && inThread.warning_count! > 0);
    assert.equal(inThread.errors[0].line, 6);
  });

  test('token counts from a thread go through the parent, in batches, and flag over-long examples at their line', async () => {
    const batches: number[] = [];
    const countTokens = async (examples: { messages: { content: string }[] }[]) => {
      batches.push(examples.length);
      const counts = examples.map((e) => e.messages.reduce((n, m) => n + [...m.content].length, 0));
      return { counts, trained_counts: counts.map(() => 1), model_max_length: 20 };
    };
    const report = await runValidationTask({ kind: 'chat', file: big, options: {}, count_tokens: true }, { inProcessMaxBytes: 0, countTokens });
    assert.equal(batches.reduce((a, b) => a + b, 0), report.valid_examples, 'every valid example counted once');
    const long = report.errors.find((e) => e.code === 'too_many_tokens');
    assert.ok(long && long.line! >= 1 && long.field === 'messages', JSON.stringify(long));
    assert.equal(report.max_length, 20);
  });

  test('an abort stops a threaded validation: it rejects with cancelled', async () => {
    const stop = new AbortController();
    const running = runValidationTask({ kind: 'chat', file: big, options: {}, count_tokens: false }, { signal: stop.signal, inProcessMaxBytes: 0 });
    stop.abort();
    await assert.rejects(running, (err: any) => err.code === 'cancelled' && err.param === 'file');
  });

  test('reports stay bounded: 1000 issues listed per severity, all counted', async () => {
    const file = path.join(tmp, 'bad-many.jsonl');
    writeFileSync(file, Array.from({ length: 2500 }, () => '[1]').join('\n') + '\n');
    const report: ValidationReport = await validateChatFile(file);
    assert.equal(report.errors.length, 1000);
    assert.equal(report.error_count, 2500);
    assert.equal(report.errors[999].line, 1000);
  });

  test('duplicate checks remember a bounded number of examples and say so once', () => {
    const finder = new DuplicateFinder('warning', 2);
    const example = (n: number) => ({ messages: [{ role: 'user' as const, content: `第${n}条` }, { role: 'assistant' as const, content: '好评' }] });
    assert.equal(finder.check(example(1), 1), null);
    assert.equal(finder.check(example(2), 2), null);
    assert.equal(finder.check(example(3), 3)?.code, 'duplicate_check_limited');
    assert.equal(finder.check(example(4), 4), null);
    assert.equal(finder.check(example(1), 5)?.code, 'exact_duplicate', 'the remembered ones are still found');
  });

  test('cancelling a job during validating_files stops it; the worker goes on to the next job', async () => {
    // Job A's training file is a FIFO nobody writes to: its validation would never end by itself.
    const fileA = (await upload(CHAT_TEXT, 'never-ends.jsonl')).json.id;
    const fifo = fileContentPath(ctx, fileA);
    rmSync(fifo);
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
    const fileB = (await upload(pair('好吃') + '\n' + pair('很快') + '\n', 'pairs.jsonl')).json.id;
    const jobA = createJob(ctx, { model: 'tiny-fake', training_file: fileA });
    const jobB = createJob(ctx, { model: 'tiny-fake', training_file: fileB, method: { type: 'dpo' } });

    const worker = new Worker(ctx, { pollMs: 50 });
    const seen: string[] = [];
    worker.on('event', (jobId: string, e: FineTuningJobEvent) => {
      const who = jobId === jobA.id ? 'A' : 'B';
      if (/^Validating/.test(e.message)) {
        seen.push(`${who} validating`);
        if (who === 'A') cancelJob(ctx, jobA.id);
      }
      if (/^Files validated/.test(e.message)) seen.push(`${who} validated`);
      if (/queued/.test(e.message) && who === 'B') void worker.stop(); // B is not to train: this test is about validation
    });
    worker.on('status', (job) => seen.push(`${job.id === jobA.id ? 'A' : 'B'} ${job.status}`));
    try {
      assert.equal(await worker.runNext(), jobA.id);
      assert.equal(await worker.runNext(), jobB.id);
    } finally {
      // Let the thread pool's blocked open() of the FIFO go.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        /* nobody was waiting */
      }
    }
    assert.deepEqual(seen, ['A validating', 'A cancelled', 'B validating', 'B validated', 'B queued']);
    assert.ok(statSync(fifo).isFIFO());
  });
});

// ------------------------------------------------------------------------------------------ real server

describe('over a real server', () => {
  test('the openai SDK uploads (GBK normalised), gets BadRequestError with file:line, and RateLimitError on 429', async () => {
    const web = path.join(tmp, 'web');
    mkdirSync(web, { recursive: true });
    writeFileSync(path.join(web, 'index.html'), '<!doctype html><title>weitiao</title>');
    const server = await startServer(ctx, { port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: web });
    try {
      const client = new OpenAI({ apiKey: key, baseURL: `${server.url}/v1`, maxRetries: 0 });
      const text = CHAT_TEXT.replace('𠀀字也能存', '字也能存');
      const file = await client.files.create({ file: await toFile(iconv.encode(text, 'gbk'), '外卖.jsonl'), purpose: 'fine-tune' });
      assert.equal(file.bytes, Buffer.byteLength(text));
      const before = snapshot();
      await assert.rejects(client.files.create({ file: await toFile(Buffer.from('{"messages": [\n'), 'bad.jsonl'), purpose: 'fine-tune' }), (err: any) => {
        assert.equal(err.constructor.name, 'BadRequestError');
        assert.match(err.message, /bad\.jsonl:1/);
        return true;
      });
      assert.equal(snapshot(), before);
      const page = await client.fineTuning.jobs.list();
      assert.ok(Array.isArray(page.data));

      const console_ = await fetch(`${server.url}/`);
      assert.equal(console_.status, 200);
      assert.equal(console_.headers.get('content-security-policy'), CONTENT_SECURITY_POLICY);
      assert.equal(console_.headers.get('x-content-type-options'), 'nosniff');
    } finally {
      await server.close();
    }

    // Limits from the environment, as `weitiao serve` reads them; the SDK raises RateLimitError.
    const saved = { rps: process.env.WEITIAO_RATE_LIMIT_RPS, burst: process.env.WEITIAO_RATE_LIMIT_BURST };
    process.env.WEITIAO_RATE_LIMIT_RPS = '0.01';
    process.env.WEITIAO_RATE_LIMIT_BURST = '1';
    const strict = await startServer(ctx, { port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
    try {
      const client = new OpenAI({ apiKey: key, baseURL: `${strict.url}/v1`, maxRetries: 0 });
      await client.files.list();
      await assert.rejects(client.files.list(), (err: any) => {
        assert.equal(err.constructor.name, 'RateLimitError');
        assert.equal(err.status, 429);
        assert.ok(Number(err.headers.get('retry-after')) >= 1);
        return true;
      });
    } finally {
      await strict.close();
      for (const [k, v] of [['WEITIAO_RATE_LIMIT_RPS', saved.rps], ['WEITIAO_RATE_LIMIT_BURST', saved.burst]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});
