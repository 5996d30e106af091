/**
 * What every service needs: the home directory's paths and the open store.
 * CLI commands, the API server and tests each open one context and pass it to services.
 * The store is the home's SQLite file unless WEITIAO_DATABASE_URL (or `databaseUrl`) names a PostgreSQL one.
 */
import { openDatabase, type DB } from './store/index.js';
import { resolveHome, type Home } from './home.js';

export interface Context {
  home: Home;
  db: DB;
  close(): void;
}

export function openContext(options: { home?: string; databaseUrl?: string } = {}): Context {
  const home = resolveHome(options.home);
  const db = openDatabase(options.databaseUrl || process.env.WEITIAO_DATABASE_URL || home.db);
  return { home, db, close: () => db.close() };
}
