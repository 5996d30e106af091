/**
 * The OpenAI-compatible HTTP API: a thin Hono shell over the services. Point an OpenAI SDK at
 * `http://127.0.0.1:8000/v1` with a weitiao key and its fine-tuning, files, models and chat calls work.
 *
 * ```ts
 * const server = await startServer(ctx, { port: 8000, auth: true, worker: true });
 * // … later
 * await server.close();
 * ```
 * Every route is declared once with its zod schemas (internal/routes.ts): they validate the request and
 * make `/openapi.json`. Every error leaves through one handler as `{error: {message, type, param, code}}`.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { Hono } from 'hono';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { DEFAULT_MAX_BYTES, deleteFile } from '../files/index.js';
import { isJobUnfinished, Worker } from '../jobs/index.js';
import { EvalRunQueue, type EvalRunQueueOptions } from '../evals/index.js';
import { checkIntegrity, integritySummary } from '../store/integrity.js';
import { storeUnstoredModels } from '../models/index.js';
import { verifyKey } from '../keys/index.js';
import { z } from 'zod';
import { apiKeyAuth, type ApiEnv } from './internal/auth.js';
import { requireContentType, securityHeaders } from './internal/hygiene.js';
import { chatConcurrency, limitsFromEnv, requestRate, retryAfterHeader, unfinishedJobs, uploadQuota, type Limits } from './internal/limits.js';
import { notFound, onError } from './internal/errors.js';
import { RouteTable } from './internal/routes.js';
import { chatRoutes } from './routes/chat.js';
import { fileRoutes } from './routes/files.js';
import { graderRoutes } from './routes/graders.js';
import { evalRoutes } from './routes/evals.js';
import { jobRoutes } from './routes/jobs.js';
import { modelRoutes } from './routes/models.js';
import { exportRoutes } from './routes/exports.js';
import { teacherRunRoutes } from './routes/teacher-runs.js';
import { projectRoutes } from './routes/projects.js';
import { objectGuard, projectScope } from './internal/scope.js';
import { consoleRoutes } from './routes/console.js';
import { evalResultRoutes } from './routes/eval-results.js';
import { isWorkerUpload, workerRoutes } from './routes/workers.js';
import { leaseService } from '../workers/index.js';
import { closeChatEngine } from '../chat/index.js';
import { serveStatic } from '@hono/node-server/serve-static';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export type { ApiEnv } from './internal/auth.js';

export const API_VERSION = '0.1.0';
/** Loopback only unless told otherwise: exposing the API is a decision, not a default. */
export const DEFAULT_HOST = '127.0.0.1';
export const DEFAULT_PORT = 8000;

export interface AppOptions {
  /** Require `Authorization: Bearer <key>` on /v1 routes. `false` is for local use only (`--no-auth`). */
  auth: boolean;
  /** Largest accepted upload; default OpenAI's 512 MB. */
  maxUploadBytes?: number;
  /** Largest JSON body (chat messages, job requests); default 16 MiB. */
  maxJsonBytes?: number;
  /** Rate, concurrency, job and upload limits (internal/limits.ts); default: the environment's, else DEFAULT_LIMITS. */
  limits?: Partial<Limits>;
}

/** Where `make setup` builds the web console. */
export const DEFAULT_WEB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'web');

const Health = z.object({ status: z.literal('ok'), version: z.string(), auth: z.boolean() });

