// The store itself, on SQLite (`make test-node`) and on PostgreSQL (the --postgres pass, src/testing/postgres.ts):
// migrations, the placeholder forms the repositories use, types and Chinese text as stored, transactions and
// savepoints, cursor pages, and the project stamping and visibility the triggers and SQL functions provide.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { insertJob, upsertCheckpointRow } from '../jobs/repository.js';
import { LOCAL_ADMIN, runInScope } from '../projects/scope.js';
import { openTestContext, testDatabaseUrl, TEST_DIALECT } from '../testing/postgres.js';
import { MIGRATIONS } from './migrations.js';
import { newId, openDatabase, selectPage, sqliteOnly } from './index.js';
import { toPositional } from './postgres/database.js';

let dir: string;
let ctx: Context;
const D = TEST_DIALECT;

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-store-'));
  ctx = openTestContext(path.join(dir, 'home'));
});
after(() => {
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

const scope = (project: string) => ({ ...LOCAL_ADMIN, project, role: 'admin' as const });
const job = (id: string, extra: Partial<Parameters<typeof insertJob>[1]> = {}) =>
  insertJob(ctx.db, {
    id, model: 'tiny', training_file: 'file-x', validation_file: null, status: 'queued', method: '{}', extension: '{}',
    suffix: null, seed: 1, metadata: null, created_at: 1_796_000_000, ...extra,
  });

describe(`store on ${D}`, () => {
  test('opening again runs no migration twice; the schema version is the number of migrations', () => {
    const location = testDatabaseUrl(ctx.home.root) ?? ctx.home.db;
    for (let i = 0; i < 2; i++) openDatabase(location).close();
    const version =
      D === 'sqlite'
        ? sqliteOnly(ctx.db, 'test').pragma('user_version', { simple: true })
        : (ctx.db.prepare('SELECT version FROM weitiao_schema').get() as { version: number }).version;
    assert.equal(version, MIGRATIONS.length);
    assert.deepEqual(ctx.db.prepare("SELECT id FROM projects WHERE id = 'default'").all(), [{ id: 'default' }]);
  });

  test('positional and named placeholders; a ? or @x inside quotes is text; values come back with their types', () => {
    const id = newId('file');
    ctx.db
      .prepare("INSERT INTO files (id, filename, purpose, bytes, path, created_at, status_details) VALUES (@id, @name, 'fine-tune', @bytes, '?', @at, 'a ? b @x')")
      .run({ id, name: '外卖评论，好评？差评！.csv', bytes: 2 ** 40, at: 1_796_000_123 });
    const row = ctx.db.prepare('SELECT filename, bytes, path, created_at, status_details FROM files WHERE id = ?').get(id);
    assert.deepEqual(row, { filename: '外卖评论，好评？差评！.csv', bytes: 2 ** 40, path: '?', created_at: 1_796_000_123, status_details: 'a ? b @x' });
    const jobId = newId('ftjob');
    job(jobId);
    const ck = upsertCheckpointRow(ctx.db, { job_id: jobId, step: 3, epoch: 0.75, metrics: '{"train_loss":1.5}', path: '/x', fine_tuned_model_checkpoint: 'ft:x:ckpt-step-3' });
    assert.equal(typeof ck.epoch, 'number');
    assert.equal(ck.epoch, 0.75);
    assert.equal(ck.step, 3);
  });

  test('the translation to $n keeps quoted text and comments and numbers names once', () => {
    assert.deepEqual(toPositional("SELECT '?', \"@a\" -- ? @b\n WHERE x = ? AND y = ?"), { text: "SELECT '?', \"@a\" -- ? @b\n WHERE x = $1 AND y = $2", names: [] });
    assert.deepEqual(toPositional('UPDATE t SET a = @a, b = @b WHERE a = @a'), { text: 'UPDATE t SET a = $1, b = $2 WHERE a = $1', names: ['a', 'b'] });
  });

  test('a throw rolls the transaction back; a nested one that throws undoes only its own writes', () => {
    const [a, b, c] = [newId('ftjob'), newId('ftjob'), newId('ftjob')];
    assert.throws(() => ctx.db.transaction(() => { job(a); throw new Error('boom'); })(), /boom/);
    ctx.db.transaction(() => {
      job(b);
      assert.throws(() => ctx.db.transaction(() => { job(c); throw new Error('inner'); })(), /inner/);
    })();
    const ids = (ctx.db.prepare('SELECT id FROM jobs WHERE id IN (?, ?, ?)').all(a, b, c) as { id: string }[]).map((r) => r.id);
    assert.deepEqual(ids, [b]);
    assert.throws(() => job(b), 'a duplicate primary key is refused');
  });

  test('cursor pages follow insertion order both ways; an unknown cursor is null', () => {
    const ids = Array.from({ length: 5 }, () => newId('ftjob'));
    for (const id of ids) job(id, { model: 'paged' });
    const where = ["model = 'paged'"];
    const first = selectPage<{ id: string }>(ctx.db, { table: 'jobs', where, limit: 2 })!;
    assert.deepEqual(first.rows.map((r) => r.id), [ids[4], ids[3]]);
    assert.equal(first.has_more, true);
    const next = selectPage<{ id: string }>(ctx.db, { table: 'jobs', where, limit: 5, after: ids[3] })!;
    assert.deepEqual(next.rows.map((r) => r.id), [ids[2], ids[1], ids[0]]);
    assert.equal(next.has_more, false);
    const asc = selectPage<{ id: string }>(ctx.db, { table: 'jobs', where, limit: 2, order: 'asc', after: ids[1] })!;
    assert.deepEqual(asc.rows.map((r) => r.id), [ids[2], ids[3]]);
    assert.equal(selectPage(ctx.db, { table: 'jobs', where, limit: 2, after: 'ftjob-none' }), null);
    assert.ok(!('rowid' in first.rows[0]), 'rows are the columns, without the order column');
  });

  test("new rows take the scope's project; models take their job's; lists see only the scope's project", () => {
    ctx.db.prepare("INSERT INTO projects (id, created_at) VALUES ('waimai', 1), ('other', 1)").run();
    const [mine, theirs] = [newId('ftjob'), newId('ftjob')];
    runInScope(scope('waimai'), () => job(mine, { model: 'scoped' }));
    runInScope(scope('other'), () => job(theirs, { model: 'scoped', metadata: '{"team":"外卖"}' }));
    ctx.db
      .prepare("INSERT INTO models (id, kind, path, job_id, source, created_at) VALUES ('ft:scoped', 'fine-tuned', '/m', ?, 'training', 1)")
      .run(mine); // outside any scope, as the worker registers a trained model
    const project = (table: string, id: string) => (ctx.db.prepare(`SELECT project FROM ${table} WHERE id = ?`).get(id) as { project: string }).project;
    assert.equal(project('jobs', mine), 'waimai');
    assert.equal(project('jobs', theirs), 'other');
    assert.equal(project('models', 'ft:scoped'), 'waimai');
    const list = () => selectPage<{ id: string }>(ctx.db, { table: 'jobs', where: ["model = 'scoped'"], limit: 10 })!.rows.map((r) => r.id);
    assert.deepEqual(runInScope(scope('waimai'), list), [mine]);
    assert.deepEqual(list(), [theirs, mine], 'outside any scope every project');

    // A job's result files join its project when listed on it (the worker makes them outside any scope).
    const file = newId('file');
    ctx.db.prepare("INSERT INTO files (id, filename, purpose, bytes, path, created_at) VALUES (?, 'r.csv', 'fine-tune-results', 1, '/r', 1)").run(file);
    ctx.db.prepare('UPDATE jobs SET result_files = ? WHERE id = ?').run(JSON.stringify([file]), theirs);
    assert.equal(project('files', file), 'other');
  });

  test('a wrong store URL is a clear error that never shows the password', () => {
    assert.throws(
      () => openDatabase('postgres://weitiao:s3cret@127.0.0.1:1/none'),
      (err: unknown) => err instanceof WeitiaoError && err.code === 'unavailable' && /127\.0\.0\.1:1/.test(err.message) && !err.message.includes('s3cret'),
    );
  });

  test("a dropped server connection is replaced, and the new session carries the request's scope", { skip: D !== 'postgres' && 'PostgreSQL only' }, () => {
    const pid = (ctx.db.prepare('SELECT pg_backend_pid() AS pid').get() as { pid: number }).pid;
    const admin = openDatabase(testDatabaseUrl(ctx.home.root)!);
    admin.prepare('SELECT pg_terminate_backend(?)').get(pid);
    admin.close();
    try {
      ctx.db.prepare('SELECT 1').get(); // may fail once: the cut is noticed on this call
    } catch {
      // the next call reconnects
    }
    const id = newId('ftjob');
    runInScope(scope('waimai'), () => job(id, { model: 'reconnected' }));
    assert.notEqual((ctx.db.prepare('SELECT pg_backend_pid() AS pid').get() as { pid: number }).pid, pid);
    assert.equal((ctx.db.prepare('SELECT project FROM jobs WHERE id = ?').get(id) as { project: string }).project, 'waimai');
    assert.deepEqual(runInScope(scope('other'), () => selectPage(ctx.db, { table: 'jobs', where: ["model = 'reconnected'"], limit: 5 })!.rows), []);
  });

  test('file backups are SQLite-only and say what to use instead', { skip: D !== 'postgres' && 'the backup tests cover SQLite' }, () => {
    assert.throws(() => sqliteOnly(ctx.db, 'weitiao backup'), /pg_dump/);
  });
});
