/**
 * Projects and roles. Every file, job, model, export, eval and API key belongs to a project; a request
 * runs inside a *scope* {project, role} and sees only its project's rows.
 *
 * The scope lives in an AsyncLocalStorage set once per request (API middleware), per command (CLI: admin
 * of `--project`, default `default`) and per job (the worker runs a job in its row's project). The store
 * reads it through two SQL functions every connection registers, so no query has to pass it along:
 *   - `weitiao_project()`  the scope's project ('default' outside any scope); insert triggers stamp new rows;
 *   - `weitiao_visible(project)`  1 when no scope is active or the row is the scope's; selectPage and the
 *     API's object guard (api/internal/scope.ts) filter with it.
 *
 * Sharing rule: base models (`kind = 'base'`, registered by an admin with `weitiao models add|pull|create-tiny`)
 * are global: every project can list, chat with and fine-tune them; only admins delete or (un)deploy them.
 * Fine-tuned models and their checkpoints belong to the project of the job that made them.
 *
 * ```ts
 * runInScope({ project: 'waimai', role: 'member', keyId: 'key-…' }, () => listFiles(ctx)); // waimai's files only
 * ```
 */
import { z } from 'zod';
import type { Context } from '../context.js';
import { parseOrThrow, WeitiaoError } from '../errors.js';
import { now } from '../store/index.js';
import { activeScope, isOperator } from './scope.js';

export * from './scope.js';


// ------------------------------------------------------------------------------------------- projects

export const ProjectId = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a project id is 1-63 lowercase letters, digits, - or _, starting with a letter or digit / 项目名只能包含小写字母、数字、- 和 _');

export const CreateProjectParams = z.object({
  id: ProjectId,
  description: z.string().max(500).optional(),
});
export type CreateProjectParams = z.input<typeof CreateProjectParams>;

export const ProjectObject = z.object({
  id: z.string(),
  object: z.literal('project'),
  description: z.string(),
  created_at: z.number().int(),
});
export type ProjectObject = z.infer<typeof ProjectObject>;

interface ProjectRow {
  id: string;
  description: string;
  created_at: number;
}
const toWire = (row: ProjectRow): ProjectObject => ({ id: row.id, object: 'project', description: row.description, created_at: row.created_at });

/** Creates a project (operators only: admins of `default`, the local user). */
export function createProject(ctx: Context, params: CreateProjectParams): ProjectObject {
  if (!isOperator()) throw new WeitiaoError('permission_denied', 'only an admin of the default project can create projects / 只有 default 项目的管理员可以创建项目');
  const p = parseOrThrow(CreateProjectParams, params, { where: { en: 'project', zh: '项目' } });
  if (getProject(ctx, p.id)) throw new WeitiaoError('conflict', `project '${p.id}' already exists / 项目已存在`, { param: 'id' });
  const row: ProjectRow = { id: p.id, description: p.description ?? '', created_at: now() };
  ctx.db.prepare('INSERT INTO projects (id, description, created_at) VALUES (@id, @description, @created_at)').run(row);
  return toWire(row);
}

/** Operators see every project; anyone else sees only their own. */
export function listProjects(ctx: Context): { object: 'list'; data: ProjectObject[] } {
  const scope = activeScope();
  const rows = (
    isOperator(scope)
      ? ctx.db.prepare('SELECT * FROM projects ORDER BY created_at, rowid').all()
      : ctx.db.prepare('SELECT * FROM projects WHERE id = ?').all(scope!.project)
  ) as ProjectRow[];
  return { object: 'list', data: rows.map(toWire) };
}

export function getProject(ctx: Context, id: string): ProjectObject | null {
  const row = ctx.db.prepare('SELECT * FROM projects WHERE id = ?').get(id) as ProjectRow | undefined;
  return row ? toWire(row) : null;
}

/** The project a command or request names, which must exist. */
export function requireProject(ctx: Context, id: string, param = 'project'): ProjectObject {
  const project = getProject(ctx, id);
  if (!project) throw new WeitiaoError('not_found', `no project '${id}' (create it with \`weitiao projects create ${id}\`) / 找不到项目 '${id}'`, { param });
  return project;
}
