/**
 * Online backup and restore of a whole home: the store through SQLite's backup API (a consistent snapshot
 * while the server and worker keep writing), then the files, models and job folders its rows name.
 *
 * ```ts
 * await backupHome(ctx, '/backups/2026-12-02');             // <dir>/weitiao.sqlite, files/, models/, jobs/, backup.json
 * await restoreHome('/srv/weitiao', '/backups/2026-12-02');  // refuses a home that is not empty unless force
 * ```
 * `backup.json` is written last: a folder without it is an interrupted backup and is not restored. Rows
 * store absolute paths, so a restore into another directory rewrites the old home's prefix to the new one.
 * A base model registered from a folder outside the home (`weitiao models add`) is not copied: the backup
 * lists it under `external`.
 */
import Database from 'better-sqlite3';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { WeitiaoError } from '../errors.js';
import { resolveHome } from '../home.js';
import type { Context } from '../context.js';
import { jobsSummary } from '../jobs/repository.js';
import { openDatabase, sqliteOnly, type DB } from './index.js';

export interface BackupManifest {
  object: 'weitiao.backup';
  version: 1;
  created_at: number;
  /** The home the backup was taken from (its rows' paths start with it). */
  home: string;
  /** The store's schema version (PRAGMA user_version). */
  schema_version: number;
  counts: { files: number; models: number; jobs: number; checkpoints: number };
  /** Folders copied, relative to the home. */
  copied: string[];
  /** Registered folders outside the home, not copied. */
  external: string[];
  bytes: number;
}

const MANIFEST = 'backup.json';
const STORE = 'weitiao.sqlite';

