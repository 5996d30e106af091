/**
 * The request scope {project, role} (see index.ts) and the SQL functions that read it. Kept apart from
 * index.ts so the store can import it without a cycle.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { z } from 'zod';
import type Database from 'better-sqlite3';
import { WeitiaoError } from '../errors.js';

export const DEFAULT_PROJECT = 'default';
/** `worker`: a remote GPU worker's key, which may only call /v1/weitiao/workers/* (src/workers). */
export const Role = z.enum(['admin', 'member', 'read-only', 'worker']);
export type Role = z.infer<typeof Role>;

export interface Scope {
  project: string;
  role: Role;
  /** The API key acting, or null for the local user (CLI, auth off). */
  keyId: string | null;
  keyName: string | null;
}

/** The local user: admin of `default` (the CLI without --project, the API with auth off). */
export const LOCAL_ADMIN: Scope = { project: DEFAULT_PROJECT, role: 'admin', keyId: null, keyName: null };

const storage = new AsyncLocalStorage<Scope>();

/** Runs `fn` (and everything it awaits or schedules) inside `scope`. */
export function runInScope<T>(scope: Scope, fn: () => T): T {
  return storage.run(scope, fn);
}

/** Runs `fn` outside any scope, as the local worker runs: it sees every project's rows (remote workers' leases). */
export function runUnscoped<T>(fn: () => T): T {
  return storage.exit(fn);
}

/** The active scope, or undefined outside any (the worker's own bookkeeping, start-up checks). */
export function activeScope(): Scope | undefined {
  return storage.getStore();
}

/** Registers the SQL functions the triggers and filters use; openDatabase calls it on every connection. */
export function registerScopeFunctions(db: Database.Database): void {
  db.function('weitiao_project', { deterministic: false }, () => storage.getStore()?.project ?? DEFAULT_PROJECT);
  db.function('weitiao_visible', { deterministic: false }, (project: unknown) => {
    const scope = storage.getStore();
    return scope === undefined || scope.project === project ? 1 : 0;
  });
}

/** Tables whose rows carry a project (selectPage filters these with weitiao_visible). */
export const PROJECT_TABLES: ReadonlySet<string> = new Set(['files', 'jobs', 'models', 'exports', 'evals', 'eval_runs', 'api_keys']);


/** Whether the active scope may write (create, change, delete) inside its project. */
export function requireWriter(what: string): void {
  const scope = activeScope();
  if (scope?.role === 'read-only') {
    throw new WeitiaoError('permission_denied', `a read-only key cannot ${what} / 只读密钥不能执行此操作：${what}`);
  }
}

/** Whether the active scope is an admin of its project. */
export function requireAdmin(what: string): void {
  const scope = activeScope();
  if (scope && scope.role !== 'admin') {
    throw new WeitiaoError('permission_denied', `only an admin key can ${what} / 只有管理员密钥可以${what}`);
  }
}

/** Operators are admins of `default` (and the local user): they see and manage every project. */
export function isOperator(scope: Scope | undefined = activeScope()): boolean {
  return scope === undefined || (scope.project === DEFAULT_PROJECT && scope.role === 'admin');
}


/** A role named by a person (CLI flag, API body), refused with the choices when unknown. */
export function parseRole(value: unknown): Role {
  const parsed = Role.safeParse(value);
  if (!parsed.success) {
    throw new WeitiaoError('invalid_request', `unknown role '${String(value)}': admin, member, read-only or worker / 未知角色`, { param: 'role' });
  }
  return parsed.data;
}
