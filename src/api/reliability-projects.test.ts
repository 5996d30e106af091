/**
 * Issue 13, projects and roles: a key of project beta walks every route of /openapi.json with project
 * alpha's object ids (file, job, fine-tuned model, checkpoint, export, deployment, eval, eval run, key) and
 * gets 404 — as for an object that does not exist — while nothing stored changes; alpha's own key sees
 * them. Roles (read-only, member), the audit log, auth off, the CLI, and the migration of a home made
 * before projects. A real server on 127.0.0.1, a real store, a real tiny model.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { after, before, describe, test } from 'node:test';
import type { Context } from '../context.js';
import { openTestContext, testStoreEnv } from '../testing/postgres.js';
import { insertExport } from '../export/internal/repository.js';
import { createKey, verifyKey } from '../keys/index.js';
import { registerModel } from '../models/index.js';
import { createProject, runInScope } from '../projects/index.js';
import { openDatabase, sqliteOnly, type DB } from '../store/index.js';
import { MIGRATIONS } from '../store/migrations.js';
import { createApp, startServer, type RunningServer } from './index.js';
import { createTestModel, REPO_ROOT, writeWaimaiJsonl } from '../testing/waimai.js';

type Json = Record<string, any>;
const MAIN = path.join(REPO_ROOT, 'src', 'cli', 'main.ts');

let dir: string;
let ctx: Context;
let server: RunningServer;
let base: string;
const keys: Record<'operator' | 'alpha' | 'alphaMember' | 'alphaReader' | 'beta', { id: string; key: string }> = {} as never;
/** Alpha's objects, by the path parameter (or body field) that names them. */
const A: Record<string, string> = {};

async function call(key: string | null, method: string, url: string, body?: unknown): Promise<{ status: number; json: Json; text: string }> {
  const headers: Record<string, string> = key ? { authorization: `Bearer ${key}` } : {};
  const init: RequestInit = { method, headers };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    headers['content-type'] = 'application/json';
  }
  const res = await fetch(server.url + url, init);
  const text = await res.text();
  let json: Json = {};
  try {
    json = JSON.parse(text) as Json;
  } catch {
    // downloads are not JSON
  }
  return { status: res.status, json, text };
}

/** Every row a cross-project call could touch (keys without their last-used hint). */
function snapshot(): string {
  const tables = ['files', 'models', 'jobs', 'checkpoints', 'job_events', 'exports', 'deployments', 'evals', 'eval_runs', 'eval_output_items', 'projects'];
  const rows = tables.map((t) => ctx.db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all());
  const apiKeys = ctx.db.prepare('SELECT id, name, project, role, revoked_at FROM api_keys ORDER BY rowid').all();
  return JSON.stringify({ rows, apiKeys });
}

function upload(text: string, filename: string): FormData {
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', new Blob([text]), filename);
  return form;
}

