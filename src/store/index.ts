/**
 * The store: one SQLite file by default (WAL mode, so the API reads while the worker writes), or PostgreSQL
 * when `WEITIAO_DATABASE_URL=postgres://…` names one (src/store/postgres), for a team whose API, workers and
 * console run on several hosts. Both sit behind the small synchronous interface `DB` below, and one list of
 * migrations (migrations.ts) makes the same schema on both. Opening the store runs any pending migrations.
 * Each domain keeps the SQL of the tables it owns in one repository module (src/jobs/repository.ts: jobs,
 * job_events, checkpoints; src/evals/internal/repository.ts; …), written in the SQL both back ends run.
 */
import Database from 'better-sqlite3';
import { MIGRATIONS, postgresMigration } from './migrations.js';
import { PostgresDatabase } from './postgres/database.js';
import { PROJECT_TABLES, registerScopeFunctions } from '../projects/scope.js';
import { WeitiaoError } from '../errors.js';

export interface RunResult {
  changes: number;
  lastInsertRowid: number | bigint;
}

/** A prepared statement: `?` placeholders, or `@name` ones bound from one object. */
export interface Statement {
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
  run(...params: unknown[]): RunResult;
}

/** `db.transaction(fn)` as better-sqlite3 has it: nested calls become savepoints; a throw rolls back. */
export type TransactionFn = (...args: never[]) => unknown;
export type Transaction<F extends TransactionFn> = Database.Transaction<F>;

/** What the repositories use of a store, on either back end. */
export interface DB {
  readonly dialect: 'sqlite' | 'postgres';
  prepare(sql: string): Statement;
  exec(sql: string): unknown;
  transaction<F extends TransactionFn>(fn: F): Transaction<F>;
  close(): unknown;
}

export type SqliteDB = Database.Database & { readonly dialect: 'sqlite' };

/** Opens the store at `location`: a postgres:// URL, or the path of the SQLite file. */
export function openDatabase(location: string): DB {
  return /^postgres(ql)?:\/\//.test(location) ? openPostgres(location) : openSqlite(location);
}

function openSqlite(file: string): SqliteDB {
  const db = Object.assign(new Database(file), { dialect: 'sqlite' as const });
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  // Before migrating: migration 4's triggers call these (the request's project, src/projects).
  registerScopeFunctions(db);
  const current = db.pragma('user_version', { simple: true }) as number;
  checkVersion(current);
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return db;
}

function openPostgres(url: string): DB {
  const db = new PostgresDatabase(url);
  try {
    db.exec('CREATE TABLE IF NOT EXISTS weitiao_schema (version INTEGER NOT NULL)');
  } catch (err) {
    db.close();
    throw new WeitiaoError('unavailable', `cannot open the PostgreSQL store ${redact(url)}: ${(err as Error).message} / 无法连接 PostgreSQL`);
  }
  // Processes starting together (the API and its workers) migrate one at a time: the lock is the transaction's.
  db.transaction(() => {
    db.prepare('SELECT pg_advisory_xact_lock(7727)').get();
    const row = db.prepare('SELECT version FROM weitiao_schema').get() as { version: number } | undefined;
    if (!row) db.prepare('INSERT INTO weitiao_schema (version) VALUES (0)').run();
    const current = row?.version ?? 0;
    checkVersion(current);
    for (let v = current; v < MIGRATIONS.length; v++) {
      db.exec(postgresMigration(v));
      db.prepare('UPDATE weitiao_schema SET version = ?').run(v + 1);
    }
  })();
  return db;
}

function checkVersion(current: number): void {
  if (current > MIGRATIONS.length) {
    throw new Error(`the store is at schema version ${current}, newer than this weitiao (${MIGRATIONS.length}): upgrade weitiao`);
  }
}

/** The URL without its password, for messages. */
export const redact = (url: string): string => url.replace(/\/\/([^:/@]+):[^@/]*@/, '//$1:***@');