/** The Hono app with every route; `app.request(...)` drives it in-process, `startServer` serves it. */
export function createApp(ctx: Context, options: AppOptions): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  app.onError(onError);
  app.notFound(notFound);
  app.use('*', securityHeaders());
  app.use('/v1/*', retryAfterHeader());
  app.use('/v1/*', requireContentType({ multipart: (method, p) => method === 'POST' && p === '/v1/files', other: (method, p) => (isWorkerUpload(method, p) ? 'application/x-tar' : undefined) }));
  if (options.auth) app.use('/v1/*', apiKeyAuth({ verify: (key) => verifyKey(ctx, key) }));
  // The key's project and role (auth off: admin of 'default') for everything below; writes are audited.
  app.use('/v1/*', projectScope(ctx));
  const limits = limitsFromEnv(process.env, options.limits);
  app.use('/v1/*', requestRate(limits));
  app.on('POST', '/v1/files', uploadQuota(limits, (id) => deleteFile(ctx, id)));
  app.on('POST', '/v1/chat/completions', chatConcurrency(limits));
  app.on('POST', '/v1/fine_tuning/jobs', unfinishedJobs(limits, (id) => jobUnfinished(ctx, id)));

  const routes = new RouteTable(app, { maxJsonBytes: options.maxJsonBytes ?? 16 * 1024 * 1024, guard: objectGuard(ctx) });
  routes.add(
    {
      method: 'get',
      path: '/health',
      operationId: 'health',
      summary: 'Liveness (no key needed)',
      tag: 'Server',
      public: true,
      response: { description: 'The server is up', schema: Health, name: 'Health' },
    },
    (c) => c.json({ status: 'ok' as const, version: API_VERSION, auth: options.auth }),
  );
  fileRoutes(routes, ctx, { maxUploadBytes: options.maxUploadBytes ?? DEFAULT_MAX_BYTES });
  jobRoutes(routes, ctx);
  modelRoutes(routes, ctx);
  chatRoutes(routes, ctx);
  graderRoutes(routes, ctx);
  evalRoutes(routes, ctx);
  consoleRoutes(routes, ctx);
  evalResultRoutes(routes, ctx);
  exportRoutes(routes, ctx);
  teacherRunRoutes(routes, ctx);
  projectRoutes(routes, ctx);
  workerRoutes(routes, ctx);

  let document: Record<string, unknown> | undefined;
  routes.add(
    {
      method: 'get',
      path: '/openapi.json',
      operationId: 'openapi',
      summary: 'This document',
      tag: 'Server',
      public: true,
      response: { description: 'OpenAPI 3.1' },
    },
    (c) => {
      document ??= routes.openapi({
        title: 'weitiao 微调 API',
        version: API_VERSION,
        description:
          "OpenAI-compatible fine-tuning, files, models and chat completions. Weitiao's own job settings sit in `weitiao`; the web console's routes are under `/v1/weitiao`.",
      });
      return c.json(document);
    },
  );
  return app;
}

/** Whether a job still counts against its key's limit of unfinished jobs. */
function jobUnfinished(ctx: Context, id: string): boolean {
  return isJobUnfinished(ctx.db, id);
}

export interface ServerOptions {
  /** Default DEFAULT_HOST (127.0.0.1). */
  host?: string;
  /** 0 picks a free port (see `RunningServer.port`). */
  port: number;
  auth: boolean;
  /** Run queued jobs in this process. */
  worker: boolean;
  /** Settings of the eval-run queue the server always runs (src/evals/queue.ts). */
  evalQueue?: EvalRunQueueOptions;
  maxUploadBytes?: number;
  /** Stop gracefully on SIGTERM/SIGINT (default true; in-process tests turn it off). */
  handleSignals?: boolean;
  /** Where start-up and shutdown notes go (default stderr). */
  log?: (line: string) => void;
  /** Mounts more routes on the app before it serves (behind the same key check on /v1). */
  extend?: (app: Hono<ApiEnv>) => void;
  /** The built web console to serve at `/` (default dist/web when it exists; null: none). */
  webDir?: string | null;
}

/** The web console's built pages at `/` (its /v1/weitiao routes are in createApp, documented with the rest). */
function mountConsole(app: Hono<ApiEnv>, webDir: string | null): void {
  // The console uses hash routes, so plain static files are enough.
  if (webDir && existsSync(path.join(webDir, 'index.html'))) app.use('/*', serveStatic({ root: webDir }));
}

export interface RunningServer {
  url: string;
  host: string;
  port: number;
  worker: Worker | null;
  evalQueue: EvalRunQueue;
  /** Stops accepting, ends open streams, stops the worker (a running job checkpoints), idempotent. */
  close(): Promise<void>;
}