function weitiao(args: string[], home = ctx.home.root): { status: number | null; out: string; stdout: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, '--home', home, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    cwd: REPO_ROOT,
    env: { ...process.env, ...testStoreEnv(home) },
  });
  return { status: r.status, out: r.stdout + r.stderr, stdout: r.stdout };
}

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-projects-'));
  ctx = openTestContext(path.join(dir, 'home'));
  base = await createTestModel(ctx);
  createProject(ctx, { id: 'alpha', description: '外卖 team' });
  createProject(ctx, { id: 'beta' });
  keys.operator = createKey(ctx, { name: 'ops' });
  keys.alpha = createKey(ctx, { name: 'alpha-admin', project: 'alpha', role: 'admin' });
  keys.alphaMember = createKey(ctx, { name: 'alpha-member', project: 'alpha', role: 'member' });
  keys.alphaReader = createKey(ctx, { name: 'alpha-reader', project: 'alpha', role: 'read-only' });
  keys.beta = createKey(ctx, { name: 'beta-admin', project: 'beta', role: 'admin' });
  server = await startServer(ctx, { port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });

  // Alpha's objects, made through the API with alpha's key where the API makes them.
  const { train } = writeWaimaiJsonl(dir, 16, 4);
  const file = await call(keys.alpha.key, 'POST', '/v1/files', upload(readFileSync(train, 'utf8'), '训练.jsonl'));
  assert.equal(file.status, 200, file.text);
  A.file_id = file.json.id;
  const job = await call(keys.alpha.key, 'POST', '/v1/fine_tuning/jobs', { model: base, training_file: A.file_id, suffix: 'alpha' });
  assert.equal(job.status, 200, job.text);
  A.fine_tuning_job_id = job.json.id;
  // The worker registers a finished job's model and checkpoints: the same calls, stamped from the job's project.
  const adapter = path.join(dir, 'adapter');
  mkdirSync(adapter);
  writeFileSync(path.join(adapter, 'adapter_config.json'), '{}');
  A.model = `ft:${base}:alpha:abc123`;
  registerModel(ctx, { id: A.model, kind: 'fine-tuned', path: adapter, base_model: base, job_id: A.fine_tuning_job_id, source: 'training' });
  A.checkpoint = `${A.model}:ckpt-step-2`;
  registerModel(ctx, { id: A.checkpoint, kind: 'checkpoint', path: adapter, base_model: base, job_id: A.fine_tuning_job_id, source: 'training' });
  A.export_id = runInScope({ project: 'alpha', role: 'admin', keyId: null, keyName: null }, () =>
    insertExport(ctx, { id: 'export-alpha0000000000000000000', model: A.model, format: 'hf', quantize: null, options: {}, path: path.join(dir, 'out') }).id,
  );
  ctx.db
    .prepare("INSERT INTO deployments (model, backend, config, state, created_at, updated_at) VALUES (?, 'engine', '{}', 'stopped', 0, 0)")
    .run(A.model);
  const ev = await call(keys.alpha.key, 'POST', '/v1/evals', {
    name: '外卖评论',
    data_source_config: { type: 'custom', item_schema: { type: 'object', properties: { answer: { type: 'string' } } }, include_sample_schema: true },
    testing_criteria: [{ type: 'string_check', name: 'exact', input: '{{sample.output_text}}', reference: '{{item.answer}}', operation: 'eq' }],
  });
  assert.equal(ev.status, 200, ev.text);
  A.eval_id = ev.json.id;
  const run = await call(keys.alpha.key, 'POST', `/v1/evals/${A.eval_id}/runs`, {
    data_source: { type: 'jsonl', source: { type: 'file_content', content: [{ item: { answer: '好评' }, sample: { output_text: '好评' } }] } },
  });
  assert.equal(run.status, 200, run.text);
  A.run_id = run.json.id;
  for (let i = 0; i < 200; i++) {
    const r = await call(keys.alpha.key, 'GET', `/v1/evals/${A.eval_id}/runs/${A.run_id}`);
    if (!['queued', 'in_progress'].includes(r.json.status)) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  const items = await call(keys.alpha.key, 'GET', `/v1/evals/${A.eval_id}/runs/${A.run_id}/output_items`);
  A.output_item_id = items.json.data?.[0]?.id ?? 'outputitem_none';
  A.key_id = keys.alpha.id;
});

