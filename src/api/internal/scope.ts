/**
 * Projects on the API (src/projects): each /v1 request runs in the scope of its key's project and role
 * (the local user, admin of `default`, when auth is off), mutating requests are written to the audit log,
 * and every object a request names — path parameter or id in the body — must be visible in the scope.
 *
 * The object guard answers 404 for another project's object, exactly as for one that does not exist, so a
 * key learns nothing about other projects. Lists are filtered by the store itself (selectPage).
 */
import type { IncomingMessage } from 'node:http';
import type { Context as HonoContext, MiddlewareHandler } from 'hono';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { activeScope, LOCAL_ADMIN, requireAdmin, runInScope, type Scope } from '../../projects/index.js';
import { writeAudit } from '../../projects/audit.js';
import { checkpointProject } from '../../jobs/index.js';
import type { ApiEnv } from './auth.js';

/** POSTs a read-only key may send: they answer from stored objects and store nothing. */
const READ_ONLY_POSTS = new Set([
  '/v1/chat/completions',
  '/v1/fine_tuning/alpha/graders/run',
  '/v1/fine_tuning/alpha/graders/validate',
  '/v1/weitiao/datasets/preview',
  '/v1/weitiao/datasets/validate',
  '/v1/weitiao/estimate',
]);

/** Sets the request's scope, refuses writes of read-only keys, and audits every mutating request. */
export function projectScope(ctx: Context): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const key = c.get('apiKey');
    const scope: Scope = key ? { project: key.project, role: key.role, keyId: key.id, keyName: key.name } : LOCAL_ADMIN;
    const mutating = !['GET', 'HEAD', 'OPTIONS'].includes(c.req.method);
    let failure: WeitiaoError | undefined;
    try {
      await runInScope(scope, async () => {
        if (mutating && scope.role === 'read-only' && !READ_ONLY_POSTS.has(c.req.path)) {
          throw new WeitiaoError('permission_denied', `a read-only key cannot ${c.req.method} ${c.req.path} / 只读密钥不能修改数据`);
        }
        // A remote worker's key does that and nothing else (least privilege).
        if (scope.role === 'worker' && !c.req.path.startsWith('/v1/weitiao/workers/')) {
          throw new WeitiaoError('permission_denied', `a worker key may only call /v1/weitiao/workers/*, not ${c.req.method} ${c.req.path} / worker 密钥只能调用远程 worker 接口`);
        }
        await next();
      });
    } catch (err) {
      failure = WeitiaoError.from(err);
      throw err;
    } finally {
      // A lease's events and heartbeats are its progress, not changes worth a row each (claims, uploads and finishes are audited).
      if (mutating && !/^\/v1\/weitiao\/workers\/leases\/[^/]+\/(events|heartbeat)$/.test(c.req.path)) {
        const status = failure?.httpStatus ?? c.res.status;
        writeAudit(ctx, {
          scope,
          method: c.req.method,
          route: matchedRoute(c) ?? c.req.path,
          path: c.req.path,
          object_id: await objectId(c, status),
          remote_addr: (c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.socket?.remoteAddress ?? null,
          status,
        });
      }
    }
  };
}

/** The pattern of the route that answered (the last non-middleware match). */
function matchedRoute(c: HonoContext<ApiEnv>): string | undefined {
  return c.req.matchedRoutes.filter((r) => r.method !== 'ALL').at(-1)?.path;
}

/** The id the request acted on: the created/changed object's `id`, else the route's first path parameter. */
async function objectId(c: HonoContext<ApiEnv>, status: number): Promise<string | null> {
  if (status < 300 && c.res.headers.get('content-type')?.includes('application/json')) {
    try {
      const body = (await c.res.clone().json()) as { id?: unknown };
      if (typeof body.id === 'string') return body.id;
    } catch {
      // Not one JSON object: fall back to the path.
    }
  }
  const pattern = matchedRoute(c)?.split('/') ?? [];
  const parts = c.req.path.split('/');
  const i = pattern.findIndex((p) => p.startsWith(':'));
  if (i < 0) return null;
  // `:model{.+}` takes the rest of the path up to the route's fixed tail.
  const tail = pattern.length - i - 1;
  return decodeURIComponent(parts.slice(i, parts.length - tail).join('/')) || null;
}

// ---------------------------------------------------------------------------------------- object guard

