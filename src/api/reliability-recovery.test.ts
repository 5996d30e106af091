/**
 * Issue 13, part B: bad input and faults against referential integrity, models by name, path hiding,
 * `weitiao doctor`, backup/restore and resuming. Each refusal asserts the status (or exit code), that the
 * message names the object or parameter, and that nothing stored changed (rows and the home's files).
 * The API runs in-process (`app.request`), the CLI as the real command in a subprocess, on a real home
 * with a real tiny model. The engine-driven faults (crash loop, truncated checkpoint) are in
 * src/jobs/recovery.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { createFile, fileContentPath } from '../files/index.js';
import { cancelJob, createJob, retrieveJob, Worker } from '../jobs/index.js';
import { registerModel, resolveModel } from '../models/index.js';
import { checkIntegrity } from '../store/integrity.js';
import { createApp, startServer } from './index.js';
import { createTestModel, REPO_ROOT, writeWaimaiJsonl } from '../testing/waimai.js';

type Json = Record<string, any>;
const MAIN = path.join(REPO_ROOT, 'src', 'cli', 'main.ts');

let dir: string;
let ctx: Context;
let app: ReturnType<typeof createApp>;
let model: string;
let train: string;
let validation: string;

const call = async (method: string, url: string, body?: unknown): Promise<{ status: number; json: Json; text: string }> => {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'content-type': 'application/json' };
  }
  const res = await app.request(url, init);
  const text = await res.text();
  return { status: res.status, json: JSON.parse(text) as Json, text };
};

/** The real command on `home` (default the shared one). */
function weitiao(args: string[], home = ctx.home.root): { status: number | null; out: string; stdout: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, '--home', home, ...args], { encoding: 'utf8', timeout: 120_000, cwd: REPO_ROOT });
  return { status: r.status, out: r.stdout + r.stderr, stdout: r.stdout };
}

/** Every row of the tables a refusal could touch, and every file under the home with its size. */
function snapshot(c: Context = ctx): string {
  const rows = ['files', 'models', 'jobs', 'checkpoints', 'job_events'].map((t) => c.db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all());
  return JSON.stringify({ rows, tree: tree(c.home.root) });
}

function tree(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (!e.name.startsWith('weitiao.sqlite')) out.push(`${path.relative(root, p)}:${statSync(p).size}`);
    }
  };
  walk(root);
  return out.sort();
}

/** No absolute server path: not the home, not the temp dir, not /root. */
function assertNoPaths(text: string): void {
  for (const bad of [ctx.home.root, dir, os.tmpdir() + '/', '/tmp/', '/root', REPO_ROOT]) assert.ok(!text.includes(bad), `leaks ${bad}: ${text.slice(0, 400)}`);
}

function assertRefused(r: { status: number; json: Json; text: string }, status: number, code: string, param: string | null, names: RegExp): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.json.error.code, code);
  assert.equal(r.json.error.param, param);
  assert.match(r.json.error.message, names);
  assertNoPaths(r.text);
}

/** A job that is not finished (validating_files, no worker runs here), optionally moved to `status`. */
function unfinishedJob(status?: string, base = model): string {
  const job = createJob(ctx, { model: base, training_file: train, validation_file: validation, seed: 1 });
  if (status) ctx.db.prepare('UPDATE jobs SET status = ? WHERE id = ?').run(status, job.id);
  return job.id;
}

/** A fine-tuned model of a job and its checkpoint at step 2, with folders as the worker leaves them. */
function trainedModels(jobId: string): { ft: string; ckpt: string } {
  const jobDir = path.join(ctx.home.jobs, jobId);
  const ft = `ft:${model}:t:${jobId.slice(-8)}`;
  const ckpt = `${ft}:ckpt-step-2`;
  for (const d of ['model', 'checkpoints/step-000002']) {
    mkdirSync(path.join(jobDir, d), { recursive: true });
    writeFileSync(path.join(jobDir, d, 'adapter_config.json'), '{}');
  }
  registerModel(ctx, { id: ft, kind: 'fine-tuned', path: path.join(jobDir, 'model'), base_model: model, job_id: jobId, source: 'training' });
  registerModel(ctx, { id: ckpt, kind: 'checkpoint', path: path.join(jobDir, 'checkpoints/step-000002'), base_model: model, job_id: jobId, source: 'training' });
  return { ft, ckpt };
}

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-recovery-'));
  ctx = openContext({ home: path.join(dir, 'home') });
  app = createApp(ctx, { auth: false });
  model = await createTestModel(ctx);
  const data = writeWaimaiJsonl(dir, 16, 8);
  train = (await createFile(ctx, { source: data.train, filename: '训练.jsonl', purpose: 'fine-tune' })).id;
  validation = (await createFile(ctx, { source: data.validation, filename: 'validation.jsonl', purpose: 'fine-tune' })).id;
});

