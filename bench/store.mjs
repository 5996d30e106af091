#!/usr/bin/env node
// The store's cost per operation on SQLite and on PostgreSQL (issue 19; a measurement, not a timed test), in one
// run on this machine: a point read (a job by id), an event append, a job claim (one process), and a claimed job
// per second with 4 processes claiming at once (src/testing/queue-claimer.ts). PostgreSQL is a throwaway local
// server (src/testing/postgres.ts), so its figures are one host's round trips, not a network's.
//
//   node --import tsx bench/store.mjs [--jobs 2000]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { claimWaitingJob, getJobRow, insertEvent, insertJob } from '../src/jobs/repository.ts';
import { newId, now, openDatabase } from '../src/store/index.ts';
import { createTestDatabase } from '../src/testing/postgres.ts';

const { values: args } = parseArgs({ options: { jobs: { type: 'string', default: '2000' } } });
const N = Number(args.jobs);
const REPO = path.resolve(import.meta.dirname, '..');
const dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-bench-store-'));

function queue(db, n) {
  const ids = [];
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const id = newId('ftjob');
      insertJob(db, { id, model: 'm', training_file: 'f', validation_file: null, status: 'queued', method: '{}', extension: '{}', suffix: null, seed: i, metadata: null, created_at: now() });
      ids.push(id);
    }
  })();
  return ids;
}

const perOp = (n, fn) => {
  const t = performance.now();
  for (let i = 0; i < n; i++) fn(i);
  return ((performance.now() - t) * 1000) / n; // µs
};

async function contention(location, db) {
  const ids = queue(db, N);
  const go = path.join(dir, `go-${Math.random()}`);
  const runs = ['a', 'b', 'c', 'd'].map(
    (w) =>
      new Promise((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'src/testing/queue-claimer.ts'), location, w, go], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`claimer ${w}: ${code}`))));
      }),
  );
  await new Promise((r) => setTimeout(r, 2000));
  writeFileSync(go, '');
  const results = await Promise.all(runs);
  const claimed = results.flatMap((r) => r.claimed);
  if (claimed.length !== ids.length || new Set(claimed).size !== ids.length) throw new Error('a job was claimed twice or not at all');
  const ms = Math.max(...results.map((r) => r.ms));
  return { perSecond: (ids.length / ms) * 1000, split: results.map((r) => r.claimed.length).join('/') };
}

const rows = [];
for (const [name, location] of [['SQLite (WAL, one file)', path.join(dir, 'store.sqlite')], ['PostgreSQL 127.0.0.1', createTestDatabase()]]) {
  const db = openDatabase(location);
  const ids = queue(db, 500);
  const read = perOp(2000, (i) => getJobRow(db, ids[i % ids.length]));
  const append = perOp(1000, (i) => insertEvent(db, { id: newId('ftevent'), job_id: ids[i % ids.length], created_at: now(), level: 'info', type: 'message', message: '第 1 步', data: null }));
  const claim = perOp(500, () => claimWaitingJob(db, 'bench', undefined, ['queued']));
  const c = await contention(location, db);
  rows.push(`| ${name} | ${read.toFixed(0)} | ${append.toFixed(0)} | ${claim.toFixed(0)} | ${c.perSecond.toFixed(0)} (${c.split}) |`);
  db.close();
}
console.log(`\n${os.cpus()[0]?.model} × ${os.cpus().length}, ${N} jobs claimed by 4 processes\n`);
console.log('| store | point read µs | event append µs | claim µs (1 process) | claims/s, 4 processes (split) |');
console.log('|---|---:|---:|---:|---:|');
for (const r of rows) console.log(r);
rmSync(dir, { recursive: true, force: true });
process.exit(0);
