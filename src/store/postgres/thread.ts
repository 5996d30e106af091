/**
 * The PostgreSQL connection's own thread (see connection.ts): one `pg` client, one request at a time. Each
 * answer is posted back and then the shared signal is raised, which wakes the caller blocked in Atomics.wait.
 */
import { workerData, type MessagePort } from 'node:worker_threads';
import pg from 'pg';
import type { Reply, Request } from './connection.js';

// BIGINT (counts, unix seconds, seqs) and NUMERIC (SUM, AVG) as numbers, as SQLite gives them: every value the
// store keeps is far below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));
pg.types.setTypeParser(1700, (v) => Number(v));

const { url, port, signal } = workerData as { url: string; port: MessagePort; signal: SharedArrayBuffer };
const flag = new Int32Array(signal);

let client: pg.Client | null = null;
let connecting: Promise<unknown> | null = null;
/** The scope settings `client`'s session has ('project|visible'), null when unknown. */
let sessionScope: string | null = null;

/** The connected client; a new one after the server dropped the old (a restart, a network cut). */
async function connection(): Promise<pg.Client> {
  if (!client) {
    const c = new pg.Client({ connectionString: url, application_name: 'weitiao' });
    c.on('error', () => {
      if (client === c) client = connecting = null;
    });
    client = c;
    sessionScope = null;
    connecting = c.connect();
  }
  const c = client;
  try {
    await connecting;
  } catch (err) {
    if (client === c) client = connecting = null;
    throw err;
  }
  return c;
}

async function answer(request: Request): Promise<Reply> {
  try {
    if (request.type === 'close') {
      await client?.end();
      return { type: 'ok', results: [] };
    }
    const c = await connection();
    const wanted = request.scope.join('|');
    if (request.scopeUnknown) sessionScope = null;
    if (sessionScope !== wanted) {
      await c.query({ text: "SELECT set_config('weitiao.project', $1, false), set_config('weitiao.scope', $2, false)", values: request.scope });
      sessionScope = wanted;
    }
    const results = [];
    for (const q of request.queries) {
      const r = await c.query({ text: q.text, values: q.values });
      results.push({ rows: (r.rows ?? []) as Record<string, unknown>[], rowCount: r.rowCount ?? 0 });
    }
    return { type: 'ok', results };
  } catch (err) {
    const e = err as Error & { code?: string; detail?: string };
    return { type: 'error', message: e.message, code: e.code ?? null, detail: e.detail ?? null };
  }
}

port.on('message', (request: Request) => {
  void answer(request).then((reply) => {
    port.postMessage(reply);
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
    if (request.type === 'close') port.close();
  });
});