after(async () => {
  await server?.close();
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A valid body for each route that takes one, naming alpha's objects wherever the route names any. */
function bodyFor(operationId: string): unknown {
  const bodies: Record<string, unknown> = {
    create_fine_tuning_job: { model: A.model, training_file: A.file_id },
    create_chat_completion: { model: A.model, messages: [{ role: 'user', content: '你好' }] },
    deploy_model: { backend: 'engine' },
    update_eval: { name: 'x' },
    create_eval_run: { data_source: { type: 'jsonl', source: { type: 'file_id', id: A.file_id } } },
    weitiao_preview_dataset: { file_id: A.file_id },
    weitiao_validate_dataset: { file_id: A.file_id },
    weitiao_prepare_dataset: { file_id: A.file_id },
    weitiao_estimate: { model: A.model, training_file: A.file_id },
    weitiao_create_evaluation: { model: A.model, file_id: A.file_id },
    weitiao_compare_baselines: { model: A.model, file_id: A.file_id },
    weitiao_forgetting_check: { model: A.model },
    create_export: { format: 'hf' },
    create_key: { name: 'sneaky', project: 'alpha', role: 'admin' },
    estimate_teacher_run: { kind: 'label', teacher: { base_url: 'http://127.0.0.1:9/v1', model: 'x' }, input: A.file_id, column: 'review', labels: ['好评', '差评'] },
    create_teacher_run: { kind: 'label', teacher: { base_url: 'http://127.0.0.1:9/v1', model: 'x' }, input: A.file_id, column: 'review', labels: ['好评', '差评'] },
  };
  return bodies[operationId];
}

/** The query of a GET route without path parameters that names one of alpha's objects (not a list then). */
function queryFor(operationId: string): string | undefined {
  const queries: Record<string, string> = {
    weitiao_leaderboard: `?file_id=${A.file_id}`,
  };
  return queries[operationId];
}

/** Routes that name no object of a project; each with why it is outside the walk (checked elsewhere). */
const NAMES_NO_OBJECT: Record<string, string> = {
  'GET /health': 'public',
  'GET /openapi.json': 'public',
  'GET /v1/weitiao/me': 'the caller only: tested below',
  'POST /v1/files': 'creates in the caller project',
  'POST /v1/evals': 'creates in the caller project',
  'POST /v1/fine_tuning/alpha/graders/run': 'stateless',
  'POST /v1/fine_tuning/alpha/graders/validate': 'stateless',
  'POST /v1/weitiao/projects': 'operators only: tested below',
  // Remote workers act across projects, so only worker keys (of default) and operators call these: 403 for others.
  'POST /v1/weitiao/workers/claim': 'worker keys only: src/workers/leases.test.ts',
  'GET /v1/weitiao/workers/leases/{lease}/inputs/{name}': 'worker keys only',
  'POST /v1/weitiao/workers/leases/{lease}/events': 'worker keys only',
  'POST /v1/weitiao/workers/leases/{lease}/heartbeat': 'worker keys only',
  'PUT /v1/weitiao/workers/leases/{lease}/checkpoints/{step}': 'worker keys only',
  'PUT /v1/weitiao/workers/leases/{lease}/result': 'worker keys only',
  'POST /v1/weitiao/workers/leases/{lease}/finish': 'worker keys only',
};

describe('two projects never see each other (issue 13)', () => {
  test('the walk: every route of /openapi.json with alpha ids and beta key is 404 (lists hide them), nothing changes', async (t) => {
    const doc = (await call(null, 'GET', '/openapi.json')).json;
    const before = snapshot();
    const alphaIds = Object.values(A).filter((v) => !v.startsWith('outputitem_none'));
    let walked = 0;
    for (const [route, ops] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
      for (const [method, op] of Object.entries(ops)) {
        const name = `${method.toUpperCase()} ${route}`;
        if (name in NAMES_NO_OBJECT) continue;
        const params = [...route.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
        const models = params.includes('model') ? [A.model, A.checkpoint] : [undefined];
        for (const model of models) {
          const url = route.replace(/\{(\w+)\}/g, (_, p: string) => (p === 'model' ? model! : encodeURIComponent(A[p] ?? `missing-${p}`)));
          await t.test(`${name}${model === A.checkpoint ? ' (checkpoint)' : ''}`, async () => {
            walked++;
            const body = method === 'get' || method === 'delete' ? undefined : bodyFor(op.operationId as string);
            const query = method === 'get' ? queryFor(op.operationId as string) : undefined;
            const r = await call(keys.beta.key, method.toUpperCase(), url + (query ?? ''), body);
            const isList = method === 'get' && params.length === 0 && query === undefined;
            if (isList) {
              assert.equal(r.status, 200, `${name}: ${r.text}`);
              // Beta's audit log records the ids beta's own key asked for: nothing beta did not already send.
              const shown = route === '/v1/weitiao/audit' ? JSON.stringify(r.json.data.filter((e: Json) => e.key_id !== keys.beta.id)) : r.text;
              for (const id of alphaIds) assert.ok(!shown.includes(id), `${name} shows alpha's ${id}`);
            } else {
              assert.equal(r.status, 404, `${name}: ${r.status} ${r.text}`);
              assert.equal(r.json.error.code, 'not_found');
            }
          });
        }
      }
    }
    assert.ok(walked >= 40, `walked ${walked} routes`);
    assert.equal(snapshot(), before, 'a cross-project call changed the store');
  });

  test("alpha's own key sees each of its objects", async () => {
    for (const url of [
      `/v1/files/${A.file_id}`,
      `/v1/fine_tuning/jobs/${A.fine_tuning_job_id}`,
      `/v1/models/${A.model}`,
      `/v1/models/${A.checkpoint}`,
      `/v1/weitiao/exports/${A.export_id}`,
      `/v1/weitiao/models/${A.model}/deployment`,
      `/v1/evals/${A.eval_id}`,
      `/v1/evals/${A.eval_id}/runs/${A.run_id}`,
    ]) {
      const r = await call(keys.alpha.key, 'GET', url);
      assert.equal(r.status, 200, `${url}: ${r.text}`);
    }
    const models = await call(keys.alpha.key, 'GET', '/v1/models');
    assert.deepEqual(models.json.data.map((m: Json) => m.id).sort(), [A.model, A.checkpoint, base].sort());
    const files = await call(keys.alpha.key, 'GET', '/v1/files');
    assert.deepEqual(files.json.data.map((f: Json) => f.id), [A.file_id]);
  });

  test('base models are shared: beta lists and retrieves them, but only an admin changes their deployment', async () => {
    const list = await call(keys.beta.key, 'GET', '/v1/models');
    assert.deepEqual(list.json.data.map((m: Json) => m.id), [base]);
    assert.equal((await call(keys.beta.key, 'GET', `/v1/models/${base}`)).status, 200);
    const before = snapshot();
    const r = await call(keys.alphaMember.key, 'DELETE', `/v1/weitiao/models/${base}/deployment`);
    assert.equal(r.status, 403, r.text);
    assert.match(r.json.error.message, new RegExp(base));
    assert.equal(snapshot(), before);
  });

  test('an admin of beta cannot create a key in alpha (404) nor projects (403); an operator can', async () => {
    const before = snapshot();
    const r = await call(keys.beta.key, 'POST', '/v1/weitiao/keys', { name: 'x', project: 'alpha' });
    assert.equal(r.status, 404);
    assert.equal(r.json.error.param, 'project');
    const p = await call(keys.beta.key, 'POST', '/v1/weitiao/projects', { id: 'gamma' });
    assert.equal(p.status, 403);
    assert.equal(snapshot(), before);
    const ok = await call(keys.operator.key, 'POST', '/v1/weitiao/keys', { name: '运营', project: 'alpha', role: 'read-only' });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.project, 'alpha');
    assert.equal(ok.json.role, 'read-only');
    assert.equal(verifyKey(ctx, ok.json.key)?.project, 'alpha');
    const listed = await call(keys.alpha.key, 'GET', '/v1/weitiao/keys');
    assert.ok(listed.json.data.some((k: Json) => k.id === ok.json.id));
    assert.ok(listed.json.data.every((k: Json) => k.project === 'alpha' && k.key === undefined));
  });

  test('/v1/weitiao/me names the key, its project and role; projects lists only the own project', async () => {
    const me = await call(keys.beta.key, 'GET', '/v1/weitiao/me');
    assert.deepEqual([me.json.project, me.json.role, me.json.key.name], ['beta', 'admin', 'beta-admin']);
    const projects = await call(keys.beta.key, 'GET', '/v1/weitiao/projects');
    assert.deepEqual(projects.json.data.map((p: Json) => p.id), ['beta']);
    const all = await call(keys.operator.key, 'GET', '/v1/weitiao/projects');
    assert.deepEqual(all.json.data.map((p: Json) => p.id), ['default', 'alpha', 'beta']);
  });
});

describe('roles (issue 13)', () => {
  test('read-only lists and retrieves its project objects', async () => {
    const files = await call(keys.alphaReader.key, 'GET', '/v1/files');
    assert.deepEqual(files.json.data.map((f: Json) => f.id), [A.file_id]);
    assert.equal((await call(keys.alphaReader.key, 'GET', `/v1/fine_tuning/jobs/${A.fine_tuning_job_id}`)).status, 200);
  });

  for (const [what, method, url, body] of [
    ['upload a file', 'POST', '/v1/files', 'upload'],
    ['delete a file', 'DELETE', '/v1/files/{file_id}', undefined],
    ['create a job', 'POST', '/v1/fine_tuning/jobs', 'job'],
    ['cancel a job', 'POST', '/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel', undefined],
    ['delete a model', 'DELETE', '/v1/models/{model}', undefined],
    ['create an eval', 'POST', '/v1/evals', { name: 'x', data_source_config: { type: 'custom' }, testing_criteria: [] }],
  ] as const) {
    test(`read-only cannot ${what}: 403, nothing changed`, async () => {
      const before = snapshot();
      const u = url.replace(/\{(\w+)\}/g, (_, p: string) => A[p]);
      const b = body === 'upload' ? upload('{}\n', 'x.jsonl') : body === 'job' ? { model: base, training_file: A.file_id } : body;
      const r = await call(keys.alphaReader.key, method, u, b);
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.error.code, 'permission_denied');
      assert.match(r.json.error.message, /read-only/);
      assert.equal(snapshot(), before);
    });
  }

  for (const [what, method, url, body] of [
    ['create a key', 'POST', '/v1/weitiao/keys', { name: 'x' }],
    ['revoke a key', 'DELETE', '/v1/weitiao/keys/{key_id}', undefined],
    ['create a project', 'POST', '/v1/weitiao/projects', { id: 'gamma' }],
    ['list keys', 'GET', '/v1/weitiao/keys', undefined],
    ['read the audit log', 'GET', '/v1/weitiao/audit', undefined],
  ] as const) {
    test(`a member cannot ${what}: 403, nothing changed`, async () => {
      const before = snapshot();
      const r = await call(keys.alphaMember.key, method, url.replace('{key_id}', keys.alphaMember.id), body);
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.error.code, 'permission_denied');
      assert.match(r.json.error.message, /admin/);
      assert.equal(snapshot(), before);
    });
  }
});