/** Which table each path parameter or body field names. */
const PARAM_TABLES: Record<string, { table: string; noun: string }> = {
  file_id: { table: 'files', noun: 'file' },
  training_file: { table: 'files', noun: 'file' },
  validation_file: { table: 'files', noun: 'file' },
  check_data: { table: 'files', noun: 'file' },
  training_file_id: { table: 'files', noun: 'file' },
  fine_tuning_job_id: { table: 'jobs', noun: 'fine-tuning job' },
  export_id: { table: 'exports', noun: 'export' },
  eval_id: { table: 'evals', noun: 'eval' },
  run_id: { table: 'eval_runs', noun: 'eval run' },
  key_id: { table: 'api_keys', noun: 'API key' },
};
/** Ids found anywhere in a body (eval data sources nest them) by their prefix. */
const ID_PREFIXES: [RegExp, string][] = [
  [/^file-[0-9a-z]+$/, 'file_id'],
  [/^ftjob-[0-9a-z]+$/, 'fine_tuning_job_id'],
  [/^export-[0-9a-z]+$/, 'export_id'],
  [/^eval_[0-9a-z]+$/, 'eval_id'],
  [/^evalrun_[0-9a-z]+$/, 'run_id'],
  [/^key-[0-9a-z]+$/, 'key_id'],
];

const notFound = (noun: string, id: string, param: string) =>
  new WeitiaoError('not_found', `no such ${noun}: '${id}' / 找不到 ${noun} '${id}'`, { param });

/**
 * The RouteTable hook: every object named by a path parameter or the body must belong to the scope's
 * project (base models are shared; changing them or their deployment needs an admin).
 */
export function objectGuard(ctx: Context) {
  return (c: HonoContext<ApiEnv>, input: { params?: unknown; body?: unknown }): void => {
    const scope = activeScope();
    if (!scope) return;
    // Deleting a shared base model or (un)deploying it changes it for every project.
    const changesModel = c.req.method !== 'GET' && (c.req.path.endsWith('/deployment') || (c.req.method === 'DELETE' && c.req.path.startsWith('/v1/models/')));
    for (const [name, value] of Object.entries((input.params ?? {}) as Record<string, unknown>)) {
      if (typeof value === 'string') check(ctx, scope, name, value, name === 'model' && changesModel);
    }
    const body = input.body;
    if (body && typeof body === 'object') {
      const b = body as Record<string, unknown>;
      if (typeof b.model === 'string') check(ctx, scope, 'model', b.model, false);
      // Chat bodies hold only messages besides the model: not worth walking.
      if (c.req.path !== '/v1/chat/completions') walk(ctx, scope, b, 0);
    }
  };
}

function walk(ctx: Context, scope: Scope, value: unknown, depth: number): void {
  if (depth > 4 || value === null || typeof value !== 'object') return;
  const entries = Array.isArray(value) ? value.slice(0, 64).map((v) => ['', v] as const) : Object.entries(value);
  for (const [key, v] of entries) {
    if (typeof v === 'string') {
      if (key in PARAM_TABLES) check(ctx, scope, key, v, false);
      else for (const [re, param] of ID_PREFIXES) if (re.test(v)) check(ctx, scope, param, v, false);
      if ((key === 'model' && depth > 0) || key === 'compare_with') check(ctx, scope, 'model', v, false);
    } else walk(ctx, scope, v, depth + 1);
  }
}

function check(ctx: Context, scope: Scope, name: string, id: string, changesModel: boolean): void {
  if (name === 'model') return checkModel(ctx, scope, id, changesModel);
  const target = PARAM_TABLES[name];
  if (!target) return;
  const row = ctx.db.prepare(`SELECT project FROM ${target.table} WHERE id = ?`).get(id) as { project: string } | undefined;
  if (row && row.project !== scope.project) throw notFound(target.noun, id, name);
}

function checkModel(ctx: Context, scope: Scope, id: string, changesModel: boolean): void {
  const row = ctx.db.prepare('SELECT project, kind FROM models WHERE id = ?').get(id) as { project: string; kind: string } | undefined;
  if (row?.kind === 'base') {
    if (changesModel) requireAdmin(`change the shared base model '${id}'`);
    return;
  }
  let project = row?.project;
  if (project === undefined) {
    // A checkpoint named by its model id without a models row: its job's project.
    project = checkpointProject(ctx.db, id);
  }
  if (project !== undefined && project !== scope.project) throw notFound('model', id, 'model');
}
