/**
 * API keys for the HTTP API: `wt-` + 40 random characters, shown once at creation and stored only as a
 * sha256 hash (a leaked database does not leak usable keys). The `prefix` lets a person tell keys apart
 * in lists without the store ever holding the secret.
 *
 * ```ts
 * const { key } = createKey(ctx, { name: 'ci' });   // give `key` to the client, it is not kept
 * verifyKey(ctx, key);                               // → KeyRecord, or null when unknown or revoked
 * ```
 */
import { createHash, randomInt } from 'node:crypto';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { newId, now, type DB, type Statement } from '../store/index.js';
import { activeScope, DEFAULT_PROJECT, parseRole, runInScope, type Role } from '../projects/scope.js';

export const KEY_PREFIX = 'wt-';
const KEY_RANDOM_LENGTH = 40;
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** `wt-` and 6 random characters: enough to recognise a key, far too little to guess it. */
const DISPLAY_PREFIX_LENGTH = KEY_PREFIX.length + 6;
/** `last_used_at` is a hint for people, not an audit log: writing it at most once a minute keeps reads cheap. */
const LAST_USED_RESOLUTION_SECONDS = 60;

/** A stored key as lists show it: never the key itself. */
export interface KeyRecord {
  id: string;
  object: 'api_key';
  name: string;
  prefix: string;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
  /** The project the key acts in and its role there (src/projects). */
  project: string;
  role: Role;
}

/** What `createKey` returns: the record plus the key, which is shown this once and never again. */
export interface CreatedKey {
  id: string;
  object: 'api_key';
  name: string;
  key: string;
  prefix: string;
  created_at: number;
  project: string;
  role: Role;
}

interface KeyRow {
  id: string;
  name: string;
  prefix: string;
  hash: string;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
  project: string;
  role: Role;
}

const toRecord = (row: KeyRow): KeyRecord => ({
  id: row.id,
  object: 'api_key',
  name: row.name,
  prefix: row.prefix,
  created_at: row.created_at,
  last_used_at: row.last_used_at,
  revoked_at: row.revoked_at,
  project: row.project,
  role: row.role,
});

const hashKey = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

// verifyKey runs on every API request: compile its statements once per database, not per call.
const statements = new WeakMap<DB, Map<string, Statement>>();
function statement(db: DB, sql: string): Statement {
  let cache = statements.get(db);
  if (!cache) statements.set(db, (cache = new Map()));
  let stmt = cache.get(sql);
  if (!stmt) cache.set(sql, (stmt = db.prepare(sql)));
  return stmt;
}

/**
 * Creates a key named `name` in `project` (default: the scope's, else `default`) with `role` (default admin,
 * what keys were before projects); the returned `key` is the only time the secret is visible.
 */
export function createKey(ctx: Context, options: { name: string; project?: string; role?: Role }): CreatedKey {
  const project = options.project ?? activeScope()?.project ?? DEFAULT_PROJECT;
  const role = parseRole(options.role ?? 'admin');
  const name = options.name.trim();
  if (!name) throw new WeitiaoError('invalid_request', 'a key needs a non-empty name / 密钥名称不能为空', { param: 'name' });
  if (name.length > 200) throw new WeitiaoError('invalid_request', 'key name is longer than 200 characters / 密钥名称超过 200 个字符', { param: 'name' });

  // randomInt draws uniformly (no modulo bias), from the OS's CSPRNG.
  const key = KEY_PREFIX + Array.from({ length: KEY_RANDOM_LENGTH }, () => ALPHABET[randomInt(ALPHABET.length)]).join('');
  const row: KeyRow = {
    project,
    role,
    id: newId('key'),
    name,
    prefix: key.slice(0, DISPLAY_PREFIX_LENGTH),
    hash: hashKey(key),
    created_at: now(),
    last_used_at: null,
    revoked_at: null,
  };
  // The insert trigger stamps the scope's project: insert inside the key's own project's scope.
  runInScope({ project, role: 'admin', keyId: null, keyName: null }, () =>
    ctx.db
      .prepare(
        `INSERT INTO api_keys (id, name, prefix, hash, created_at, last_used_at, revoked_at, project, role)
         VALUES (@id, @name, @prefix, @hash, @created_at, @last_used_at, @revoked_at, @project, @role)`,
      )
      .run(row),
  );
  return { id: row.id, object: 'api_key', name: row.name, key, prefix: row.prefix, created_at: row.created_at, project, role };
}

/**
 * The keys of the scope's project (every key outside a scope), newest first, or of `project` when given;
 * revoked keys are listed too (with `revoked_at`) unless `activeOnly`.
 */
export function listKeys(ctx: Context, options: { activeOnly?: boolean; project?: string } = {}): KeyRecord[] {
  const where = ['weitiao_visible(project)', ...(options.activeOnly ? ['revoked_at IS NULL'] : []), ...(options.project ? ['project = ?'] : [])];
  const rows = ctx.db
    .prepare(`SELECT * FROM api_keys WHERE ${where.join(' AND ')} ORDER BY created_at DESC, rowid DESC`)
    .all(...(options.project ? [options.project] : [])) as KeyRow[];
  return rows.map(toRecord);
}

/**
 * Revokes a key by its id (`key-…`) or its displayed prefix (`wt-abc123`); revoking twice is harmless.
 * A prefix that matches several keys is refused rather than guessed.
 */
export function revokeKey(ctx: Context, idOrPrefix: string): KeyRecord {
  const rows = ctx.db.prepare('SELECT * FROM api_keys WHERE (id = ? OR prefix = ?) AND weitiao_visible(project)').all(idOrPrefix, idOrPrefix) as KeyRow[];
  if (rows.length === 0) {
    throw new WeitiaoError('not_found', `no API key '${idOrPrefix}' / 找不到 API 密钥 '${idOrPrefix}'`, { param: 'id' });
  }
  if (rows.length > 1) {
    throw new WeitiaoError('conflict', `'${idOrPrefix}' matches ${rows.length} keys: revoke by id / '${idOrPrefix}' 匹配多个密钥，请使用 id`, {
      param: 'id',
    });
  }
  const row = rows[0];
  if (row.revoked_at === null) {
    row.revoked_at = now();
    ctx.db.prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ?').run(row.revoked_at, row.id);
  }
  return toRecord(row);
}

/** The key's record when `key` is a known, unrevoked key; null otherwise. Records `last_used_at`. */
export function verifyKey(ctx: Context, key: string): KeyRecord | null {
  // Cheap shape check first: random garbage never touches the store.
  if (!key.startsWith(KEY_PREFIX) || key.length !== KEY_PREFIX.length + KEY_RANDOM_LENGTH) return null;
  // Looked up by hash, so the comparison never runs over the secret itself.
  const row = statement(ctx.db, 'SELECT * FROM api_keys WHERE hash = ?').get(hashKey(key)) as KeyRow | undefined;
  if (!row || row.revoked_at !== null) return null;
  const t = now();
  if (row.last_used_at === null || t - row.last_used_at >= LAST_USED_RESOLUTION_SECONDS) {
    row.last_used_at = t;
    statement(ctx.db, 'UPDATE api_keys SET last_used_at = ? WHERE id = ?').run(t, row.id);
  }
  return toRecord(row);
}
