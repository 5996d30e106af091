/**
 * The remote-worker wire (issue 19): what `weitiao worker --server URL` and the API say to each other, all under
 * `/v1/weitiao/workers`, JSON in snake_case, auth `Authorization: Bearer <key>` (a `worker` key or an operator's).
 * The server keeps every store write; the worker relays the engine's raw events (src/engine/protocol.ts) and
 * moves files. Both sides validate with these schemas.
 *
 * ```
 * POST /claim                                   ClaimRequest → 200 ClaimResponse | 204 (nothing it can run)
 * GET  /leases/{lease}/inputs/{name}            a file's bytes (header x-weitiao-sha256) or a dir as a tar stream
 * POST /leases/{lease}/events                   EventsRequest → LeaseResponse (renews the lease)
 * PUT  /leases/{lease}/checkpoints/{step}       tar of output/checkpoints/step-NNNNNN (header x-weitiao-sha256) → UploadResponse
 * PUT  /leases/{lease}/result                   tar of the final model dir (output/model) → UploadResponse
 * POST /leases/{lease}/heartbeat                {} → LeaseResponse (renews the lease)
 * POST /leases/{lease}/finish                   FinishRequest → FinishResponse
 * ```
 * Paths: every path in the claimed `request` is RELATIVE to the job's work dir on the worker, and every input's
 * `name` is the path the worker puts it at (`inputs/base`, `inputs/training.jsonl`, `inputs/validation.jsonl`,
 * `inputs/adapter`, `output/checkpoints/step-NNNNNN`); run the engine with the work dir as its cwd or resolve
 * them against it. A `checkpoint` event goes out only AFTER its directory was uploaded with PUT …/checkpoints/{step}
 * (the server records only checkpoints it holds); `finish` with a result only after PUT …/result.
 * Any lease call once the lease is gone → 409 `lease_lost`: kill the engine group and drop the job.
 *
 * Multi-node jobs (`weitiao.nodes` > 1, src/workers/groups.ts): the first claimer opens a group (rank 0, its
 * `advertise_host` and `rendezvous_port` are the run's master address), later claimers join it; each claim
 * waits (long-poll, bounded) until the group is complete, then answers with `node`. One member's lease lost
 * ends every member's lease.
 */
import { z } from 'zod';
import { EngineEvent, TrainRequest, TrainResult } from '../engine/protocol.js';

/** Sent by the worker with every claim; the server refuses versions it does not speak. */
export const WORKER_PROTOCOL_VERSION = 1;

/** The route prefix. */
export const WORKERS_PATH = '/v1/weitiao/workers';

/** Header carrying the hex sha256 of a downloaded file or of an uploaded tar's bytes. */
export const SHA256_HEADER = 'x-weitiao-sha256';

/** A worker's name: letters, digits, `.`, `_`, `-` (it is part of the job's `worker_id`, `remote:<name>:<lease>`). */
export const WorkerName = z
  .string()
  .regex(/^[A-Za-z0-9._-]{1,64}$/, 'a worker name is 1-64 letters, digits, ".", "_" or "-" / worker 名称只能包含字母、数字、"."、"_"、"-"');

export const WorkerDevice = z.object({
  type: z.enum(['cpu', 'cuda', 'mps']),
  name: z.string(),
  memory_bytes: z.number().int().nonnegative().nullable(),
});
export type WorkerDevice = z.infer<typeof WorkerDevice>;

/**
 * What a worker can run: OpenAI's method types (`supervised` covers lora, qlora and full) or weitiao's engine
 * methods for a narrower offer (e.g. `lora` alone, no `qlora`).
 */
export const WorkerMethod = z.enum(['supervised', 'dpo', 'reinforcement', 'lora', 'qlora', 'full']);
export type WorkerMethod = z.infer<typeof WorkerMethod>;

export const WorkerInfo = z.object({
  name: WorkerName,
  host: z.string().max(255),
  devices: z.array(WorkerDevice),
  memory_bytes: z.number().int().nonnegative().nullable(),
  methods: z.array(WorkerMethod).min(1),
  /** The address other workers reach this one at, should it host a multi-node run's rendezvous (default: its host name). */
  advertise_host: z.string().min(1).max(255).optional(),
});
export type WorkerInfo = z.infer<typeof WorkerInfo>;

