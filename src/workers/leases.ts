/**
 * The server side of remote workers (issue 19): leases on jobs. A claim atomically moves the oldest queued job
 * the worker can run to running under `worker_id = remote:<worker>:<lease>`; the lease's calls feed the engine's
 * events through the same translation as a local run (src/jobs recordEngineEvent), store uploaded checkpoints
 * and the final model, and settle the outcome with the same logic (finishRun). A reaper queues again the jobs
 * whose lease was not renewed for `WEITIAO_LEASE_SECONDS` (default 30). Every call on a lease that no longer
 * holds its job is `lease_lost` (409): fencing, so a partitioned worker never writes over the next holder.
 *
 * Multi-node jobs (`weitiao.nodes` > 1) are handed to a group of workers: src/workers/groups.ts.
 *
 * Nobody else validates jobs' files when the API runs without a local worker, so a claim also starts (in the
 * background) the validation of jobs still in validating_files, one at a time (src/jobs Worker, train: false).
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Context } from '../context.js';
import type { EngineEvent } from '../engine/index.js';
import { ERROR_CODES, WeitiaoError, type ErrorCode } from '../errors.js';
import { materializeFile } from '../files/index.js';
import {
  beatHeart,
  checkpointDirName,
  fail,
  finishRun,
  getJobRow,
  jobMethod,
  jobOfLease,
  prepareRun,
  recordEngineEvent,
  REMOTE_WORKER_PREFIX,
  requestedStop,
  runState,
  settleAbandoned,
  staleRemoteJobs,
  startRun,
  storeJournal,
  unclaimedQueuedJobs,
  Worker,
  type JobJournal,
  type JobRow,
  type RunState,
} from '../jobs/index.js';
import { resolveModel } from '../models/index.js';
import { newId, now } from '../store/index.js';
import { TrainRequest, type TrainResult } from '../engine/protocol.js';
import {
  ClaimResponse,
  WORKER_PROTOCOL_VERSION,
  type ClaimRequest,
  type FinishRequest,
  type FinishResponse,
  type LeaseInput,
  type RequestedAction,
  type UploadResponse,
  type WorkerInfo,
} from './protocol.js';
import { dirFingerprint, fileDigest, receiveTar, tarStream } from './transfer-server.js';
import { jobNodeCount, leaseOf, NodeGroups, type GroupPlan, type GroupSeat } from './groups.js';

/** `WEITIAO_LEASE_SECONDS` when a positive number, else 30: a lease not renewed for this long is reaped. */
export function leaseSeconds(): number {
  const n = Number(process.env.WEITIAO_LEASE_SECONDS);
  return Number.isFinite(n) && n > 0 ? n : 30;
}

/** `WEITIAO_MAX_ENGINE_CRASHES` when a whole number ≥ 1, else 3 (as for local runs). */
function maxCrashes(): number {
  const n = Number(process.env.WEITIAO_MAX_ENGINE_CRASHES);
  return Number.isInteger(n) && n >= 1 ? n : 3;
}

/** Where an input name of the wire (the path on the worker, relative to its work dir) is on this server. */
export interface InputSource {
  kind: 'file' | 'dir';
  path: string;
}

/** What a lease keeps between its calls: the translation's state and whether the engine reported an error. */
interface LeaseRun {
  jobId: string;
  state: RunState;
  sawEngineError: boolean;
}

const SUPERVISED = new Set(['lora', 'qlora', 'full']);

export class LeaseService {
  readonly journal: JobJournal;
  private readonly runs = new Map<string, LeaseRun>();
  private readonly groups: NodeGroups;
  private readonly noted = new Set<string>();
  private reaper: NodeJS.Timeout | null = null;
  /** Validates waiting jobs' files (made on demand: a stopped one stays stopped, so a restarted server makes another). */
  private validator: Worker | null = null;
  private validating: Promise<void> | null = null;
  private lastRecovery = 0;

  constructor(private readonly ctx: Context) {
    this.journal = storeJournal(ctx);
    this.groups = new NodeGroups(ctx, this.journal);
  }

