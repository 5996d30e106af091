/**
 * The embedded store: one SQLite file (WAL mode, so the API reads while the worker writes).
 * Opening it runs any pending migrations. Each table has one repo module beside this file.
 */
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.js';

export type DB = Database.Database;

export function openDatabase(file: string): DB {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
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