/** Serves `createApp` over HTTP and, with `worker`, runs queued jobs in the same process. */
export async function startServer(ctx: Context, options: ServerOptions): Promise<RunningServer> {
  const host = options.host ?? DEFAULT_HOST;
  const log = options.log ?? ((line: string) => process.stderr.write(line + '\n'));
  if (!options.auth) {
    log(
      [
        '',
        '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!',
        `!! WARNING: authentication is OFF (--no-auth). Anyone who can reach ${host} can`,
        '!! upload data, start training and delete models. Use it on your own machine only.',
        '!! 警告：已关闭身份验证（--no-auth），任何能访问此地址的人都可以上传数据、训练和删除模型。',
        '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!',
        '',
      ].join('\n'),
    );
  }

  const app = createApp(ctx, { auth: options.auth, maxUploadBytes: options.maxUploadBytes });
  mountConsole(app, options.webDir === undefined ? DEFAULT_WEB_DIR : options.webDir);
  options.extend?.(app);
  const server = createAdaptorServer({ fetch: app.fetch, hostname: host }) as Server;
  await new Promise<void>((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException) => {
      const why =
        err.code === 'EADDRINUSE'
          ? `${host}:${options.port} is already in use; pick another --port / 端口已被占用`
          : err.code === 'EACCES'
            ? `no permission to listen on ${host}:${options.port} / 无权监听该端口`
            : `cannot listen on ${host}:${options.port}: ${err.message} / 无法监听`;
      reject(new WeitiaoError(err.code === 'EADDRINUSE' ? 'conflict' : 'invalid_request', why, { param: 'port', cause: err }));
    };
    server.once('error', fail);
    server.listen(options.port, host, () => {
      server.off('error', fail);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;

  const worker = options.worker ? new Worker(ctx) : null;
  worker?.on('worker_error', (err) => log(`worker: ${err.code}: ${err.message}`));
  worker?.start();
  // Remote workers' leases are reaped here whether or not this process runs jobs itself (src/workers).
  const leases = leaseService(ctx);
  leases.start(log);
  // Eval runs have no other runner (`weitiao worker` takes fine-tuning jobs only), so the server runs them
  // with or without --no-worker.
  const evalQueue = new EvalRunQueue(ctx, { judgeBaseUrl: `${url}/v1`, ...options.evalQueue });
  evalQueue.on('queue_error', (err) => log(`eval queue: ${err.code}: ${err.message}`));
  evalQueue.start();
  const store = ctx.db.dialect === 'postgres' ? 'PostgreSQL (WEITIAO_DATABASE_URL)' : 'SQLite';
  log(`weitiao API listening on ${url}/v1 (OpenAPI: ${url}/openapi.json), store ${store}${worker ? ', worker running' : ''}`);
  // Rows without files and folders without rows (a lost WAL, a hand-deleted folder) are said at start-up.
  const integrity = checkIntegrity(ctx);
  if (!integrity.ok) log(integritySummary(integrity));
  // With object storage: checkpoints and models whose upload a stopped process never finished go up now.
  const unstored = storeUnstoredModels(ctx, (err) => log(`object storage: ${err.message}`));
  if (unstored.length) log(`object storage: uploading ${unstored.length} checkpoint(s) and model(s) not stored yet / 正在上传尚未存储的检查点与模型`);

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      // Idle keep-alive sockets would hold close() open; live streams end with their connection.
      server.closeIdleConnections();
      const streamsGrace = setTimeout(() => server.closeAllConnections(), 2000);
      await worker?.stop();
      await leases.stop();
      await evalQueue.stop();
      await closeChatEngine();
      await stopped;
      clearTimeout(streamsGrace);
    })());

  const onSignal = (sig: NodeJS.Signals) => {
    // `once`: a second Ctrl-C falls through to Node's default and ends the process at once.
    log(`${sig}: shutting down; a running job saves a checkpoint first (again to force) / 正在关闭，再按一次强制退出`);
    close().then(
      () => {
        ctx.close();
        process.exit(0);
      },
      (err) => {
        log(`shutdown failed: ${err instanceof Error ? err.stack : String(err)}`);
        process.exit(1);
      },
    );
  };
  if (options.handleSignals ?? true) {
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  }

  return { url, host, port, worker, evalQueue, close };
}

export { createKey, listKeys, revokeKey, verifyKey, type CreatedKey, type KeyRecord } from '../keys/index.js';