  // ------------------------------------------------------------------------------------------- claim

  /** The oldest queued job `worker` can run, now running under a new lease; null when there is none. */
  async claim(body: ClaimRequest): Promise<ClaimResponse | null> {
    if (body.protocol_version !== WORKER_PROTOCOL_VERSION) {
      throw new WeitiaoError(
        'invalid_request',
        `this server speaks worker protocol ${WORKER_PROTOCOL_VERSION}, the worker sent ${body.protocol_version}: install the same weitiao version on both / worker 协议版本不符（服务器 ${WORKER_PROTOCOL_VERSION}，worker ${body.protocol_version}），请安装相同版本的 weitiao`,
        { param: 'protocol_version' },
      );
    }
    this.validateWaiting();
    const leaseId = newId('lease');
    const workerId = `${REMOTE_WORKER_PREFIX}${body.worker.name}:${leaseId}`;
    const db = this.ctx.db;
    const canRun = (row: JobRow) => this.canRun(body.worker, row);
    const claimed = db
      .transaction((): { row: JobRow; seat: GroupSeat | null } | null => {
        const joined = this.groups.join(body, leaseId, canRun); // a seat in a forming multi-node group first
        if (joined) return joined;
        for (const candidate of unclaimedQueuedJobs(db)) {
          if (!canRun(candidate)) continue;
          if (jobNodeCount(candidate) > 1) {
            const seat = this.groups.open(body, leaseId, workerId, candidate);
            if (seat) return { row: candidate, seat };
          } else if (startRun(db, candidate.id, workerId)) return { row: candidate, seat: null };
        }
        return null;
      })
      .immediate();
    if (!claimed) return null;
    const { row, seat } = claimed;
    const lease = { id: leaseId, job_id: row.id, heartbeat_seconds: Math.max(0.5, leaseSeconds() / 3), expires_in_seconds: leaseSeconds() };
    if (!seat || seat.completes) {
      const runLease = seat ? leaseOf(seat.leader) : leaseId; // a group's events arrive on rank 0's lease
      try {
        const prepared = await prepareRun(this.journal, row.id, null);
        this.runs.set(runLease, { jobId: row.id, state: prepared.state, sawEngineError: false });
        if (!seat) this.journal.event(row.id, { message: `Claimed by remote worker ${body.worker.name} (${body.worker.host}) / 由远程 worker ${body.worker.name} 领取` });
        const plan: GroupPlan = { request: remoteRequest(prepared.request), inputs: await this.inputs(row, prepared.request, prepared.resumeFrom) };
        if (!seat) return ClaimResponse.parse({ lease, ...plan });
        this.groups.publish(seat, plan);
      } catch (err) {
        // As in the local worker: a job that cannot even start fails with the reason.
        const e = WeitiaoError.from(err);
        this.runs.delete(runLease);
        fail(this.journal, row.id, { code: e.code, message: e.message, param: e.param ?? null });
        return null;
      }
    }
    // A multi-node seat: answered once the whole group holds its leases (or null when it did not fill in time).
    const started = await this.groups.wait(seat);
    return started && ClaimResponse.parse({ lease, ...started.plan, node: started.node });
  }

  /** Whether `worker` lists the job's method; continued fine-tuning of a LoRA adapter stays with local workers (its merged base is made on the worker). */
  private canRun(worker: WorkerInfo, row: JobRow): boolean {
    const method = jobMethod(row);
    const listed = worker.methods.includes(method) || (SUPERVISED.has(method) && worker.methods.includes('supervised'));
    if (!listed) return false;
    let adapterOnAdapter = false;
    try {
      adapterOnAdapter = runState(this.ctx, row, null).weights.base_path !== undefined;
    } catch {
      return true; // the model is gone: prepareRun fails the job with the reason
    }
    if (adapterOnAdapter && !this.noted.has(row.id)) {
      this.noted.add(row.id);
      this.journal.event(row.id, {
        level: 'warn',
        message:
          'Remote workers do not run continued LoRA fine-tuning of a fine-tuned adapter yet (the merged base would stay on the worker); the job waits for a local worker (`weitiao serve` with its worker) / 远程 worker 暂不支持在已微调的 LoRA 上继续微调，任务将等待本地 worker',
      });
    }
    return !adapterOnAdapter;
  }