describe('audit log (issue 13)', () => {
  test("every mutating request is logged with key, route, object, address and status; admins read their project's", async () => {
    const del = await call(keys.beta.key, 'DELETE', `/v1/files/${A.file_id}`);
    assert.equal(del.status, 404);
    const beta = await call(keys.beta.key, 'GET', '/v1/weitiao/audit?limit=1000');
    assert.equal(beta.status, 200, beta.text);
    const entry = beta.json.data[0];
    assert.equal(entry.key_name, 'beta-admin');
    assert.equal(entry.method, 'DELETE');
    assert.equal(entry.route, '/v1/files/:file_id');
    assert.equal(entry.object_id, A.file_id);
    assert.equal(entry.status, 404);
    assert.match(entry.remote_addr, /127\.0\.0\.1/);
    assert.ok(beta.json.data.every((e: Json) => e.project === 'beta' && e.method !== 'GET'));
    const alpha = await call(keys.alpha.key, 'GET', '/v1/weitiao/audit?limit=1000');
    const created = alpha.json.data.find((e: Json) => e.route === '/v1/fine_tuning/jobs' && e.status === 200);
    assert.equal(created.object_id, A.fine_tuning_job_id);
    assert.ok(alpha.json.data.every((e: Json) => e.project === 'alpha'));
    const refused = alpha.json.data.find((e: Json) => e.key_name === 'alpha-reader');
    assert.equal(refused.status, 403);
  });

  test('weitiao audit (CLI) prints the default project log', () => {
    const r = weitiao(['--project', 'beta', 'audit', '--json']);
    assert.equal(r.status, 0, r.out);
    const list = JSON.parse(r.stdout) as Json[];
    assert.ok(list.length > 0 && list.every((e) => e.project === 'beta'));
  });
});

