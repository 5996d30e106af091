/**
 * /v1/weitiao/workers: remote GPU workers (`weitiao worker --server URL --token T`) claim jobs, download their
 * inputs, stream the engine's events back, upload checkpoints and the model, and finish. Thin handlers over
 * src/workers' lease service; the wire is src/workers/protocol.ts. Callable by `worker` keys (of the default
 * project: a worker sees every project's jobs) and by operators (admins of default).
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { Context as HonoContext } from 'hono';
import { z } from 'zod';
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { activeScope, DEFAULT_PROJECT, isOperator, runUnscoped } from '../../projects/index.js';
import {
  ClaimRequest,
  ClaimResponse,
  EventsRequest,
  FinishRequest,
  FinishResponse,
  LeaseResponse,
  leaseService,
  SHA256_HEADER,
  tarStream,
  UploadResponse,
  fileDigest,
  WORKERS_PATH,
} from '../../workers/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const LeaseParams = z.object({ lease: z.string().min(1).max(100) });
const InputParams = LeaseParams.extend({ name: z.string().min(1).max(300) });
const StepParams = LeaseParams.extend({ step: z.coerce.number().int().min(0) });

/** Routes whose body is a tar stream (src/api/index.ts tells the content-type check). */
export function isWorkerUpload(method: string, path: string): boolean {
  return method === 'PUT' && path.startsWith(`${WORKERS_PATH}/leases/`);
}

/** A remote worker's key (role `worker` of the default project) or an operator's; else 403. */
function requireWorker(): void {
  const scope = activeScope();
  if (isOperator(scope) || (scope?.role === 'worker' && scope.project === DEFAULT_PROJECT)) return;
  throw new WeitiaoError(
    'permission_denied',
    'only a worker key (`weitiao keys create NAME --role worker`, project default) or an operator key can act as a remote worker / 只有 worker 密钥（默认项目）或运维管理员密钥可以作为远程 worker',
  );
}

/** The service's work runs outside the key's scope, as the local worker's does: it sees and stamps every project's rows. */
function asWorker<T>(fn: () => T): T {
  requireWorker();
  return runUnscoped(fn);
}

function uploadBody(c: HonoContext<ApiEnv>): Readable {
  const body = c.req.raw.body;
  if (!body) throw new WeitiaoError('invalid_request', 'the upload has no body: send the tar stream / 上传内容为空', { param: 'body' });
  return Readable.fromWeb(body as import('node:stream/web').ReadableStream);
}

export function workerRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const tag = 'Remote workers';
  const service = leaseService(ctx);
  const lease = `${WORKERS_PATH}/leases/:lease`;

  routes.add(
    {
      method: 'post',
      path: `${WORKERS_PATH}/claim`,
      operationId: 'claim_worker_job',
      summary: 'Claim the oldest queued job this worker can run (its methods); 204 when there is none',
      tag,
      body: ClaimRequest,
      response: { description: 'A lease on the job, its engine request (paths relative to the work dir) and the inputs to download', schema: ClaimResponse },
    },
    async (c, { body }) => {
      const claimed = await asWorker(() => service.claim(body));
      return claimed ? c.json(claimed) : c.body(null, 204);
    },
  );

  routes.add(
    {
      method: 'get',
      path: `${lease}/inputs/:name{.+}`,
      operationId: 'download_worker_input',
      summary: "One input of the lease's job: a file's bytes (header x-weitiao-sha256) or a directory as a tar stream",
      tag,
      params: InputParams,
      response: { description: 'The bytes', contentType: 'application/octet-stream', alternatives: { 'application/x-tar': 'a directory' } },
    },
    async (c, { params }) => {
      const source = await asWorker(() => service.input(params.lease, params.name));
      if (source.kind === 'dir') {
        return new Response(Readable.toWeb(tarStream(source.path)) as ReadableStream, { headers: { 'content-type': 'application/x-tar' } });
      }
      const { bytes, sha256 } = await fileDigest(source.path);
      return new Response(Readable.toWeb(createReadStream(source.path)) as ReadableStream, {
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes), [SHA256_HEADER]: sha256 },
      });
    },
  );

  routes.add(
    {
      method: 'post',
      path: `${lease}/events`,
      operationId: 'post_worker_events',
      summary: "The engine's events in order, recorded as a local run's are; renews the lease",
      tag,
      params: LeaseParams,
      body: EventsRequest,
      response: { description: 'What the server asks of the engine', schema: LeaseResponse },
    },
    (c, { params, body }) => c.json({ requested_action: asWorker(() => service.events(params.lease, body.events)) }),
  );

  routes.add(
    {
      method: 'post',
      path: `${lease}/heartbeat`,
      operationId: 'worker_heartbeat',
      summary: 'Renews the lease',
      tag,
      params: LeaseParams,
      response: { description: 'What the server asks of the engine', schema: LeaseResponse },
    },
    (c, { params }) => c.json({ requested_action: asWorker(() => service.heartbeat(params.lease)) }),
  );

  routes.add(
    {
      method: 'put',
      path: `${lease}/checkpoints/:step`,
      operationId: 'upload_worker_checkpoint',
      summary: 'A checkpoint directory as a tar stream (header x-weitiao-sha256 of its bytes), before its checkpoint event',
      tag,
      params: StepParams,
      response: { description: 'Stored', schema: UploadResponse },
    },
    async (c, { params }) => c.json(await asWorker(() => service.storeCheckpoint(params.lease, params.step, uploadBody(c), c.req.header(SHA256_HEADER)))),
  );

  routes.add(
    {
      method: 'put',
      path: `${lease}/result`,
      operationId: 'upload_worker_result',
      summary: "The final model directory as a tar stream (header x-weitiao-sha256), before finish",
      tag,
      params: LeaseParams,
      response: { description: 'Stored', schema: UploadResponse },
    },
    async (c, { params }) => c.json(await asWorker(() => service.storeResult(params.lease, uploadBody(c), c.req.header(SHA256_HEADER)))),
  );

  routes.add(
    {
      method: 'post',
      path: `${lease}/finish`,
      operationId: 'finish_worker_job',
      summary: 'Settles the job as a local run ends (succeeded and registered, cancelled, paused, queued again, failed)',
      tag,
      params: LeaseParams,
      body: FinishRequest,
      response: { description: 'The job and its new status', schema: FinishResponse },
    },
    async (c, { params, body }) => c.json(await asWorker(() => service.finish(params.lease, body))),
  );
}
