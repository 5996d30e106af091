/**
 * The audit log: who (key), what (method, route, object), when, from where and how it ended, for every
 * mutating API request (written by one middleware, api/internal/scope.ts). Admins read their project's.
 */
import { z } from 'zod';
import type { Context } from '../context.js';
import { now } from '../store/index.js';
import { activeScope, isOperator, type Scope } from './scope.js';

export const AuditEntry = z.object({
  id: z.number().int(),
  object: z.literal('audit_entry'),
  created_at: z.number().int(),
  project: z.string(),
  key_id: z.string().nullable(),
  key_name: z.string().nullable(),
  method: z.string(),
  route: z.string(),
  path: z.string(),
  object_id: z.string().nullable(),
  remote_addr: z.string().nullable(),
  status: z.number().int(),
});
export type AuditEntry = z.infer<typeof AuditEntry>;

export const ListAuditParams = z.object({
  /** Entries before this one (`id` of the last entry of the previous page). */
  after: z.coerce.number().int().positive().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  /** Operators (admins of `default`) may read another project's log. */
  project: z.string().optional(),
});
export type ListAuditParams = z.input<typeof ListAuditParams>;

export interface AuditInput {
  scope: Scope;
  method: string;
  route: string;
  path: string;
  object_id: string | null;
  remote_addr: string | null;
  status: number;
}

export function writeAudit(ctx: Context, e: AuditInput): void {
  ctx.db
    .prepare(
      `INSERT INTO audit_log (created_at, project, key_id, key_name, method, route, path, object_id, remote_addr, status)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    )
    .run(now(), e.scope.project, e.scope.keyId, e.scope.keyName, e.method, e.route, e.path, e.object_id, e.remote_addr, e.status);
}

interface AuditRow extends Omit<AuditEntry, 'id' | 'object'> {
  seq: number;
}

/** The scope's project's entries, newest first (an operator may name another project). */
export function listAudit(ctx: Context, params: ListAuditParams = {}): { object: 'list'; data: AuditEntry[]; has_more: boolean } {
  const p = ListAuditParams.parse(params);
  const scope = activeScope();
  const project = p.project && isOperator(scope) ? p.project : (scope?.project ?? p.project);
  const where = [...(project ? ['project = ?'] : []), ...(p.after ? ['seq < ?'] : [])];
  const args = [...(project ? [project] : []), ...(p.after ? [p.after] : [])];
  const rows = ctx.db
    .prepare(`SELECT * FROM audit_log ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq DESC LIMIT ?`)
    .all(...args, p.limit + 1) as AuditRow[];
  const data = rows.slice(0, p.limit).map(({ seq, ...r }) => ({ id: seq, object: 'audit_entry' as const, ...r }));
  return { object: 'list', data, has_more: rows.length > p.limit };
}