describe('auth off and the CLI (issue 13)', () => {
  test("auth off: the local user is admin of default and does not see alpha's objects", async () => {
    const app = createApp(ctx, { auth: false });
    const me = (await (await app.request('/v1/weitiao/me')).json()) as Json;
    assert.deepEqual([me.project, me.role, me.key], ['default', 'admin', null]);
    assert.equal((await app.request(`/v1/files/${A.file_id}`)).status, 404);
  });

  test('weitiao projects create|list, keys create --project --role, an unknown project exits 5', () => {
    assert.equal(weitiao(['projects', 'create', 'gamma', '--description', '测试']).status, 0);
    const key = weitiao(['keys', 'create', 'g', '--project', 'gamma', '--role', 'member']);
    assert.equal(key.status, 0, key.out);
    assert.match(key.out, /member of gamma/);
    const json = (args: string[]) => {
      const r = weitiao(args);
      assert.equal(r.status, 0, r.out);
      return JSON.parse(r.stdout) as Json[];
    };
    const list = json(['--project', 'gamma', 'keys', 'list', '--json']);
    assert.deepEqual(list.map((k) => [k.name, k.role, k.project]), [['g', 'member', 'gamma']]);
    const projects = json(['projects', 'list', '--json']);
    assert.ok(projects.some((p) => p.id === 'gamma' && p.description === '测试'));
    const bad = weitiao(['--project', 'nope', 'keys', 'create', 'x']);
    assert.equal(bad.status, 5, bad.out);
    assert.match(bad.out, /no project 'nope'/);
    assert.equal(weitiao(['keys', 'create', 'x', '--role', 'boss']).status, 2);
  });
});

