// Runs every `*.test.ts` under src/ and web/ (the console's browser test) with node's own test runner (through tsx, so no build is needed).
// Node 20's `--test` does not expand globs itself. Pass paths or substrings to run a subset:
//   node scripts/run-node-tests.mjs data jobs
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function find(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : find(p);
    return e.name.endsWith('.test.ts') ? [p] : [];
  });
}

// `--postgres`: the store and queue suites again, on a PostgreSQL server each test process starts
// (src/testing/postgres.ts): the same tests, the same code, the other back end.
const POSTGRES_SUITES = [
  'src/store/store.test.ts',
  'src/store/queue.test.ts',
  'src/jobs/jobs.test.ts',
  'src/files/files.test.ts',
  'src/keys/keys.test.ts',
  'src/evals/evals.test.ts',
  'src/api/reliability-projects.test.ts',
  'src/workers/leases.test.ts',
  'src/workers/groups.test.ts',
  'src/workers/remote.e2e.test.ts',
];
const postgres = process.argv.includes('--postgres');
const filters = process.argv.slice(2).filter((a) => a !== '--postgres');
const files = [...find('src'), ...find('web')]
  .sort()
  .filter((f) => !postgres || POSTGRES_SUITES.includes(f))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)));
if (files.length === 0) {
  console.error('no test files match', filters);
  process.exit(1);
}
const concurrency = process.env.WEITIAO_TEST_CONCURRENCY ?? '2';
// One tiny-model build per distinct request for the whole run, shared by the test files (src/models/internal/tiny-cache.ts):
// a fresh directory, removed after, unless WEITIAO_TINY_CACHE names one to keep.
const tinyCache = process.env.WEITIAO_TINY_CACHE || mkdtempSync(path.join(os.tmpdir(), 'weitiao-tiny-cache-'));
const child = spawn(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files],
  // One torch thread per engine unless a request says otherwise: test files run two at a time on 2 cores (engine/weitiao_engine/loading.py).
  // The precision probe's figures are shared the same way: one probe per run, not one per test home (training/precision_probe.py).
  {
    stdio: 'inherit',
    env: {
      WEITIAO_ENGINE_THREADS: '1',
      ...process.env,
      WEITIAO_TINY_CACHE: tinyCache,
      WEITIAO_PROBE_SHARED_CACHE: tinyCache,
      ...(postgres ? { WEITIAO_TEST_DATABASE: 'postgres' } : {}),
    },
  },
);
// A stopped run (Ctrl-C, kill) stops the tests too and still removes the cache.
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => child.kill(signal));
child.on('exit', (code) => {
  if (!process.env.WEITIAO_TINY_CACHE) rmSync(tinyCache, { recursive: true, force: true });
  process.exit(code ?? 1);
});
