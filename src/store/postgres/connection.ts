/**
 * A synchronous PostgreSQL connection, so the store keeps one synchronous interface on both back ends
 * (better-sqlite3's, which every repository is written against). The `pg` client lives on its own worker
 * thread; a call posts the queries there and blocks in Atomics.wait until the answer is in (the pattern of
 * synckit). The price is the one better-sqlite3 already pays: the event loop waits while a query runs, here
 * for a network round trip (bench/store.mjs measures it). Queries of one call run in order on one session.
 */
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';

export interface Query {
  text: string;
  values: unknown[];
}
/**
 * `scope`: the request's project and the visible project ('' = all), which the session must carry when the queries
 * run (the SQL functions weitiao_project()/weitiao_visible() read them); the thread sets them when its session
 * does not have them (a new session after a reconnect, or `scopeUnknown` after a rollback undid them).
 */
export type Request = { type: 'query'; queries: Query[]; scope: [string, string]; scopeUnknown: boolean } | { type: 'close' };
export interface QueryResult {
  rows: Record<string, unknown>[];
  rowCount: number;
}
export type Reply =
  | { type: 'ok'; results: QueryResult[] }
  | { type: 'error'; message: string; code: string | null; detail: string | null };

/** An error PostgreSQL (or the connection) raised; `code` is the SQLSTATE (23505 unique violation, …). */
export class PostgresError extends Error {
  constructor(
    message: string,
    readonly code: string | null,
    readonly detail: string | null,
  ) {
    super(message);
    this.name = 'PostgresError';
  }
}

// Built, the thread is ./thread.js. Under tsx (the tests) it is .ts, and a worker does not inherit tsx's loader:
// the worker registers it first.
const UNDER_TSX = import.meta.url.endsWith('.ts');
const THREAD = new URL(UNDER_TSX ? './thread.ts' : './thread.js', import.meta.url);
const threadEntry = (): [string | URL, { eval?: boolean }] =>
  UNDER_TSX
    ? [`import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((tsx) => { tsx.register(); return import(${JSON.stringify(THREAD.href)}); })`, { eval: true }]
    : [THREAD, {}];
/** A query that has not answered in this long fails (a server that stopped answering must not hang the process). */
const TIMEOUT_MS = Number(process.env.WEITIAO_DATABASE_TIMEOUT_MS ?? 60_000);

export class SyncConnection {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));
  private closed = false;

  constructor(readonly url: string) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const [entry, options] = threadEntry();
    this.worker = new Worker(entry, { ...options, workerData: { url, port: port2, signal: this.flag.buffer }, transferList: [port2] });
    // The thread never keeps the process alive by itself: a CLI command ends when its work does.
    this.worker.unref();
    this.port.unref();
  }

  /** Runs the queries in order in one round trip to the thread, in a session carrying `scope`; their results. */
  query(queries: Query[], scope: [string, string] = ['default', ''], scopeUnknown = false): QueryResult[] {
    const reply = this.call({ type: 'query', queries, scope, scopeUnknown });
    if (reply.type === 'error') throw new PostgresError(reply.message, reply.code, reply.detail);
    return reply.results;
  }

  close(): void {
    if (this.closed) return;
    try {
      this.call({ type: 'close' });
    } finally {
      this.closed = true;
      void this.worker.terminate();
    }
  }

  private call(request: Request): Reply {
    if (this.closed) throw new PostgresError('the database connection is closed', null, null);
    Atomics.store(this.flag, 0, 0);
    this.port.postMessage(request);
    if (Atomics.wait(this.flag, 0, 0, TIMEOUT_MS) === 'timed-out') {
      // Its late answer must not be taken for the next call's: this connection is done.
      this.closed = true;
      void this.worker.terminate();
      throw new PostgresError(`the database did not answer within ${TIMEOUT_MS / 1000} s / 数据库无响应`, null, null);
    }
    // The answer is queued before the signal is raised; should it still be in flight, wait for it a moment.
    for (let waited = 0; ; waited++) {
      const message = receiveMessageOnPort(this.port);
      if (message) return message.message as Reply;
      if (waited >= 1000) throw new PostgresError('the database thread answered nothing', null, null);
      Atomics.wait(this.flag, 0, 1, 1); // 1 ms
    }
  }
}
