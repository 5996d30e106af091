/**
 * /v1/weitiao/me, projects, keys and the audit log (src/projects, src/keys). Everything but `me` is for
 * admins; creating projects and acting on another project is for operators (admins of `default`).
 */
import { z } from 'zod';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { createKey, listKeys, revokeKey } from '../../keys/index.js';
import { listAudit, ListAuditParams, AuditEntry } from '../../projects/audit.js';
import {
  activeScope,
  createProject,
  CreateProjectParams,
  isOperator,
  listProjects,
  LOCAL_ADMIN,
  ProjectObject,
  requireAdmin,
  requireProject,
  Role,
  runInScope,
} from '../../projects/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const base = '/v1/weitiao';
const tag = 'Projects';

const Me = z.object({
  object: z.literal('me'),
  project: z.string(),
  role: Role,
  key: z.object({ id: z.string(), name: z.string(), prefix: z.string() }).nullable(),
});
/** What the console shows in its header: the calling key's project and role. */
export type MeObject = z.infer<typeof Me>;
const ApiKey = z.object({
  id: z.string(),
  object: z.literal('api_key'),
  name: z.string(),
  prefix: z.string(),
  project: z.string(),
  role: Role,
  created_at: z.number(),
  last_used_at: z.number().nullable().optional(),
  revoked_at: z.number().nullable().optional(),
  /** Only in the answer that creates it: the secret, shown once. */
  key: z.string().optional(),
});
const CreateKeyParams = z.object({
  name: z.string().min(1).max(200),
  /** Default: the caller's project; another project only for operators (admins of `default`). */
  project: z.string().optional(),
  role: Role.default('member'),
});

/** An admin acts in its own project; an operator may name any existing one. Others' projects do not exist for them. */
function targetProject(ctx: Context, requested: string | undefined): string {
  const scope = activeScope() ?? LOCAL_ADMIN;
  if (requested === undefined || requested === scope.project) return scope.project;
  if (!isOperator(scope)) {
    throw new WeitiaoError('not_found', `no project '${requested}' / 找不到项目 '${requested}'`, { param: 'project' });
  }
  return requireProject(ctx, requested).id;
}

export function projectRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  routes.add(
    { method: 'get', path: `${base}/me`, operationId: 'retrieve_me', summary: "The calling key's project and role (the console shows it)", tag, response: { description: 'Who is calling', schema: Me } },
    (c) => {
      const scope = activeScope() ?? LOCAL_ADMIN;
      const key = c.get('apiKey');
      return c.json({ object: 'me' as const, project: scope.project, role: scope.role, key: key ? { id: key.id, name: key.name, prefix: key.prefix } : null });
    },
  );

  routes.add(
    { method: 'get', path: `${base}/projects`, operationId: 'list_projects', summary: 'Projects (operators: all; other admins: their own)', tag, response: { description: 'The projects', schema: z.object({ object: z.literal('list'), data: z.array(ProjectObject) }) } },
    (c) => {
      requireAdmin('list projects');
      return c.json(listProjects(ctx));
    },
  );
  routes.add(
    { method: 'post', path: `${base}/projects`, operationId: 'create_project', summary: 'Create a project (operators only: admins of default)', tag, body: CreateProjectParams, response: { description: 'The project', schema: ProjectObject } },
    (c, { body }) => {
      requireAdmin('create projects');
      return c.json(createProject(ctx, body));
    },
  );

  routes.add(
    { method: 'get', path: `${base}/keys`, operationId: 'list_keys', summary: "The project's API keys (never the secrets)", tag, query: z.object({ project: z.string().optional() }), response: { description: 'The keys', schema: z.object({ object: z.literal('list'), data: z.array(ApiKey) }) } },
    (c, { query }) => {
      requireAdmin('list API keys');
      const project = targetProject(ctx, query.project);
      const scope = activeScope() ?? LOCAL_ADMIN;
      return c.json({ object: 'list' as const, data: runInScope({ ...scope, project }, () => listKeys(ctx)) });
    },
  );
  routes.add(
    { method: 'post', path: `${base}/keys`, operationId: 'create_key', summary: 'Create an API key in a project with a role; the key is shown once', tag, body: CreateKeyParams, response: { description: 'The key, with its secret', schema: ApiKey } },
    (c, { body }) => {
      requireAdmin('create API keys');
      const project = targetProject(ctx, body.project);
      const created = createKey(ctx, { name: body.name, project, role: body.role });
      return c.json(created);
    },
  );
  routes.add(
    { method: 'delete', path: `${base}/keys/:key_id`, operationId: 'revoke_key', summary: 'Revoke an API key of the project', tag, params: z.object({ key_id: z.string().min(1) }), response: { description: 'The revoked key', schema: ApiKey } },
    (c, { params }) => {
      requireAdmin('revoke API keys');
      return c.json(revokeKey(ctx, params.key_id));
    },
  );

  routes.add(
    { method: 'get', path: `${base}/audit`, operationId: 'list_audit', summary: "The project's audit log: every mutating request, newest first", tag, query: ListAuditParams, response: { description: 'Audit entries', schema: z.object({ object: z.literal('list'), data: z.array(AuditEntry), has_more: z.boolean() }) } },
    (c, { query }) => {
      requireAdmin('read the audit log');
      if (query.project !== undefined) targetProject(ctx, query.project);
      return c.json(listAudit(ctx, query));
    },
  );
}
