#!/usr/bin/env node
// Claims under contention (issue 19; a measurement, not a timed test): how many jobs per second remote workers
// can claim from one API process. A temp home with the tiny model; N queued jobs created through the jobs
// service (one validated for real, the others given its resolved settings); the API on 127.0.0.1 (worker off);
// C concurrent HTTP claimers, each claim followed by finish-as-cancelled, until every claim answers 204.
// Prints claims/s and claim latency (p50, p99, max); checks that no job was claimed twice.
//
//   node --import tsx bench/workers.mjs [--jobs 200] [--claimers 8]
import { parseArgs } from 'node:util';
import { startServer } from '../src/api/index.ts';
import { createJob, retrieveJob, Worker } from '../src/jobs/index.ts';
import { createKey } from '../src/keys/index.ts';
import { setUpFixture } from '../src/testing/jobs-fixture.ts';
import { WORKER_PROTOCOL_VERSION, WORKERS_PATH } from '../src/workers/index.ts';

const { values: args } = parseArgs({ options: { jobs: { type: 'string', default: '200' }, claimers: { type: 'string', default: '8' } } });
const N = Number(args.jobs);
const C = Number(args.claimers);

process.env.WEITIAO_LEASE_SECONDS ??= '600';
const fx = await setUpFixture('bench-workers');
const params = (i) => ({
  model: fx.model,
  training_file: fx.train,
  suffix: `b${i}`,
  method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 8, n_epochs: 1 } } },
  weitiao: { max_steps: 1 },
});
const first = createJob(fx.ctx, params(0));
await new Worker(fx.ctx, { train: false }).runNext(); // the real validation, once
const validated = fx.ctx.db.prepare('SELECT extension FROM jobs WHERE id = ?').get(first.id).extension;
if (retrieveJob(fx.ctx, first.id).status !== 'queued') throw new Error(`validation failed: ${JSON.stringify(retrieveJob(fx.ctx, first.id).error)}`);
const t0 = performance.now();
for (let i = 1; i < N; i++) {
  const job = createJob(fx.ctx, params(i));
  // The same files and settings as the validated job: its resolved extension, queued (what validation would do).
  fx.ctx.db.prepare(`UPDATE jobs SET extension = ?, status = 'queued' WHERE id = ?`).run(validated, job.id);
}
console.log(`created ${N} queued jobs in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

const key = createKey(fx.ctx, { name: 'bench', role: 'worker' }).key;
const server = await startServer(fx.ctx, { port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
const post = (route, json) =>
  fetch(`${server.url}${route}`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(json) });

const latencies = [];
const claimed = new Map();
async function claimer(k) {
  const worker = { name: `bench-${k}`, host: 'bench', devices: [{ type: 'cpu', name: 'cpu', memory_bytes: null }], memory_bytes: null, methods: ['supervised'] };
  for (;;) {
    const t = performance.now();
    const res = await post(`${WORKERS_PATH}/claim`, { protocol_version: WORKER_PROTOCOL_VERSION, worker });
    latencies.push(performance.now() - t);
    if (res.status === 204) return;
    if (res.status !== 200) throw new Error(`claim: ${res.status} ${await res.text()}`);
    const { lease } = await res.json();
    claimed.set(lease.job_id, (claimed.get(lease.job_id) ?? 0) + 1);
    const fin = await post(`${WORKERS_PATH}/leases/${lease.id}/finish`, { result: null, failure: null, engine_error: false, stop_reason: 'cancel' });
    if (fin.status !== 200) throw new Error(`finish: ${fin.status} ${await fin.text()}`);
  }
}
const start = performance.now();
await Promise.all(Array.from({ length: C }, (_, k) => claimer(k)));
const seconds = (performance.now() - start) / 1000;
await server.close();

const sorted = latencies.sort((a, b) => a - b);
const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))].toFixed(1);
const twice = [...claimed.values()].filter((n) => n > 1).length;
console.log(`${claimed.size} jobs claimed (and finished as cancelled) by ${C} concurrent claimers in ${seconds.toFixed(2)} s`);
console.log(`claims/s (claim + finish round trips): ${(claimed.size / seconds).toFixed(1)}`);
console.log(`claim latency ms: p50 ${pct(50)}, p99 ${pct(99)}, max ${sorted.at(-1).toFixed(1)} (${sorted.length} calls incl. the final 204s)`);
console.log(`claimed twice: ${twice}; unclaimed: ${N - claimed.size}`);
fx.close();
if (twice || claimed.size !== N) process.exit(1);