  /** The files the worker downloads, named by where they go in its work dir. */
  private async inputs(row: JobRow, request: TrainRequest, resumeFrom: string | null): Promise<LeaseInput[]> {
    const model = resolveModel(this.ctx, row.model);
    const inputs: LeaseInput[] = [{ name: 'inputs/base', kind: 'dir', bytes: null, sha256: null, cache_key: `${model.baseId}@${await dirFingerprint(request.base_model)}` }];
    if (request.base_adapter) inputs.push({ name: 'inputs/adapter', kind: 'dir', bytes: null, sha256: null, cache_key: null });
    inputs.push({ name: 'inputs/training.jsonl', kind: 'file', ...(await fileDigest(request.training_file)), cache_key: null });
    if (request.validation_file) inputs.push({ name: 'inputs/validation.jsonl', kind: 'file', ...(await fileDigest(request.validation_file)), cache_key: null });
    if (resumeFrom) inputs.push({ name: `output/checkpoints/${resumeFrom}`, kind: 'dir', bytes: null, sha256: null, cache_key: null });
    return inputs;
  }

  /** Where input `name` of the lease's job is on this server; `not_found` for a name the job does not have. */
  async input(leaseId: string, name: string): Promise<InputSource> {
    // Every node of a multi-node run downloads the inputs (only node 0 holds the job's own lease).
    const member = this.groups.member(leaseId);
    const row = member ? getJobRow(this.ctx.db, member.job_id)! : this.hold(leaseId);
    const missing = () => new WeitiaoError('not_found', `job ${row.id} has no input '${name}' / 任务没有输入 '${name}'`, { param: 'name' });
    switch (name) {
      case 'inputs/base':
        return { kind: 'dir', path: resolveModel(this.ctx, row.model).basePath };
      case 'inputs/adapter': {
        const adapter = resolveModel(this.ctx, row.model).adapterPath;
        if (!adapter) throw missing();
        return { kind: 'dir', path: adapter };
      }
      case 'inputs/training.jsonl':
        return { kind: 'file', path: await materializeFile(this.ctx, row.training_file) };
      case 'inputs/validation.jsonl':
        if (!row.validation_file) throw missing();
        return { kind: 'file', path: await materializeFile(this.ctx, row.validation_file) };
    }
    const m = /^output\/checkpoints\/(step-\d+)$/.exec(name);
    const dir = m ? path.join(this.ctx.home.jobs, row.id, 'checkpoints', m[1]) : null;
    if (!dir || !existsSync(dir)) throw missing();
    return { kind: 'dir', path: dir };
  }

  // ------------------------------------------------------------------------------------- lease calls

  /** The engine's events, in order, into the job (as a local run records them); renews the lease. */
  events(leaseId: string, events: EngineEvent[]): RequestedAction {
    const row = this.hold(leaseId);
    const run = this.run(leaseId, row);
    const dir = path.join(this.ctx.home.jobs, row.id);
    // Only checkpoints this server holds are recorded (checked before any event of the batch is); the event's
    // path is the worker's, ours replaces it.
    const held = (step: number) => path.join(dir, 'checkpoints', checkpointDirName(step));
    for (const e of events) {
      if (e.type === 'checkpoint' && !existsSync(held(e.step))) {
        throw new WeitiaoError('invalid_request', `checkpoint step ${e.step} was not uploaded before its event: PUT …/checkpoints/${e.step} first / 请先上传第 ${e.step} 步的检查点`, {
          param: 'events',
        });
      }
    }
    this.ctx.db.transaction(() => {
      for (const e of events) recordEngineEvent(this.journal, run, run.state, e.type === 'checkpoint' ? { ...e, path: held(e.step) } : e);
      beatHeart(this.ctx.db, row.id, row.worker_id!);
    })();
    return requestedStop(this.ctx.db, row.id);
  }