/** The SQLite handle behind `db` for what only SQLite has (file backups, pragmas); a clear error on PostgreSQL. */
export function sqliteOnly(db: DB, what: string): SqliteDB {
  if (db.dialect !== 'sqlite') {
    throw new WeitiaoError('invalid_request', `${what} works on the embedded SQLite store; on PostgreSQL use its own tools (pg_dump) / ${what} 仅适用于内置 SQLite`);
  }
  return db as SqliteDB;
}

/** SQL for the number at `path` (`key` or `outer.inner`) of the JSON text in `column` (NULL when absent). */
export function jsonNumber(db: DB, column: string, path: string): string {
  return db.dialect === 'postgres' ? `(${column}::jsonb #>> '{${path.split('.').join(',')}}')::double precision` : `json_extract(${column}, '$.${path}')`;
}

/**
 * What a claim's SELECT ends with: PostgreSQL locks the row it picked and skips rows other claimers hold, so
 * concurrent workers each take a different job at once; SQLite's claim transaction is IMMEDIATE (one writer).
 */
export const skipLocked = (db: DB): string => (db.dialect === 'postgres' ? ' FOR UPDATE SKIP LOCKED' : '');

/** Unix seconds, OpenAI's time unit. */
export const now = (): number => Math.floor(Date.now() / 1000);

/** `prefix-` + 24 random base-36 characters, like OpenAI's ids. */
export function newId(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `${prefix}-${Array.from(bytes, (b) => (b % 36).toString(36)).join('')}`;
}

/** OpenAI's list envelope: `{object: 'list', data, has_more, first_id, last_id}`. */
export interface ListPage<T extends { id: string }> {
  object: 'list';
  data: T[];
  has_more: boolean;
  first_id: string | null;
  last_id: string | null;
}

export function listPage<T extends { id: string }>(data: T[], hasMore: boolean): ListPage<T> {
  return { object: 'list', data, has_more: hasMore, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null };
}

export interface PageQuery {
  /** A table name (a constant in code, never user input). */
  table: string;
  /** SQL conditions ANDed together, with `?` placeholders bound from `params`. */
  where?: string[];
  params?: unknown[];
  /** The id of the last row of the previous page: this page starts after it. */
  after?: string;
  limit: number;
  /** `desc` = newest first (OpenAI's default for lists). */
  order?: 'asc' | 'desc';
  /** Column giving the total order; `rowid` is insertion order (created_at has only second resolution). */
  orderBy?: string;
}

/**
 * One page of rows in OpenAI's cursor style: the rows after the row whose id is `after`, and whether
 * more follow. Returns `null` rows when `after` names no row, so the caller can raise its own not-found.
 */
export function selectPage<Row>(db: DB, q: PageQuery): { rows: Row[]; has_more: boolean } | null {
  const key = q.orderBy ?? 'rowid';
  const order = q.order ?? 'desc';
  const where = [...(q.where ?? [])];
  const params = [...(q.params ?? [])];
  // Lists never show another project's rows (src/projects); outside a request or command scope all rows.
  if (PROJECT_TABLES.has(q.table)) where.push('weitiao_visible(project)');
  if (q.after !== undefined) {
    const cursor = db.prepare(`SELECT ${key} AS k FROM ${q.table} WHERE id = ?`).get(q.after) as { k: number } | undefined;
    if (!cursor) return null;
    where.push(`${key} ${order === 'desc' ? '<' : '>'} ?`);
    params.push(cursor.k);
  }
  const sql =
    `SELECT * FROM ${q.table}` +
    (where.length ? ` WHERE ${where.map((w) => `(${w})`).join(' AND ')}` : '') +
    ` ORDER BY ${key} ${order} LIMIT ?`;
  const rows = db.prepare(sql).all(...params, q.limit + 1) as Row[];
  return { rows: rows.slice(0, q.limit), has_more: rows.length > q.limit };
}