describe('migration of a home made before projects (issue 13)', () => {
  test('every row of a schema-3 store lands in default; its keys become admins of default', () => {
    const file = path.join(dir, 'old.db');
    const old = new Database(file);
    for (const m of MIGRATIONS.slice(0, 3)) old.exec(m);
    old.pragma('user_version = 3');
    old.prepare("INSERT INTO files (id, filename, purpose, bytes, path, created_at) VALUES ('file-old', '旧.jsonl', 'fine-tune', 3, '/x', 1)").run();
    old.prepare("INSERT INTO models (id, kind, path, source, created_at) VALUES ('tiny-old', 'base', '/m', 'tiny', 1)").run();
    old.prepare("INSERT INTO jobs (id, model, training_file, status, method, seed, created_at) VALUES ('ftjob-old', 'tiny-old', 'file-old', 'succeeded', '{}', 1, 1)").run();
    old.prepare("INSERT INTO models (id, kind, path, base_model, job_id, source, created_at) VALUES ('ft:tiny-old:x', 'fine-tuned', '/a', 'tiny-old', 'ftjob-old', 'training', 2)").run();
    old.prepare("INSERT INTO exports (id, model, format, status, created_at) VALUES ('export-old', 'ft:tiny-old:x', 'hf', 'succeeded', 3)").run();
    old.prepare("INSERT INTO evals (id, name, data_source_config, testing_criteria, created_at) VALUES ('eval_old', 'e', '{}', '[]', 4)").run();
    old.prepare("INSERT INTO eval_runs (id, eval_id, name, model, data_source, status, created_at) VALUES ('evalrun_old', 'eval_old', 'r', '', '{}', 'completed', 5)").run();
    // A key as weitiao made them before projects: the columns of migration 1 only.
    const key = 'wt-' + 'A'.repeat(40);
    old.prepare("INSERT INTO api_keys (id, name, prefix, hash, created_at) VALUES ('key-old', 'me', 'wt-AAAAAA', ?, 1)").run(createHash('sha256').update(key).digest('hex'));
    const counts = (db: Pick<Database.Database, 'prepare'>) =>
      ['files', 'models', 'jobs', 'exports', 'evals', 'eval_runs', 'api_keys'].map((t) => (db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n);
    const before = counts(old);
    old.close();

    const db = sqliteOnly(openDatabase(file), 'test');
    assert.equal(db.pragma('user_version', { simple: true }), MIGRATIONS.length);
    assert.deepEqual(counts(db), before);
    for (const t of ['files', 'models', 'jobs', 'exports', 'evals', 'eval_runs', 'api_keys']) {
      assert.deepEqual(db.prepare(`SELECT DISTINCT project FROM ${t}`).all(), [{ project: 'default' }], t);
    }
    assert.deepEqual(db.prepare('SELECT role FROM api_keys').all(), [{ role: 'admin' }]);
    assert.deepEqual(db.prepare('SELECT id FROM projects').all(), [{ id: 'default' }]);
    const record = verifyKey({ db: db as DB } as Context, key);
    assert.deepEqual([record?.project, record?.role], ['default', 'admin']);
    db.close();
  });
});