  /** Renews the lease; what the server asks of the engine. */
  heartbeat(leaseId: string): RequestedAction {
    const member = this.groups.member(leaseId);
    if (member) {
      this.groups.beat(leaseId);
      return requestedStop(this.ctx.db, member.job_id);
    }
    const row = this.hold(leaseId);
    beatHeart(this.ctx.db, row.id, row.worker_id!);
    return requestedStop(this.ctx.db, row.id);
  }

  /** A checkpoint directory (tar) into `<job dir>/checkpoints/step-NNNNNN`. */
  async storeCheckpoint(leaseId: string, step: number, body: Readable, sha256: string | undefined): Promise<UploadResponse> {
    const row = this.hold(leaseId);
    const rel = path.join('checkpoints', checkpointDirName(step));
    return this.receive(leaseId, row, rel, body, sha256);
  }

  /** The final model directory (tar) into `<job dir>/model`. */
  async storeResult(leaseId: string, body: Readable, sha256: string | undefined): Promise<UploadResponse> {
    const row = this.hold(leaseId);
    return this.receive(leaseId, row, 'model', body, sha256);
  }

  private async receive(leaseId: string, row: JobRow, rel: string, body: Readable, sha256: string | undefined): Promise<UploadResponse> {
    const target = path.join(this.ctx.home.jobs, row.id, rel);
    const beat = () => {
      try {
        beatHeart(this.ctx.db, row.id, row.worker_id!);
      } catch {
        /* busy store: the next chunk renews */
      }
    };
    const got = await receiveTar(body, target, { sha256, onProgress: beat, beforeCommit: () => void this.hold(leaseId) });
    beat();
    return { path: rel.split(path.sep).join('/'), ...got };
  }

  /** Settles the job with the same logic as a local run's end; the lease is gone afterwards. */
  async finish(leaseId: string, body: FinishRequest): Promise<FinishResponse> {
    const member = this.groups.member(leaseId);
    if (member) {
      // A rank > 0 node: its outcome only; rank 0 settles the job.
      this.groups.finishMember(leaseId, body.result !== null && body.failure === null);
      return { job_id: member.job_id, status: member.status };
    }
    const row = this.hold(leaseId);
    const run = this.run(leaseId, row);
    const dir = path.join(this.ctx.home.jobs, row.id);
    let result: TrainResult | null = body.result;
    if (result && !result.interrupted && result.model_dir) {
      const modelDir = path.join(dir, 'model');
      if (!existsSync(modelDir) || !statSync(modelDir).isDirectory()) {
        throw new WeitiaoError('invalid_request', 'the result names a model, but none was uploaded: PUT …/result first / 请先上传训练结果模型', { param: 'result' });
      }
      result = { ...result, model_dir: modelDir, last_checkpoint: null };
    }
    // As a local run's last look at the store: a cancel that arrived in the last moments decides the outcome.
    const asked = requestedStop(this.ctx.db, row.id);
    const reason = asked === 'cancel' ? 'cancel' : (body.stop_reason ?? asked);
    const failure = body.failure ? new WeitiaoError(errorCode(body.failure.code), body.failure.message) : null;
    this.runs.delete(leaseId);
    // In a multi-node run a lost node shows on rank 0 as a collective's error: unless every other node ended well,
    // the error counts as a lost run (retried from the last checkpoint, up to the crash limit), not the job's failure.
    const engineError = (body.engine_error || run.sawEngineError) && this.groups.membersEndedWell(row.id);
    await finishRun(this.journal, maxCrashes(), { jobId: row.id, reason, sawEngineError: engineError }, run.state, result, failure);
    return { job_id: row.id, status: getJobRow(this.ctx.db, row.id)!.status };
  }

  /** The job lease `leaseId` holds; `lease_lost` when it holds none (reaped, settled, cancelled, unknown). */
  private hold(leaseId: string): JobRow {
    const row = jobOfLease(this.ctx.db, leaseId);
    if (row) return row;
    this.runs.delete(leaseId);
    throw new WeitiaoError(
      'lease_lost',
      `lease ${leaseId} no longer holds a job (it expired, or the job was settled or cancelled): stop its engine and drop the job / 租约已失效，请停止训练并放弃该任务`,
      { param: 'lease' },
    );
  }

