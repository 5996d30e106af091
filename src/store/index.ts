/**
 * The embedded store: one SQLite file (WAL mode, so the API reads while the worker writes).
 * Opening it runs any pending migrations. Each domain keeps the SQL of the tables it owns in one repository
 * module (src/jobs/repository.ts: jobs, job_events, checkpoints; src/evals/internal/repository.ts; …).
 */
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.js';
import { PROJECT_TABLES, registerScopeFunctions } from '../projects/scope.js';

export type DB = Database.Database;

export function openDatabase(file: string): DB {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  // Before migrating: migration 4's triggers call these (the request's project, src/projects).
  registerScopeFunctions(db);
  migrate(db);
  return db;
}

function migrate(db: DB): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new Error(`the store is at schema version ${current}, newer than this weitiao (${MIGRATIONS.length}): upgrade weitiao`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

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