after(() => {
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('referential integrity: nothing an unfinished job uses can be deleted', () => {
  for (const status of ['validating_files', 'queued', 'paused']) {
    test(`DELETE /v1/files/{id} of a ${status} job's training file → 409 naming the job`, async () => {
      const job = unfinishedJob(status);
      const before = snapshot();
      assertRefused(await call('DELETE', `/v1/files/${train}`), 409, 'conflict', 'file_id', new RegExp(`${train} is used by job ${job}`));
      assert.equal(snapshot(), before);
      await cancelJob(ctx, job);
    });
  }

  test('DELETE /v1/files/{id} of a validation file → 409 too; allowed once the job is cancelled', async () => {
    const job = unfinishedJob('running');
    ctx.db.prepare('UPDATE jobs SET worker_id = ? WHERE id = ?').run('gone:999999999', job);
    const before = snapshot();
    assertRefused(await call('DELETE', `/v1/files/${validation}`), 409, 'conflict', 'file_id', new RegExp(job));
    assert.equal(snapshot(), before);
    await cancelJob(ctx, job);
    const spare = (await createFile(ctx, { source: fileContentPath(ctx, validation), filename: 'spare.jsonl', purpose: 'fine-tune' })).id;
    assert.equal((await call('DELETE', `/v1/files/${spare}`)).status, 200);
  });

  test('DELETE /v1/models/{fine-tuned} that a queued job trains from → 409 naming the job', async () => {
    const done = unfinishedJob('succeeded');
    const { ft } = trainedModels(done);
    const job = unfinishedJob(undefined, ft);
    ctx.db.prepare(`UPDATE jobs SET status = 'queued' WHERE id = ?`).run(job);
    const before = snapshot();
    assertRefused(await call('DELETE', `/v1/models/${ft}`), 409, 'conflict', 'model', new RegExp(`'${ft}' is the base of job ${job}`));
    assert.equal(snapshot(), before);
    await cancelJob(ctx, job);
    assert.equal((await call('DELETE', `/v1/models/${ft}`)).status, 200);
  });

  test("DELETE /v1/models/{checkpoint} of a paused job (its resume point) → 409 naming the job", async () => {
    const job = unfinishedJob('paused');
    const { ft, ckpt } = trainedModels(job);
    const before = snapshot();
    assertRefused(await call('DELETE', `/v1/models/${ckpt}`), 409, 'conflict', 'model', new RegExp(`'${ckpt}' was saved by job ${job}.*'paused'`));
    // The fine-tuned model would take the job's checkpoints with it: refused as well.
    assertRefused(await call('DELETE', `/v1/models/${ft}`), 409, 'conflict', 'model', new RegExp(job));
    assert.equal(snapshot(), before);
    await cancelJob(ctx, job);
    assert.equal((await call('DELETE', `/v1/models/${ckpt}`)).status, 200);
  });

  test('`weitiao models delete <base> --force` while a job trains from it → exit 6 naming the job', async () => {
    const job = unfinishedJob('running');
    ctx.db.prepare('UPDATE jobs SET worker_id = ? WHERE id = ?').run('gone:999999999', job);
    const before = snapshot();
    const r = weitiao(['models', 'delete', model, '--force']);
    assert.equal(r.status, 6, r.out);
    assert.match(r.out, new RegExp(`\\[conflict\\].*'${model}' is the base of job ${job}`));
    assert.equal(snapshot(), before);
    await cancelJob(ctx, job);
  });
});

describe('models are named, never given as server paths', () => {
  const modelDir = () => path.join(ctx.home.models, model);

  for (const given of ['/etc', () => modelDir(), '../home/models/tiny-waimai', '~/.weitiao/models/x']) {
    test(`chat with model ${typeof given === 'string' ? given : '<the tiny model\'s own folder>'} → 404 param model, nothing loaded`, async () => {
      const m = typeof given === 'string' ? given : given();
      const before = snapshot();
      const r = await call('POST', '/v1/chat/completions', { model: m, messages: [{ role: 'user', content: '送餐很快' }] });
      assertRefused(r, 404, 'not_found', 'model', /registered id, not a path/);
      assert.doesNotMatch(r.json.error.message, /config\.json/);
      assert.equal(snapshot(), before);
    });
  }

  test('POST /v1/fine_tuning/jobs with a model folder → 404 param model; no job created', async () => {
    const before = snapshot();
    assertRefused(await call('POST', '/v1/fine_tuning/jobs', { model: modelDir(), training_file: train }), 404, 'not_found', 'model', /not a path/);
    assert.equal(snapshot(), before);
  });

  test('POST /v1/weitiao/evaluations and /estimate with a model folder → 404 param model', async () => {
    const before = snapshot();
    assertRefused(await call('POST', '/v1/weitiao/evaluations', { model: modelDir(), file_id: validation }), 404, 'not_found', 'model', /not a path/);
    assertRefused(await call('POST', '/v1/weitiao/estimate', { model: modelDir(), training_file: train }), 404, 'not_found', 'model', /not a path/);
    assert.equal(snapshot(), before);
  });

  test('`weitiao chat --model <folder>` and `weitiao eval --model ./folder` → exit 5; `models add` registers it by name', () => {
    const before = snapshot();
    const chat = weitiao(['chat', '--model', modelDir(), '--prompt', '你好']);
    assert.equal(chat.status, 5, chat.out);
    assert.match(chat.out, /\[not_found\].*not a path.*weitiao models add/);
    const evaluation = weitiao(['eval', '--model', './models/x', '--data', fileContentPath(ctx, validation)]);
    assert.equal(evaluation.status, 5, evaluation.out);
    assert.equal(snapshot(), before);
    const added = weitiao(['models', 'add', modelDir(), '--name', 'added-by-path']);
    assert.equal(added.status, 0, added.out);
    assert.equal(resolveModel(ctx, 'added-by-path').basePath, modelDir());
  });
});

describe('no absolute server path in any answer', () => {
  test('GET /v1/models and /v1/models/{id}: paths relative to the home, none absolute', async () => {
    const list = await call('GET', '/v1/models');
    assert.equal(list.status, 200);
    assertNoPaths(list.text);
    const tiny = list.json.data.find((m: Json) => m.id === model);
    assert.equal(tiny.weitiao.path, `models/${model}`);
    const one = await call('GET', `/v1/models/${model}`);
    assert.equal(one.status, 200);
    assertNoPaths(one.text);
    assert.ok(Array.isArray(one.json.weitiao.metadata.corpus_files) && one.json.weitiao.metadata.corpus_files.length > 0);
  });

  test('a model whose folder is gone: chat, jobs and the model list answer without the path', async () => {
    const gone = path.join(ctx.home.models, 'gone-model');
    mkdirSync(gone);
    registerModel(ctx, { id: 'gone-model', kind: 'base', path: gone, source: 'tiny' });
    rmSync(gone, { recursive: true });
    const before = snapshot();
    const chat = await call('POST', '/v1/chat/completions', { model: 'gone-model', messages: [{ role: 'user', content: '好吃' }] });
    assertRefused(chat, 404, 'not_found', 'model', /files of model 'gone-model' are missing at gone-model/);
    assertRefused(await call('POST', '/v1/fine_tuning/jobs', { model: 'gone-model', training_file: train }), 404, 'not_found', 'model', /gone-model/);
    assert.equal(snapshot(), before);
    ctx.db.prepare(`DELETE FROM models WHERE id = 'gone-model'`).run();
  });

  test("a failed job's error and events (the worker found its base model's folder gone) hide the path", async () => {
    const base = path.join(ctx.home.models, 'vanishing');
    mkdirSync(base);
    registerModel(ctx, { id: 'vanishing', kind: 'base', path: base, source: 'tiny' });
    const job = unfinishedJob(undefined, 'vanishing');
    rmSync(base, { recursive: true });
    const failed = await new Worker(ctx).runJob(job);
    assert.equal(failed.status, 'failed');
    // The store keeps the server's own words (for the log); the wire does not.
    assert.ok((ctx.db.prepare('SELECT error FROM jobs WHERE id = ?').get(job) as { error: string }).error.includes(base));
    const r = await call('GET', `/v1/fine_tuning/jobs/${job}`);
    assert.equal(r.status, 200);
    assert.match(r.json.error.message, /model 'vanishing' are missing at vanishing/);
    assertNoPaths(r.text);
    const events = await call('GET', `/v1/fine_tuning/jobs/${job}/events?limit=100`);
    assert.ok(events.json.data.some((e: Json) => /Fine-tuning failed/.test(e.message)));
    assertNoPaths(events.text);
    ctx.db.prepare(`DELETE FROM models WHERE id = 'vanishing'`).run();
  });

  test('walking error responses: none carries a server path', async () => {
    const answers = await Promise.all([
      call('GET', '/v1/files/file-nope/content'),
      call('DELETE', '/v1/models/nope'),
      call('POST', '/v1/fine_tuning/jobs/ftjob-nope/resume'),
      call('POST', '/v1/fine_tuning/jobs', { model, training_file: 'file-nope' }),
      call('POST', '/v1/weitiao/datasets/preview', { file_id: 'file-nope' }),
      call('GET', `/v1/weitiao/datasets/${train}/stats?model=${encodeURIComponent(path.join(ctx.home.models, model))}`),
    ]);
    for (const r of answers) {
      assert.ok(r.status >= 400 && r.status < 500, r.text);
      assert.ok(r.json.error.param, r.text);
      assertNoPaths(r.text);
    }
  });
});

describe('resume refusals', () => {
  test('POST /v1/fine_tuning/jobs/{id}/resume of a failed job without a checkpoint → 409 naming the job', async () => {
    const job = unfinishedJob('failed');
    const before = snapshot();
    assertRefused(await call('POST', `/v1/fine_tuning/jobs/${job}/resume`), 409, 'conflict', 'fine_tuning_job_id', new RegExp(`cannot resume job ${job}.*nothing to resume from`));
    assert.equal(snapshot(), before);
  });

  test('resume of a failed job whose training file was deleted → 409 param training_file', async () => {
    const spare = (await createFile(ctx, { source: fileContentPath(ctx, train), filename: 'doomed.jsonl', purpose: 'fine-tune' })).id;
    const job = createJob(ctx, { model, training_file: spare }).id;
    ctx.db.prepare(`UPDATE jobs SET status = 'failed' WHERE id = ?`).run(job);
    trainedModels(job);
    ctx.db
      .prepare(`INSERT INTO checkpoints (id, job_id, step, epoch, metrics, path, fine_tuned_model_checkpoint, created_at) VALUES (?, ?, 2, 0.5, '{}', ?, ?, 0)`)
      .run(`ftckpt-${job.slice(-8)}`, job, path.join(ctx.home.jobs, job, 'checkpoints/step-000002'), `ft:${model}:t:${job.slice(-8)}:ckpt-step-2`);
    assert.equal((await call('DELETE', `/v1/files/${spare}`)).status, 200);
    const before = snapshot();
    assertRefused(await call('POST', `/v1/fine_tuning/jobs/${job}/resume`), 409, 'conflict', 'training_file', new RegExp(`${spare} was deleted`));
    assert.equal(snapshot(), before);
  });

  test('`weitiao jobs resume` of a succeeded job → exit 6 naming its status', () => {
    const job = unfinishedJob('succeeded');
    const before = snapshot();
    const r = weitiao(['jobs', 'resume', job]);
    assert.equal(r.status, 6, r.out);
    assert.match(r.out, new RegExp(`cannot resume job ${job}: its status is 'succeeded'`));
    assert.equal(snapshot(), before);
  });
});

describe('doctor, backup and restore', () => {
  let planted: Record<string, string>;

  test('`weitiao doctor` finds rows without files and folders without rows (a rolled-back store), and changes nothing', () => {
    const old = new Date(Date.now() - 3600_000);
    const plant = (rel: string, file = 'x.bin') => {
      const p = path.join(ctx.home.root, rel);
      mkdirSync(p, { recursive: true });
      writeFileSync(path.join(p, file), 'orphan');
      utimesSync(p, old, old);
      return p;
    };
    const doneJob = unfinishedJob('succeeded');
    planted = {
      file: plant('files/file-orphan0000000000000000000'),
      job: plant('jobs/ftjob-ghost00000000000000000000'),
      checkpoint: plant(`jobs/${doneJob}/checkpoints/step-000099`),
      model: plant('models/ghost-model', 'config.json'),
    };
    const before = snapshot();
    const r = weitiao(['doctor']);
    assert.equal(r.status, 1, r.out);
    for (const kind of ['orphan_file', 'orphan_job', 'orphan_checkpoint', 'orphan_model', 'rolled_back']) assert.match(r.out, new RegExp(kind));
    assert.match(r.out, /file-orphan0000000000000000000/);
    assert.match(r.out, /ftjob-ghost00000000000000000000/);
    assert.match(r.out, /step-000099.*newer than any recorded/);
    assert.match(r.out, /looks rolled back/);
    assert.equal(snapshot(), before);
  });

  test('the API server says so in one line at start-up', async () => {
    const lines: string[] = [];
    const server = await startServer(ctx, { port: 0, auth: false, worker: false, handleSignals: false, webDir: null, log: (l) => lines.push(l) });
    await server.close();
    const line = lines.find((l) => l.startsWith('integrity:'));
    assert.ok(line, lines.join('\n'));
    assert.match(line, /orphan_job.*rolled back.*weitiao doctor/);
  });

  test('`weitiao doctor --repair` moves orphans to lost+found (nothing deleted), drops rows without files, and the next check is clean', () => {
    // A row without its bytes: the validation file of no unfinished job.
    const jobsUsing = ctx.db.prepare(`SELECT id FROM jobs WHERE validation_file = ? AND status NOT IN ('succeeded','failed','cancelled')`).all(validation);
    assert.equal(jobsUsing.length, 0);
    const bytes = fileContentPath(ctx, validation);
    rmSync(path.dirname(bytes), { recursive: true });
    assert.match(weitiao(['doctor']).out, new RegExp(`file_missing\\s+${validation}`));

    const r = weitiao(['doctor', '--repair']);
    assert.equal(r.status, 0, r.out);
    for (const p of Object.values(planted)) {
      assert.ok(!existsSync(p), `${p} moved`);
      assert.ok(existsSync(path.join(ctx.home.root, 'lost+found', path.relative(ctx.home.root, p))), `${p} is in lost+found`);
    }
    assert.equal(ctx.db.prepare('SELECT 1 FROM files WHERE id = ?').get(validation), undefined);
    const again = weitiao(['doctor']);
    assert.equal(again.status, 0, again.out);
    assert.match(again.out, /agree/);
    assert.equal(checkIntegrity(ctx).ok, true);
  });

  test('a missing file an unfinished job needs is reported and kept by --repair', () => {
    const job = createJob(ctx, { model, training_file: train }).id;
    ctx.db.prepare(`UPDATE jobs SET status = 'paused' WHERE id = ?`).run(job);
    const bytes = fileContentPath(ctx, train);
    const saved = readFileSync(bytes);
    rmSync(bytes);
    try {
      const r = weitiao(['doctor', '--repair', '--json']);
      assert.equal(r.status, 1, r.out);
      const report = JSON.parse(r.stdout) as { findings: { kind: string; id: string; repair: string; repaired?: boolean }[] };
      const f = report.findings.find((x) => x.kind === 'file_missing' && x.id === train)!;
      assert.match(f.repair, new RegExp(`kept: unfinished job ${job} uses it`));
      assert.equal(f.repaired, undefined);
      assert.ok(ctx.db.prepare('SELECT 1 FROM files WHERE id = ?').get(train));
    } finally {
      writeFileSync(bytes, saved);
    }
  });

  test('`weitiao backup` then `weitiao restore` into a new home: the same rows (paths moved) and the same files', () => {
    const backup = path.join(dir, 'backup');
    const b = weitiao(['backup', backup]);
    assert.equal(b.status, 0, b.out);
    assert.match(b.out, /backed up \d+ files, \d+ models, \d+ jobs/);
    assert.ok(existsSync(path.join(backup, 'backup.json')));
    const home2 = path.join(dir, 'home2');
    const r = weitiao(['restore', backup], home2);
    assert.equal(r.status, 0, r.out);
    const ctx2 = openContext({ home: home2 });
    try {
      const moved = (s: string) => s.split(ctx.home.root + '/').join(home2 + '/');
      assert.equal(snapshot(ctx2).replace(/"tree":.*/, ''), moved(snapshot(ctx)).replace(/"tree":.*/, ''));
      const hash = (root: string) =>
        tree(root)
          .filter((f) => !f.startsWith('lost+found/') && !f.startsWith('cache/'))
          .map((f) => `${f}:${createHash('sha256').update(readFileSync(path.join(root, f.slice(0, f.lastIndexOf(':'))))).digest('hex')}`);
      assert.deepEqual(hash(home2), hash(ctx.home.root));
      assert.equal(resolveModel(ctx2, model).basePath, path.join(home2, 'models', model));
      assert.equal(retrieveJob(ctx2, unfinishedJobIds()[0]).id, unfinishedJobIds()[0]);
    } finally {
      ctx2.close();
    }
  });

  test('restore into a home that is not empty → exit 6 naming the home, nothing changed; --force moves the old contents aside', () => {
    const backup = path.join(dir, 'backup');
    const before = snapshot();
    const r = weitiao(['restore', backup]);
    assert.equal(r.status, 6, r.out);
    assert.match(r.out, /\[conflict\].*is not empty \(weitiao\.sqlite.*--force/);
    assert.equal(snapshot(), before);

    const home3 = path.join(dir, 'home3');
    mkdirSync(path.join(home3, 'files', 'file-mine'), { recursive: true });
    writeFileSync(path.join(home3, 'files', 'file-mine', 'keep.txt'), '留着');
    assert.equal(weitiao(['restore', backup], home3).status, 6);
    const forced = weitiao(['restore', backup, '--force'], home3);
    assert.equal(forced.status, 0, forced.out);
    const aside = readdirSync(path.join(home3, 'lost+found')).find((n) => n.startsWith('before-restore-'))!;
    assert.equal(readFileSync(path.join(home3, 'lost+found', aside, 'files', 'file-mine', 'keep.txt'), 'utf8'), '留着');
  });

  test('backup into a non-empty folder → exit 6, into the home itself → exit 2; restore of a folder that is no backup → exit 2', () => {
    const before = snapshot();
    const full = weitiao(['backup', path.join(dir, 'backup')]);
    assert.equal(full.status, 6, full.out);
    assert.match(full.out, /backup folder .*backup is not empty/);
    const inside = weitiao(['backup', path.join(ctx.home.root, 'cache', 'b')]);
    assert.equal(inside.status, 2, inside.out);
    assert.match(inside.out, /inside the home/);
    const notBackup = weitiao(['restore', path.join(dir, 'home3', 'files')], path.join(dir, 'home4'));
    assert.equal(notBackup.status, 2, notBackup.out);
    assert.match(notBackup.out, /not a complete weitiao backup/);
    assert.equal(snapshot(), before);
    assertNoPaths(JSON.stringify(fromApi()));
  });
});

function unfinishedJobIds(): string[] {
  return (ctx.db.prepare('SELECT id FROM jobs ORDER BY rowid').all() as { id: string }[]).map((r) => r.id);
}

/** The job list as the API gives it (paths hidden from every job's error). */
function fromApi(): Json[] {
  return unfinishedJobIds().map((id) => retrieveJob(ctx, id) as unknown as Json);
}
