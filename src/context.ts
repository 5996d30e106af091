/**
 * What every service needs: the home directory's paths and the open store.
 * CLI commands, the API server and tests each open one context and pass it to services.
 */
import { openDatabase, type DB } from './store/index.js';
import { resolveHome, type Home } from './home.js';

export interface Context {
  home: Home;
  db: DB;
  close(): void;
}

export function openContext(options: { home?: string } = {}): Context {
  const home = resolveHome(options.home);
  const db = openDatabase(home.db);
  return { home, db, close: () => db.close() };
}