export const ClaimRequest = z.object({
  protocol_version: z.number().int(),
  worker: WorkerInfo,
  /**
   * A free port on `advertise_host` for torchrun's rendezvous should this claim open a multi-node group (rank 0).
   * A worker that sends none is never given a multi-node job (`nodes` > 1).
   */
  rendezvous_port: z.number().int().min(1).max(65535).optional(),
});
export type ClaimRequest = z.infer<typeof ClaimRequest>;

export const Lease = z.object({
  id: z.string(),
  job_id: z.string(),
  /** Send a heartbeat (or events) at least this often. */
  heartbeat_seconds: z.number().positive(),
  /** Without a renewal for this long the lease is reaped and the job queued again. */
  expires_in_seconds: z.number().positive(),
});
export type Lease = z.infer<typeof Lease>;

/** One thing to download before the engine starts: `name` is also where it goes, relative to the work dir. */
export const LeaseInput = z.object({
  name: z.string(),
  kind: z.enum(['file', 'dir']),
  /** Size of a file (null for a dir: its tar is streamed). */
  bytes: z.number().int().nonnegative().nullable(),
  /** Hex sha256 of a file's bytes (null for a dir). */
  sha256: z.string().nullable(),
  /**
   * A key that changes whenever the content does, for the worker's cache (a base model: `<model id>@<mtime of
   * its files>`); null when not worth caching (the training files, checkpoints).
   */
  cache_key: z.string().nullable(),
});
export type LeaseInput = z.infer<typeof LeaseInput>;

/**
 * This lease's place in a multi-node run (a job with `nodes` > 1, handed to that many workers): run the engine
 * with torchrun's `PET_NNODES`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`. Rank 0 relays events,
 * checkpoints and the result as for a one-node run; other ranks only heartbeat and `finish` (result or failure).
 */
export const NodeAssignment = z.object({
  rank: z.number().int().nonnegative(),
  nodes: z.number().int().min(2),
  master_addr: z.string(),
  master_port: z.number().int().min(1).max(65535),
});
export type NodeAssignment = z.infer<typeof NodeAssignment>;

export const ClaimResponse = z.object({
  lease: Lease,
  /** Absent or null: a one-node run. */
  node: NodeAssignment.nullable().optional(),
  /** The engine's train request, every path relative to the job's work dir on the worker. */
  request: TrainRequest,
  inputs: z.array(LeaseInput),
});
export type ClaimResponse = z.infer<typeof ClaimResponse>;

export const RequestedAction = z.enum(['cancel', 'pause']).nullable();
export type RequestedAction = z.infer<typeof RequestedAction>;

/** The engine's events in engine order (batches of ≤ 50 events / ≤ 0.5 s). */
export const EventsRequest = z.object({ events: z.array(EngineEvent).max(500) });
export type EventsRequest = z.infer<typeof EventsRequest>;

/** Answer to events and heartbeats: what the server wants the engine to do (cancel/pause → SIGTERM its group). */
export const LeaseResponse = z.object({ requested_action: RequestedAction });
export type LeaseResponse = z.infer<typeof LeaseResponse>;

export const HeartbeatRequest = z.object({}).passthrough();

/** Answer to an upload: where the server keeps it, relative to the job's directory. */
export const UploadResponse = z.object({ path: z.string(), bytes: z.number().int().nonnegative(), sha256: z.string() });
export type UploadResponse = z.infer<typeof UploadResponse>;

export const FinishRequest = z.object({
  /** The engine's result (its `model_dir` uploaded with PUT …/result first). */
  result: TrainResult.nullable(),
  /** Why it failed (the engine's error event, or the worker's own failure such as a download that kept failing). */
  failure: z.object({ code: z.string(), message: z.string() }).nullable(),
  /** The engine reported the error itself (an `error` event): the job fails; else the run counts as lost and is retried. */
  engine_error: z.boolean(),
  /** Why the worker stopped the engine: a server request (cancel, pause) or its own shutdown (the job is queued again). */
  stop_reason: z.enum(['cancel', 'pause', 'shutdown']).nullable(),
});
export type FinishRequest = z.infer<typeof FinishRequest>;

export const FinishResponse = z.object({ job_id: z.string(), status: z.string() });
export type FinishResponse = z.infer<typeof FinishResponse>;
