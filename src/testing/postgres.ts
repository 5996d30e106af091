/**
 * A throwaway PostgreSQL server for the tests that run the store on PostgreSQL (`make test-node` runs those
 * files a second time with WEITIAO_TEST_DATABASE=postgres, scripts/run-node-tests.mjs). Debian's postgresql
 * binaries (`make postgres` installs them), a temp data directory, a free port on 127.0.0.1; as root, the server
 * runs as the unprivileged `postgres` user (PostgreSQL refuses root). One server per test process, started on
 * first use and stopped when the process exits; every `testDatabaseUrl()` is a new, empty database on it.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openContext, type Context } from '../context.js';
import { SyncConnection } from '../store/postgres/connection.js';

/** The back end the store tests run on: `postgres` when WEITIAO_TEST_DATABASE says so, else SQLite. */
export const TEST_DIALECT: 'sqlite' | 'postgres' = process.env.WEITIAO_TEST_DATABASE === 'postgres' ? 'postgres' : 'sqlite';

const databases = new Map<string, string>();

/**
 * The store of the test home `home`: on PostgreSQL its own database (the same one for every call with this home,
 * so a second connection sees the first's rows), created on first use; undefined on SQLite (the home's file).
 * A process the test starts on this home gets it as WEITIAO_DATABASE_URL (`testStoreEnv`).
 */
export function testDatabaseUrl(home: string): string | undefined {
  if (TEST_DIALECT !== 'postgres') return undefined;
  const key = path.resolve(home);
  let url = databases.get(key);
  if (!url) databases.set(key, (url = createTestDatabase()));
  return url;
}

/** openContext on the test home's store (SQLite file, or its PostgreSQL database under WEITIAO_TEST_DATABASE=postgres). */
export function openTestContext(home: string): Context {
  return openContext({ home, databaseUrl: testDatabaseUrl(home) });
}

/** The environment a child process (API server, CLI) on the test home needs to open the same store. */
export function testStoreEnv(home: string): Record<string, string> {
  const url = testDatabaseUrl(home);
  return url ? { WEITIAO_DATABASE_URL: url } : {};
}

let server: { url: string; admin: SyncConnection } | null = null;
let counter = 0;

/** A new empty database on this process's test server (started on first use). */
export function createTestDatabase(): string {
  server ??= startServer();
  const name = `weitiao_test_${process.pid}_${++counter}`;
  server.admin.query([{ text: `CREATE DATABASE ${name}`, values: [] }]);
  return `${server.url}/${name}`;
}

/** Where Debian (or PATH) keeps initdb and postgres. */
export function postgresBinDir(): string | null {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root).filter((v) => existsSync(path.join(root, v, 'bin', 'postgres')));
    versions.sort((a, b) => Number(b) - Number(a));
    if (versions.length) return path.join(root, versions[0], 'bin');
  }
  const which = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' });
  return which.status === 0 ? path.dirname(which.stdout.trim()) : null;
}

function startServer(): { url: string; admin: SyncConnection } {
  const bin = postgresBinDir();
  if (!bin) throw new Error('PostgreSQL is not installed: `make postgres` (apt-get install postgresql) / 未安装 PostgreSQL');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-pg-'));
  // As root, the server and initdb run as `postgres` (Debian's package makes that user), started with its uid/gid
  // directly (no runuser in between, so a signal reaches the server itself); the temp dir must be theirs.
  const ids = process.getuid?.() === 0 ? { uid: idOf('-u'), gid: idOf('-g') } : {};
  if (ids.uid !== undefined) chownSync(dir, ids.uid, ids.gid!);
  const data = path.join(dir, 'data');
  const init = spawnSync(path.join(bin, 'initdb'), ['-D', data, '-U', 'weitiao', '--auth=trust', '-E', 'UTF8', '--no-locale', '--no-sync'], { encoding: 'utf8', cwd: dir, ...ids });
  if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
  const port = freePort();
  // Durability settings off: a test server's data dies with it anyway, and fsync dominates small transactions.
  const child: ChildProcess = spawn(
    path.join(bin, 'postgres'),
    [
      '-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1',
      '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200',
    ], // prettier-ignore
    { stdio: ['ignore', 'ignore', 'pipe'], cwd: dir, ...ids },
  );
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  child.unref();
  (child.stderr as unknown as { unref?: () => void })?.unref?.();
  const stop = () => {
    try {
      child.kill('SIGQUIT'); // immediate shutdown: the data directory goes next
      spawnSync('sh', ['-c', `for i in $(seq 50); do kill -0 ${child.pid} 2>/dev/null || exit 0; sleep 0.1; done`]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  process.on('exit', stop);
  // A test process stopped by a signal (the runner's timeout, Ctrl-C) takes its server with it too.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      stop();
      process.exit(signal === 'SIGINT' ? 130 : 143);
    });
  }
  const url = `postgres://weitiao@127.0.0.1:${port}`;
  const ready = spawnSync(
    'sh',
    ['-c', `for i in $(seq 300); do "${path.join(bin, 'pg_isready')}" -q -h 127.0.0.1 -p ${port} && exit 0; sleep 0.1; done; exit 1`],
  );
  if (ready.status !== 0) throw new Error(`the test PostgreSQL did not start on port ${port}: ${log}`);
  return { url, admin: new SyncConnection(`${url}/postgres`) };
}

/** The `postgres` user's uid (`-u`) or gid (`-g`). */
function idOf(flag: '-u' | '-g'): number {
  return Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
}

/** A port nothing listens on now (the OS picks it; the server binds it a moment later). */
function freePort(): number {
  const probe = spawnSync(process.execPath, ['-e', "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"], { encoding: 'utf8' });
  const port = Number(probe.stdout.trim());
  if (!port) throw new Error('could not find a free port');
  return port;
}
