/**
 * The store on PostgreSQL (`WEITIAO_DATABASE_URL=postgres://…`), behind the same small interface the
 * repositories use on SQLite (src/store/index.ts `DB`): prepare(sql).get/all/run, exec, transaction.
 * The SQL stays the repositories' own; only what differs between the two is translated here:
 *   - placeholders: `?` and better-sqlite3's `@name` become `$1…`;
 *   - the request's project (src/projects): SQLite reads it through functions registered on the connection;
 *     here the session settings `weitiao.project` / `weitiao.scope` carry it to the SQL functions and triggers
 *     of the same names (migrations.ts, POSTGRES_TRIGGERS): every call states its scope and the connection's
 *     thread sets them when its session lacks them (thread.ts);
 *   - `rowid`: every table has a BIGSERIAL `rowid` column (insertion order, as SQLite's), left out of rows.
 */
import { activeScope, DEFAULT_PROJECT } from '../../projects/scope.js';
import { SyncConnection, type Query, type QueryResult } from './connection.js';
import type { DB, RunResult, Statement, Transaction, TransactionFn } from '../index.js';

export class PostgresDatabase implements DB {
  readonly dialect = 'postgres' as const;
  private readonly connection: SyncConnection;
  /** A rollback undid the session's scope settings: the next call says so. */
  private scopeUnknown = false;
  private depth = 0;

  constructor(url: string) {
    this.connection = new SyncConnection(url);
  }

  prepare(sql: string): Statement {
    return new PostgresStatement(this, sql);
  }

  /** Statements without parameters, several separated by `;` (DDL, BEGIN/COMMIT). */
  exec(sql: string): void {
    this.query([{ text: sql, values: [] }]);
  }

  transaction<F extends TransactionFn>(fn: F): Transaction<F> {
    const run = (...args: Parameters<F>): ReturnType<F> => {
      const savepoint = this.depth > 0 ? `weitiao_${this.depth}` : null;
      this.exec(savepoint ? `SAVEPOINT ${savepoint}` : 'BEGIN');
      this.depth++;
      let result: ReturnType<F>;
      try {
        result = fn(...args) as ReturnType<F>;
      } catch (err) {
        this.depth--;
        try {
          this.exec(savepoint ? `ROLLBACK TO SAVEPOINT ${savepoint}; RELEASE SAVEPOINT ${savepoint}` : 'ROLLBACK');
        } catch {
          // the connection is gone: the server has rolled back already
        }
        this.scopeUnknown = true; // the rollback may have undone scope settings made inside the transaction
        throw err;
      }
      this.depth--;
      this.exec(savepoint ? `RELEASE SAVEPOINT ${savepoint}` : 'COMMIT'); // a failed COMMIT has rolled back
      return result;
    };
    // SQLite's BEGIN IMMEDIATE/EXCLUSIVE take the write lock up front; here rows are locked as written, and
    // claims use FOR UPDATE SKIP LOCKED (src/store/index.ts `skipLocked`).
    return Object.assign(run, { default: run, deferred: run, immediate: run, exclusive: run }) as unknown as Transaction<F>;
  }

  close(): void {
    this.connection.close();
  }

  /** Runs the queries in one round trip, in the request's scope (its project; '' outside any scope: all visible). */
  query(queries: Query[]): QueryResult[] {
    const scope = activeScope();
    const unknown = this.scopeUnknown;
    this.scopeUnknown = false;
    return this.connection.query(queries, [scope?.project ?? DEFAULT_PROJECT, scope ? scope.project : ''], unknown);
  }
}

class PostgresStatement implements Statement {
  constructor(
    private readonly db: PostgresDatabase,
    private readonly sql: string,
  ) {}

  get(...params: unknown[]): unknown {
    return this.all(...params)[0];
  }

  all(...params: unknown[]): unknown[] {
    const rows = this.execute(params).rows;
    for (const row of rows) delete row.rowid;
    return rows;
  }

  run(...params: unknown[]): RunResult {
    return { changes: this.execute(params).rowCount, lastInsertRowid: 0 };
  }

  private execute(params: unknown[]): QueryResult {
    const named = params.length === 1 && isRecord(params[0]) ? params[0] : null;
    const { text, names } = toPositional(this.sql);
    const values = names.length ? names.map((n) => bindable((named ?? {})[n])) : params.map(bindable);
    return this.db.query([{ text, values }])[0];
  }
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v);

/** better-sqlite3 binds undefined as NULL and booleans never reach it; numbers and strings go as they are. */
const bindable = (v: unknown): unknown => (v === undefined ? null : v);

const translated = new Map<string, { text: string; names: string[] }>();

/**
 * `?` → `$1, $2…` in order; `@name` → one `$k` per distinct name (`names[k-1]`). Quoted strings, quoted
 * identifiers and comments are copied as they are. Cached: the repositories' SQL is a fixed set of strings.
 */
export function toPositional(sql: string): { text: string; names: string[] } {
  const cached = translated.get(sql);
  if (cached) return cached;
  let text = '';
  let n = 0;
  const names: string[] = [];
  for (let i = 0; i < sql.length; i++) {
    const c = sql[i];
    if (c === "'" || c === '"') {
      const end = sql.indexOf(c, i + 1);
      const stop = end < 0 ? sql.length : end + 1;
      text += sql.slice(i, stop);
      i = stop - 1;
    } else if (c === '-' && sql[i + 1] === '-') {
      const end = sql.indexOf('\n', i);
      const stop = end < 0 ? sql.length : end;
      text += sql.slice(i, stop);
      i = stop - 1;
    } else if (c === '?') {
      text += `$${++n}`;
    } else if (c === '@' && /[A-Za-z_]/.test(sql[i + 1] ?? '')) {
      const name = /^[A-Za-z_][A-Za-z0-9_]*/.exec(sql.slice(i + 1))![0];
      let k = names.indexOf(name);
      if (k < 0) k = names.push(name) - 1;
      text += `$${k + 1}`;
      i += name.length;
    } else {
      text += c;
    }
  }
  const result = { text, names };
  translated.set(sql, result);
  return result;
}
