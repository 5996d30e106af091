// The job queue's claims on the store, on SQLite (`make test-node`) and on PostgreSQL (the --postgres pass,
// src/testing/postgres.ts): several processes claim at once and every job goes to exactly one of them; on
// PostgreSQL a claim skips a job another transaction holds (FOR UPDATE SKIP LOCKED) instead of waiting for it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { Context } from '../context.js';
import { claimWaitingJob, getJobRow, insertJob } from '../jobs/repository.js';
import { openTestContext, testDatabaseUrl, TEST_DIALECT } from '../testing/postgres.js';
import { newId, now, openDatabase } from './index.js';

const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
const CLAIMER = path.join(REPO_ROOT, 'src', 'testing', 'queue-claimer.ts');
let dir: string;
let ctx: Context;

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-queue-'));
  ctx = openTestContext(path.join(dir, 'home'));
});
after(() => {
  ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

function queueJobs(n: number): string[] {
  const ids: string[] = [];
  ctx.db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const id = newId('ftjob');
      insertJob(ctx.db, {
        id, model: 'tiny', training_file: 'file-x', validation_file: null, status: 'queued',
        method: '{"type":"supervised"}', extension: '{}', suffix: null, seed: i, metadata: null, created_at: now(),
      });
      ids.push(id);
    }
  })();
  return ids;
}

test(`${TEST_DIALECT}: four processes claim 1000 jobs at once; each job goes to exactly one`, { timeout: 180_000 }, async () => {
  const ids = queueJobs(1000);
  const location = testDatabaseUrl(ctx.home.root) ?? ctx.home.db;
  const go = path.join(dir, 'go');
  const runs = ['w1', 'w2', 'w3', 'w4'].map(
    (w) =>
      new Promise<{ workerId: string; claimed: string[]; ms: number }>((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', CLAIMER, location, w, go], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => (err += d.toString()));
        child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`claimer ${w} exited ${code}: ${err}`))));
      }),
  );
  await new Promise((r) => setTimeout(r, 1500)); // the claimers open the store, then all start on the go file
  writeFileSync(go, '');
  const results = await Promise.all(runs);

  const all = results.flatMap((r) => r.claimed);
  assert.equal(all.length, ids.length, 'every job claimed once: no job twice, none left');
  assert.deepEqual(new Set(all), new Set(ids));
  for (const r of results) for (const id of r.claimed) assert.equal(getJobRow(ctx.db, id)?.worker_id, r.workerId);
  // The figure for the notes (jobs/s claimed under contention); not asserted, the machine's load decides it.
  const slowest = Math.max(...results.map((r) => r.ms));
  console.log(`${TEST_DIALECT}: ${ids.length} claims by 4 processes in ${slowest.toFixed(0)} ms = ${((ids.length / slowest) * 1000).toFixed(0)} claims/s; per process ${results.map((r) => r.claimed.length).join('/')}`);
});

test(`${TEST_DIALECT}: a claim skips the job another transaction is claiming, without waiting for it`, { skip: TEST_DIALECT !== 'postgres' && 'SQLite has one writer at a time: there a second claim waits' }, () => {
  const [first, second] = queueJobs(2);
  ctx.db.prepare("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued' AND id NOT IN (?, ?)").run(first, second);
  const other = openDatabase(testDatabaseUrl(ctx.home.root)!);
  try {
    ctx.db.transaction(() => {
      const mine = claimWaitingJob(ctx.db, 'holder', undefined, ['queued']);
      assert.equal(mine?.id, first);
      // Still inside the holder's open transaction: the other connection gets the next job at once.
      const theirs = claimWaitingJob(other, 'other', undefined, ['queued']);
      assert.equal(theirs?.id, second);
      assert.equal(claimWaitingJob(other, 'other', undefined, ['queued']), null);
    })();
    assert.equal(getJobRow(ctx.db, first)?.worker_id, 'holder');
    assert.equal(getJobRow(ctx.db, second)?.worker_id, 'other');
  } finally {
    other.close();
  }
});
