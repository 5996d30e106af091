import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Context } from '../context.js';
import { openTestContext } from '../testing/postgres.js';
import { WeitiaoError } from '../errors.js';
import { createKey, listKeys, revokeKey, verifyKey } from './index.js';
import { sqliteOnly } from '../store/index.js';

describe('api keys', () => {
  let dir: string;
  let ctx: Context;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'weitiao-keys-'));
    ctx = openTestContext(dir);
  });
  after(() => {
    ctx.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a created key has the documented shape and only its hash is stored', () => {
    const created = createKey(ctx, { name: '持续集成 ci' });
    assert.match(created.key, /^wt-[A-Za-z0-9]{40}$/);
    assert.equal(created.prefix, created.key.slice(0, 9));
    assert.match(created.id, /^key-/);
    assert.equal(created.name, '持续集成 ci');

    const row = ctx.db.prepare('SELECT * FROM api_keys WHERE id = ?').get(created.id) as Record<string, unknown>;
    assert.equal(row.hash, createHash('sha256').update(created.key).digest('hex'));
    assert.ok(!Object.values(row).includes(created.key), 'the key itself is not in its row');
    // Nor anywhere in the database file (WAL included): only the hash may be written down. (PostgreSQL's files
    // are the server's: there the row above is what the store holds.)
    if (ctx.db.dialect === 'sqlite') {
      sqliteOnly(ctx.db, 'test').pragma('wal_checkpoint(TRUNCATE)');
      assert.ok(!readFileSync(ctx.home.db).includes(created.key));
    }
  });

  test('keys are distinct and random', () => {
    const keys = new Set(Array.from({ length: 50 }, (_, i) => createKey(ctx, { name: `k${i}` }).key));
    assert.equal(keys.size, 50);
  });

  test('verify accepts the key, rejects others, and records last use', () => {
    const { key, id } = createKey(ctx, { name: 'verify' });
    const record = verifyKey(ctx, key);
    assert.equal(record?.id, id);
    assert.ok(record.last_used_at !== null && record.last_used_at > 0);
    assert.equal(verifyKey(ctx, key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A')), null);
    assert.equal(verifyKey(ctx, 'wt-short'), null);
    assert.equal(verifyKey(ctx, ''), null);
    assert.equal(listKeys(ctx).find((k) => k.id === id)?.last_used_at, record.last_used_at);
  });

  test('a revoked key no longer verifies; revoking is by id or prefix and idempotent', () => {
    const a = createKey(ctx, { name: 'a' });
    const b = createKey(ctx, { name: 'b' });
    const revoked = revokeKey(ctx, a.id);
    assert.ok(revoked.revoked_at !== null);
    assert.equal(verifyKey(ctx, a.key), null);
    assert.equal(revokeKey(ctx, a.id).revoked_at, revoked.revoked_at);
    assert.ok(verifyKey(ctx, b.key));
    revokeKey(ctx, b.prefix);
    assert.equal(verifyKey(ctx, b.key), null);

    assert.ok(listKeys(ctx).some((k) => k.id === a.id));
    assert.ok(!listKeys(ctx, { activeOnly: true }).some((k) => k.id === a.id || k.id === b.id));
  });

  test('unknown keys and empty names are clear errors', () => {
    assert.throws(
      () => revokeKey(ctx, 'key-nope'),
      (e: unknown) => e instanceof WeitiaoError && e.code === 'not_found' && /key-nope/.test(e.message),
    );
    assert.throws(
      () => createKey(ctx, { name: '  ' }),
      (e: unknown) => e instanceof WeitiaoError && e.code === 'invalid_request' && e.param === 'name',
    );
  });

  test('list shows records without secrets, newest first', () => {
    const list = listKeys(ctx);
    assert.ok(list.length > 3);
    for (const k of list) {
      assert.deepEqual(Object.keys(k).sort(), ['created_at', 'id', 'last_used_at', 'name', 'object', 'prefix', 'project', 'revoked_at', 'role']);
    }
    const times = list.map((k) => k.created_at);
    assert.deepEqual(times, [...times].sort((x, y) => y - x));
  });
});