  /** The lease's translation state; rebuilt from the row when this process did not make it (the API restarted). */
  private run(leaseId: string, row: JobRow): LeaseRun {
    let run = this.runs.get(leaseId);
    if (!run) {
      const state = runState(this.ctx, row, null);
      state.sawMetrics = true; // which checkpoint it resumed from was said when it started
      run = { jobId: row.id, state, sawEngineError: false };
      this.runs.set(leaseId, run);
    }
    return run;
  }

  // ----------------------------------------------------------------------------------------- reaper

  /** Queues again (or settles) the jobs whose remote lease was not renewed in time; their ids. */
  reap(): string[] {
    const reaped: string[] = [];
    const cutoff = now() - leaseSeconds();
    for (const row of staleRemoteJobs(this.ctx.db, cutoff)) {
      const leaseId = row.worker_id!.slice(row.worker_id!.lastIndexOf(':') + 1);
      try {
        settleAbandoned(
          this.journal,
          row,
          maxCrashes(),
          `its remote worker ${row.worker_id!.split(':')[1]} stopped renewing lease ${leaseId} (${leaseSeconds()} s) / 远程 worker 的租约已过期`,
        );
        reaped.push(row.id);
      } catch (err) {
        if (!(err instanceof WeitiaoError && err.code === 'conflict')) throw err; // settled meanwhile
      }
      this.runs.delete(leaseId);
    }
    reaped.push(...this.groups.reap(leaseSeconds(), maxCrashes()));
    return reaped;
  }

  /** Starts the reaper (every second). */
  start(log: (line: string) => void = () => {}): void {
    if (this.reaper) return;
    this.reaper = setInterval(() => {
      try {
        this.reap();
      } catch (err) {
        log(`lease reaper: ${WeitiaoError.from(err).message}`);
      }
    }, 1000);
    this.reaper.unref();
  }

  /** Stops the reaper and any validation in progress (the job stays waiting). */
  async stop(): Promise<void> {
    if (this.reaper) clearInterval(this.reaper);
    this.reaper = null;
    const validator = this.validator;
    this.validator = null;
    await validator?.stop();
    await this.validating;
  }

  /**
   * Validates waiting jobs in the background, one after another, unless that already runs. Jobs a dead local
   * process held (a validator or worker of an earlier API process) are released first, every 30 s at most: with
   * no local worker nobody else would.
   */
  private validateWaiting(): void {
    if (this.validating) return;
    const validator = (this.validator ??= new Worker(this.ctx, { id: 'validator', train: false }));
    this.validating = (async () => {
      try {
        if (Date.now() - this.lastRecovery > 30_000) {
          this.lastRecovery = Date.now();
          await validator.recover();
        }
        while ((await validator.runNext()) !== null) {
          /* next */
        }
      } catch {
        /* the job itself records why; the next claim tries again */
      } finally {
        this.validating = null;
      }
    })();
  }
}

/** The engine request a worker gets: every path relative to the job's work dir (no path of this server), threads its own. */
function remoteRequest(request: TrainRequest): TrainRequest {
  return TrainRequest.parse({
    ...request,
    base_model: 'inputs/base',
    output_dir: 'output',
    training_file: 'inputs/training.jsonl',
    validation_file: request.validation_file ? 'inputs/validation.jsonl' : null,
    base_adapter: request.base_adapter ? 'inputs/adapter' : null,
    threads: null,
  });
}

function errorCode(code: string): ErrorCode {
  return (code in ERROR_CODES ? code : 'engine_error') as ErrorCode;
}

const services = new WeakMap<Context, LeaseService>();

/** The one lease service of a context (the routes and the server's start/stop share it). */
export function leaseService(ctx: Context): LeaseService {
  let s = services.get(ctx);
  if (!s) services.set(ctx, (s = new LeaseService(ctx)));
  return s;
}