/** Copies the home into `dir` (which must be empty or absent, and outside the home). */
export async function backupHome(ctx: Context, dir: string): Promise<BackupManifest> {
  const target = path.resolve(dir);
  const root = ctx.home.root;
  if (target === root || target.startsWith(root + path.sep)) {
    throw new WeitiaoError('invalid_request', `the backup folder ${dir} is inside the home ${root}; pick one outside it / 备份目录不能位于数据目录内`, { param: 'dir' });
  }
  if (existsSync(target) && readdirSync(target).length) {
    throw new WeitiaoError('conflict', `the backup folder ${dir} is not empty; pick a new or empty folder / 备份目录非空`, { param: 'dir' });
  }
  const db = sqliteOnly(ctx.db, 'weitiao backup');
  mkdirSync(target, { recursive: true });
  await db.backup(path.join(target, STORE));

  // Copy what the snapshot's rows name, so the copy agrees with the snapshot (later uploads are not in it).
  const snapshot = Object.assign(new Database(path.join(target, STORE), { readonly: true }), { dialect: 'sqlite' as const });
  try {
    const rows = {
      files: snapshot.prepare('SELECT path FROM files').all() as { path: string }[],
      models: snapshot.prepare('SELECT path FROM models').all() as { path: string }[],
      ...jobsSummary(snapshot as DB),
    };
    const folders = new Set<string>();
    const external: string[] = [];
    const inside = (p: string) => p.startsWith(root + path.sep);
    for (const f of rows.files) if (inside(f.path)) folders.add(path.dirname(f.path));
    for (const j of rows.jobs) folders.add(path.join(ctx.home.jobs, j.id));
    for (const m of rows.models) {
      if (!inside(m.path)) external.push(m.path);
      else if (!m.path.startsWith(ctx.home.jobs + path.sep)) folders.add(m.path); // job folders are copied whole
    }
    const copied: string[] = [];
    let bytes = statSync(path.join(target, STORE)).size;
    for (const folder of [...folders].sort()) {
      if (!existsSync(folder)) continue; // a row without files: `weitiao doctor` reports it
      const rel = path.relative(root, folder);
      // Dot-folders are an engine's half-written checkpoints (atomic_dir) or uploads in progress.
      cpSync(folder, path.join(target, rel), { recursive: true, filter: (src) => !path.basename(src).startsWith('.') });
      bytes += treeBytes(path.join(target, rel));
      copied.push(rel);
    }
    const manifest: BackupManifest = {
      object: 'weitiao.backup',
      version: 1,
      created_at: Math.floor(Date.now() / 1000),
      home: root,
      schema_version: snapshot.pragma('user_version', { simple: true }) as number,
      counts: { files: rows.files.length, models: rows.models.length, jobs: rows.jobs.length, checkpoints: rows.checkpoints },
      copied,
      external,
      bytes,
    };
    writeFileSync(path.join(target, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');
    return manifest;
  } finally {
    snapshot.close();
  }
}

export interface RestoreResult {
  object: 'weitiao.restore';
  home: string;
  manifest: BackupManifest;
  /** With `force` on a home that was not empty: where its previous contents were moved (never deleted). */
  previous: string | null;
}

/**
 * Restores a backup into `homeDir` (no server may be running on it). A home that already holds a store or
 * any file, model or job is refused (`conflict`, param `home`) unless `force`, which moves its contents to
 * `<home>/lost+found/before-restore-<time>/` first.
 */
export function restoreHome(homeDir: string | undefined, backupDir: string, options: { force?: boolean } = {}): RestoreResult {
  const source = path.resolve(backupDir);
  const manifestFile = path.join(source, MANIFEST);
  if (!existsSync(manifestFile) || !existsSync(path.join(source, STORE))) {
    throw new WeitiaoError('invalid_request', `${backupDir} is not a complete weitiao backup (no ${MANIFEST}) / 不是完整的 weitiao 备份`, { param: 'dir' });
  }
  const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as BackupManifest;
  const home = resolveHome(homeDir);
  const present = [STORE, `${STORE}-wal`, 'files', 'models', 'jobs'].filter((n) => {
    const p = path.join(home.root, n);
    return existsSync(p) && (!statSync(p).isDirectory() || readdirSync(p).length > 0);
  });
  let previous: string | null = null;
  if (present.length) {
    if (!options.force) {
      throw new WeitiaoError(
        'conflict',
        `the home ${home.root} is not empty (${present.join(', ')}); restore into an empty home, or pass --force to move its contents to lost+found/ first / 数据目录非空，如需覆盖请加 --force`,
        { param: 'home' },
      );
    }
    previous = path.join(home.root, 'lost+found', `before-restore-${new Date().toISOString().replace(/[:.]/g, '-')}`);
    mkdirSync(previous, { recursive: true });
    for (const n of [STORE, `${STORE}-wal`, `${STORE}-shm`, 'files', 'models', 'jobs']) {
      const p = path.join(home.root, n);
      if (existsSync(p)) renameSync(p, path.join(previous, n));
    }
  }
  for (const rel of manifest.copied) cpSync(path.join(source, rel), path.join(home.root, rel), { recursive: true });
  cpSync(path.join(source, STORE), home.db);
  resolveHome(home.root); // the standard folders again, should the backup lack one
  rewritePaths(home.db, manifest.home, home.root);
  return { object: 'weitiao.restore', home: home.root, manifest, previous };
}

/** Every text value of every table that holds `from/…` gets `to/…` (paths in columns and inside JSON alike). */
function rewritePaths(dbFile: string, from: string, to: string): void {
  const db = sqliteOnly(openDatabase(dbFile), 'weitiao restore'); // migrates a backup taken by an older weitiao
  try {
    if (from === to) return;
    const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).all() as { name: string }[];
    db.transaction(() => {
      for (const { name } of tables) {
        const columns = db.prepare(`SELECT name, type FROM pragma_table_info(?)`).all(name) as { name: string; type: string }[];
        for (const c of columns.filter((col) => /TEXT/i.test(col.type) || col.type === '')) {
          db.prepare(`UPDATE "${name}" SET "${c.name}" = replace("${c.name}", ?, ?) WHERE instr("${c.name}", ?) > 0`).run(from + '/', to + '/', from + '/');
        }
      }
    })();
  } finally {
    db.close();
  }
}

function treeBytes(p: string): number {
  const s = statSync(p);
  if (!s.isDirectory()) return s.size;
  return readdirSync(p).reduce((sum, n) => sum + treeBytes(path.join(p, n)), 0);
}
