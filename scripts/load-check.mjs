// Load check for the HTTP API (not a timed test): concurrent GET list/retrieve requests against a real
// server on 127.0.0.1 while its worker trains a job, for a bounded time. Prints requests/s, errors and
// latency percentiles.
//
//   node --import tsx scripts/load-check.mjs [--seconds 10] [--concurrency 16]
//
// Set-up happens in this process (a temporary home, an API key, a tiny model, the waimai slice); the
// server runs as its own process (src/api/serve-main.ts) so the load generator does not share its event loop.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openAsBlob } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'node:http';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '10' }, concurrency: { type: 'string', default: '16' } },
});
const SECONDS = Number(values.seconds);
const CONCURRENCY = Number(values.concurrency);

const { openContext } = await import(path.join(REPO, 'src/context.ts'));
const { createKey } = await import(path.join(REPO, 'src/keys/index.ts'));
const { createTestModel, writeWaimaiJsonl } = await import(path.join(REPO, 'src/api/internal/test-support.ts'));

const dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-load-'));
const home = path.join(dir, 'home');
const ctx = openContext({ home });
let server;
try {
  const { key } = createKey(ctx, { name: 'load-check' });
  const model = await createTestModel(ctx);
  const data = writeWaimaiJsonl(dir, 64, 32);

  server = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'src/api/serve-main.ts'), '--home', home, '--port', '0'], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise((resolve, reject) => {
    readline.createInterface({ input: server.stdout }).once('line', (line) => resolve(JSON.parse(line).url));
    server.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const { port } = new URL(url);
  const headers = { authorization: `Bearer ${key}` };
  const api = async (method, p, body) => {
    const res = await fetch(`${url}${p}`, { method, headers: { ...headers, ...(body && !(body instanceof FormData) ? { 'content-type': 'application/json' } : {}) }, body: body instanceof FormData ? body : body && JSON.stringify(body) });
    const json = await res.json();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };

  // A job long enough to train through the whole measurement (cancelled afterwards).
  const form = new FormData();
  form.append('file', await openAsBlob(data.train), 'train.jsonl');
  form.append('purpose', 'fine-tune');
  const file = await api('POST', '/v1/files', form);
  const job = await api('POST', '/v1/fine_tuning/jobs', {
    model,
    training_file: file.id,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 10, batch_size: 1 } } },
  });
  process.stderr.write(`waiting for job ${job.id} to train…\n`);
  for (;;) {
    const events = await api('GET', `/v1/fine_tuning/jobs/${job.id}/events?limit=5`);
    if (events.data.some((e) => e.type === 'metrics')) break;
    const j = await api('GET', `/v1/fine_tuning/jobs/${job.id}`);
    if (['failed', 'cancelled', 'succeeded'].includes(j.status)) throw new Error(`job ended before the check: ${j.status}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  const stepAtStart = (await api('GET', `/v1/fine_tuning/jobs/${job.id}`)).weitiao.progress?.step ?? 0;

  // The routes a dashboard or an SDK polls: lists and retrieves.
  const paths = [
    '/v1/fine_tuning/jobs?limit=20',
    `/v1/fine_tuning/jobs/${job.id}`,
    `/v1/fine_tuning/jobs/${job.id}/events?limit=20`,
    `/v1/fine_tuning/jobs/${job.id}/checkpoints`,
    '/v1/files',
    `/v1/files/${file.id}`,
    '/v1/models',
    `/v1/models/${encodeURIComponent(model)}`,
  ];
  // Plain node:http with keep-alive: the client should cost less than the server it measures.
  const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const get = (p) =>
    new Promise((resolve) => {
      const started = process.hrtime.bigint();
      const req = request({ host: '127.0.0.1', port, path: p, headers, agent }, (res) => {
        res.resume();
        res.on('end', () => resolve({ ok: res.statusCode === 200, status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6 }));
      });
      req.on('error', (err) => resolve({ ok: false, status: err.code, ms: Number(process.hrtime.bigint() - started) / 1e6 }));
      req.end();
    });

  const latencies = [];
  const errors = new Map();
  const perRoute = new Map(paths.map((p) => [p.split('?')[0], 0]));
  let n = 0;
  const t0 = performance.now();
  const deadline = t0 + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, w) => {
      for (let i = w; performance.now() < deadline; i++) {
        const p = paths[i % paths.length];
        const r = await get(p);
        n++;
        latencies.push(r.ms);
        perRoute.set(p.split('?')[0], perRoute.get(p.split('?')[0]) + 1);
        if (!r.ok) errors.set(r.status, (errors.get(r.status) ?? 0) + 1);
      }
    }),
  );
  const elapsed = (performance.now() - t0) / 1000;
  agent.destroy();

  const after = await api('GET', `/v1/fine_tuning/jobs/${job.id}`);
  latencies.sort((a, b) => a - b);
  const pct = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(1);
  const errorCount = [...errors.values()].reduce((a, b) => a + b, 0);
  console.log(`load check: ${n} requests in ${elapsed.toFixed(1)} s with ${CONCURRENCY} concurrent clients on 127.0.0.1`);
  console.log(`  ${(n / elapsed).toFixed(0)} requests/s, ${errorCount} errors${errorCount ? ` ${JSON.stringify(Object.fromEntries(errors))}` : ''}`);
  console.log(`  latency ms: p50 ${pct(0.5)}, p90 ${pct(0.9)}, p99 ${pct(0.99)}, max ${latencies.at(-1).toFixed(1)}`);
  console.log(`  job ${job.id}: ${after.status}, step ${stepAtStart} → ${after.weitiao.progress?.step} of ${after.weitiao.progress?.total_steps} during the check`);
  console.log(`  per route: ${[...perRoute].map(([p, c]) => `${p.replace(job.id, ':id').replace(file.id, ':id').replace(encodeURIComponent(model), ':id')} ${c}`).join(', ')}`);

  await api('POST', `/v1/fine_tuning/jobs/${job.id}/cancel`);
  process.exitCode = errorCount === 0 && after.status === 'running' ? 0 : 1;
} finally {
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  ctx.close();
  rmSync(dir, { recursive: true, force: true });
}
