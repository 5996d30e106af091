/**
 * The remote worker (issue 19), `weitiao worker --server URL --token T`: it claims a job it can run from the
 * API, downloads the job's inputs into its own work dir, runs the engine, relays the engine's raw events back
 * (checkpoints uploaded before their event), uploads the final model and says how the run ended. The server
 * keeps every store write and settles the job with the same logic as a local run (src/jobs/run.ts).
 *
 * ```ts
 * const worker = new RemoteWorker({ server, token, name: 'gpu-1', home: '/var/lib/weitiao-worker' });
 * const done = worker.start();   // claims and runs jobs until stop()
 * await worker.stop();           // a running job's engine saves a checkpoint; it is uploaded; the job is queued again
 * ```
 * Cancel and pause arrive as `requested_action` in the answers to events and heartbeats and stop the engine
 * like a local run's (JobRun: SIGTERM to its group, SIGKILL after the grace). A 409 `lease_lost` means another
 * worker may hold the job now: the engine group is killed at once and nothing more is written for the job.
 */
import { mkdir, rm, symlink } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { runEngine, type EngineEvent, type TrainRequest, type TrainResult } from '../engine/index.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { IdleWait } from '../idle.js';
import { JobRun } from '../jobs/index.js';
import {
  ClaimResponse,
  FinishResponse,
  LeaseResponse,
  UploadResponse,
  WORKER_PROTOCOL_VERSION,
  type ClaimRequest,
  type FinishRequest,
  type Lease,
  type NodeAssignment,
  type RequestedAction,
  type WorkerDevice,
  type WorkerMethod,
} from './protocol.js';
import { cachedDir, LeaseLostError, WorkerClient } from './transfer.js';

export interface RemoteWorkerOptions {
  /** The API's base URL, e.g. `http://10.0.0.5:8000`. */
  server: string;
  /** An API key. */
  token: string;
  /** Part of the job's worker id (`remote:<name>:<lease>`); default the host name. */
  name?: string;
  /** The worker's own state directory: work dirs under `jobs/`, the base-model cache under `cache/models/`. */
  home: string;
  methods?: WorkerMethod[];
  /** Torch threads for the engine (null: the engine's default). */
  threads?: number | null;
  /** The address other workers reach this one at when it hosts a multi-node run's rendezvous (default: the host name). */
  advertiseHost?: string;
  /** How often an idle worker asks for work. */
  pollMs?: number;
  cancelGraceMs?: number;
  pauseGraceMs?: number;
  /** Progress lines for people (claimed, downloaded, steps, uploaded, finished). */
  log?: (line: string) => void;
}

/** Events per POST and the longest an event waits for its batch (protocol.md: ≤ 50 events / ≤ 0.5 s). */
const BATCH_EVENTS = 50;
const BATCH_MS = 500;
/** A progress line per step at most this often. */
const STEP_LINE_MS = 5000;

export class RemoteWorker {
  readonly name: string;
  private readonly client: WorkerClient;
  private readonly opts: Required<Omit<RemoteWorkerOptions, 'name' | 'log'>> & { log: (line: string) => void };
  private readonly devices: WorkerDevice[];
  private stopping = false;
  private run: JobRun | null = null;
  private loop: Promise<void> | null = null;
  private readonly idle = new IdleWait();

  constructor(options: RemoteWorkerOptions) {
    this.name = options.name ?? os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64);
    this.client = new WorkerClient(options.server, options.token);
    this.opts = {
      methods: ['supervised', 'dpo', 'reinforcement'],
      advertiseHost: os.hostname(),
      threads: null,
      pollMs: 2000,
      cancelGraceMs: 2000,
      pauseGraceMs: 120_000,
      ...options,
      log: options.log ?? (() => {}),
    };
    const cpus = os.cpus();
    this.devices = [{ type: 'cpu', name: `${cpus.length} × ${cpus[0]?.model?.trim() || 'cpu'}`, memory_bytes: os.totalmem() }];
  }

  /** Claims and runs jobs one after another until `stop()`; rejects when the server refuses this worker (key, protocol). */
  start(): Promise<void> {
    this.loop ??= (async () => {
      while (!this.stopping) {
        let claim: ClaimResponse | null = null;
        try {
          // A multi-node job's claim waits on the server until its group is complete (a bounded long-poll).
          claim = await this.client.json('POST', '/claim', { ...this.claimRequest(), rendezvous_port: await freePort() }, ClaimResponse, 5000);
        } catch (err) {
          const e = WeitiaoError.from(err);
          if (e.code !== 'unavailable' && e.code !== 'rate_limited') throw e; // a wrong key or protocol does not heal by waiting
          this.opts.log(`cannot claim: ${e.message} / 暂时无法领取任务`);
        }
        if (claim) {
          await this.execute(claim);
          continue;
        }
        await this.idle.sleep(this.opts.pollMs);
      }
    })();
    return this.loop;
  }

  /** Stops claiming; a running engine saves a checkpoint, which is uploaded, and the job is queued again (`shutdown`). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.idle.wake();
    this.run?.stop('shutdown');
    await this.loop?.catch(() => {});
  }

  /** SIGKILL to the running engine's group at once (a second Ctrl-C); the server's reaper requeues the job. */
  kill(): void {
    this.run?.kill();
  }

  private claimRequest(): ClaimRequest {
    return {
      protocol_version: WORKER_PROTOCOL_VERSION,
      worker: {
        name: this.name,
        host: os.hostname().slice(0, 255),
        devices: this.devices,
        memory_bytes: os.totalmem(),
        methods: this.opts.methods,
        advertise_host: this.opts.advertiseHost.slice(0, 255),
      },
    };
  }

  /** One claimed job, from download to `finish`; never throws (the job's fate is the server's from here). */
  private async execute(claim: ClaimResponse): Promise<void> {
    const { lease } = claim;
    const jobId = lease.job_id;
    const log = (line: string) => this.opts.log(`job ${jobId}: ${line}`);
    const workDir = path.resolve(this.opts.home, 'jobs', jobId);
    const run = new JobRun(jobId, this.opts);
    this.run = run;
    if (this.stopping) run.stop('shutdown');
    const session = new LeaseSession(this.client, lease, run, log);
    const node = claim.node ?? null;
    const where = node ? `, node ${node.rank} of ${node.nodes}, rendezvous ${node.master_addr}:${node.master_port}` : '';
    log(`claimed (lease ${lease.id}${where}) / 已领取任务`);
    let result: TrainResult | null = null;
    let failure: WeitiaoError | null = null;
    try {
      await rm(workDir, { recursive: true, force: true }); // what the server sends is the truth, never a stale local copy
      await mkdir(workDir, { recursive: true });
      await this.download(claim, workDir, session, log);
      if (!run.reason) ({ result, failure } = await this.train(claim.request, workDir, run, session, log, node));
      if (session.gone) return;
      if (node && node.rank > 0) {
        // Node 0 reports the run; this node says only how its share ended.
        await this.finish(session, log, { result, failure: failure && { code: failure.code, message: hideServerPaths(failure.message, workDir) }, engine_error: run.sawEngineError, stop_reason: run.reason });
        return;
      }
      if (result && !result.interrupted && result.model_dir) {
        const outputDir = path.resolve(workDir, claim.request.output_dir);
        const modelDir = path.resolve(outputDir, result.model_dir);
        const up = await session.call(() => this.client.uploadDir(session.route('/result'), modelDir, this.scratch(), UploadResponse, session.budgetMs));
        log(`model uploaded (${formatBytes(up.bytes)}) / 模型已上传`);
        result = { ...result, model_dir: path.relative(outputDir, modelDir) };
      }
      await this.finish(session, log, {
        result,
        failure: failure ? { code: failure.code, message: hideServerPaths(failure.message, workDir) } : null,
        engine_error: run.sawEngineError,
        stop_reason: run.reason,
      });
    } catch (err) {
      run.kill();
      if (session.gone) return;
      // The worker's own failure (a download that kept failing, a full disk): the server counts the run as lost.
      const e = WeitiaoError.from(err);
      log(`failed: ${e.message} / 运行失败`);
      await this.finish(session, log, { result: null, failure: { code: e.code, message: e.message }, engine_error: false, stop_reason: run.reason }).catch(() => {});
    } finally {
      session.close();
      this.run = null;
      await rm(workDir, { recursive: true, force: true }).catch(() => {});
    }
  }

  /** Puts every input where the request expects it; a base model (an input with a cache key) comes from the cache. */
  private async download(claim: ClaimResponse, workDir: string, session: LeaseSession, log: (line: string) => void): Promise<void> {
    const started = Date.now();
    for (const input of claim.inputs) {
      if (session.run.reason) return;
      const dest = path.resolve(workDir, input.name);
      if (!dest.startsWith(workDir + path.sep)) throw new WeitiaoError('invalid_request', `input ${input.name} points outside the work dir / 输入路径越界`);
      const route = session.route(`/inputs/${encodeURIComponent(input.name)}`);
      if (input.kind === 'dir' && input.cache_key) {
        const cached = await session.call(() => cachedDir(path.join(this.opts.home, 'cache', 'models'), input.cache_key!, (dir) => this.client.downloadDir(route, dir)));
        await mkdir(path.dirname(dest), { recursive: true });
        await symlink(cached.dir, dest, 'dir');
        log(`${input.name}: ${cached.hit ? 'from the cache / 使用缓存' : 'downloaded and cached / 已下载并缓存'}`);
      } else if (input.kind === 'dir') {
        await session.call(() => this.client.downloadDir(route, dest));
      } else {
        await session.call(() => this.client.downloadFile(route, dest, input.sha256));
      }
    }
    log(`inputs ready in ${((Date.now() - started) / 1000).toFixed(1)} s / 输入已就绪`);
  }

  /** Runs the engine on the request (its paths resolved against the work dir), relaying its events. */
  private async train(
    wire: ClaimResponse['request'],
    workDir: string,
    run: JobRun,
    session: LeaseSession,
    log: (line: string) => void,
    node: NodeAssignment | null,
  ): Promise<{ result: TrainResult | null; failure: WeitiaoError | null }> {
    const at = (p: string) => path.resolve(workDir, p);
    const outputDir = at(wire.output_dir);
    const request: TrainRequest = {
      ...wire,
      base_model: at(wire.base_model),
      output_dir: outputDir,
      training_file: at(wire.training_file),
      validation_file: wire.validation_file === null ? null : at(wire.validation_file),
      base_adapter: wire.base_adapter === null ? null : at(wire.base_adapter),
      ...(this.opts.threads ? { threads: this.opts.threads } : {}),
    };
    const relay = new EventRelay(session, async (e) => {
      const up = await this.client.uploadDir(session.route(`/checkpoints/${e.step}`), e.path, this.scratch(), UploadResponse, session.budgetMs);
      log(`checkpoint at step ${e.step} uploaded (${formatBytes(up.bytes)}) / 检查点已上传`);
      // The server resolves it against its own copy of the job's directory.
      return { ...e, path: path.relative(outputDir, e.path) };
    });
    let lastStepLine = 0;
    let result: TrainResult | null = null;
    let failure: WeitiaoError | null = null;
    try {
      result = await runEngine('train', request, {
        env: { WEITIAO_CACHE_DIR: path.join(this.opts.home, 'cache'), ...torchrunNodeEnv(node) }, // the precision probe's per-machine figures
        onSpawn: (child) => {
          run.pid = child.pid ?? null;
          log(`engine started (pid ${run.pid}) / 训练引擎已启动`);
          if (run.reason) run.stop(run.reason, true);
        },
        onEvent: (e) => {
          if (e.type === 'error') run.sawEngineError = true;
          if (e.type === 'hello') this.noteDevice(e.device);
          if (e.type === 'metrics' && (Date.now() - lastStepLine > STEP_LINE_MS || e.step === e.total_steps)) {
            lastStepLine = Date.now();
            log(`step ${e.step}/${e.total_steps}${e.train_loss !== undefined ? `, loss ${e.train_loss.toFixed(4)}` : ''} / 第 ${e.step} 步`);
          }
          if (node && node.rank > 0) return; // only node 0's events are the run's (this node's launcher says little)
          relay.push(e.type === 'log' || e.type === 'error' ? { ...e, message: hideServerPaths(e.message, workDir) } : e);
        },
      });
    } catch (err) {
      failure = WeitiaoError.from(err);
    } finally {
      run.ended();
      relay.close();
      await relay.done; // every event (and checkpoint) is with the server before the outcome is
    }
    if (relay.failure && !session.gone) throw relay.failure;
    return { result, failure };
  }

  /** The engine says which accelerator torch sees: later claims state it. */
  private noteDevice(device: string): void {
    const type = device === 'cuda' || device === 'mps' ? device : null;
    if (type && !this.devices.some((d) => d.type === type)) this.devices.push({ type, name: type, memory_bytes: null });
  }

  private async finish(session: LeaseSession, log: (line: string) => void, body: FinishRequest): Promise<void> {
    const done = await session.call(() => this.client.json('POST', session.route('/finish'), body, FinishResponse, session.budgetMs));
    log(`finished: ${done?.status ?? '?'}${body.stop_reason ? ` (${body.stop_reason})` : ''} / 已结束`);
  }

  private scratch(): string {
    return path.join(this.opts.home, 'cache', 'uploads');
  }
}

/**
 * A claimed job's lease: the route of its calls, heartbeats while nothing else renews it, the server's
 * requested actions handed to the run, and `lease_lost` turned into killing the engine group.
 */
class LeaseSession {
  /** The lease is gone (409 lease_lost): nothing more may be written for the job. */
  gone = false;
  lastRenewal = Date.now();
  readonly budgetMs: number;
  private readonly beat: NodeJS.Timeout;
  private beating = false;

  constructor(
    readonly client: WorkerClient,
    readonly lease: Lease,
    readonly run: JobRun,
    private readonly log: (line: string) => void,
  ) {
    // Retrying longer than the lease lives is pointless: the reaper has requeued the job by then.
    this.budgetMs = Math.max(10_000, lease.expires_in_seconds * 1000);
    const every = lease.heartbeat_seconds * 1000;
    this.beat = setInterval(() => void this.heartbeat(every), Math.min(every, 1000));
    this.beat.unref();
  }

  route(sub: string): string {
    return `/leases/${encodeURIComponent(this.lease.id)}${sub}`;
  }

  /** Runs a lease call; `lease_lost` kills the engine group and marks the session gone (and is rethrown). */
  async call<T>(fn: () => Promise<T>): Promise<T> {
    if (this.gone) throw new LeaseLostError(`lease ${this.lease.id} is gone`);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof LeaseLostError) this.drop(err.message);
      throw err;
    }
  }

  /** The server's wish from an events or heartbeat answer. */
  act(action: RequestedAction): void {
    if (action) this.run.stop(action);
  }

  close(): void {
    clearInterval(this.beat);
  }

  private drop(why: string): void {
    if (this.gone) return;
    this.gone = true;
    this.run.kill();
    this.log(`lease lost: engine killed, job dropped / 租约已失效，已停止训练并放弃该任务 (${why})`);
  }

  private async heartbeat(everyMs: number): Promise<void> {
    if (this.gone || this.beating || Date.now() - this.lastRenewal < everyMs) return;
    this.beating = true;
    try {
      const answer = await this.call(() => this.client.json('POST', this.route('/heartbeat'), {}, LeaseResponse, this.budgetMs));
      this.lastRenewal = Date.now();
      this.act(answer?.requested_action ?? null);
    } catch {
      /* lease_lost is handled in call(); anything else: the next beat tries again */
    } finally {
      this.beating = false;
    }
  }
}

type CheckpointEvent = Extract<EngineEvent, { type: 'checkpoint' }>;

/**
 * Sends a run's engine events to the server in order, in batches (≤ 50 events, ≤ 0.5 s), uploading each
 * checkpoint's directory before its event goes out. One pump; the engine never waits for it.
 */
class EventRelay {
  readonly done: Promise<void>;
  /** Why relaying stopped early (the server unreachable beyond the lease): the engine was killed. */
  failure: WeitiaoError | null = null;
  private readonly queue: EngineEvent[] = [];
  private readonly uploaded = new WeakSet<EngineEvent>();
  private firstQueuedAt = 0;
  private closed = false;
  private notify: (() => void) | null = null;

  constructor(
    private readonly session: LeaseSession,
    private readonly upload: (e: CheckpointEvent) => Promise<CheckpointEvent>,
  ) {
    this.done = this.pump().catch((err) => {
      if (!this.session.gone) {
        this.failure = WeitiaoError.from(err);
        this.session.run.kill(); // its events could not be reported: training on would only be lost
      }
      this.queue.length = 0;
    });
  }

  push(e: EngineEvent): void {
    if (this.session.gone || this.failure) return;
    if (!this.queue.length) this.firstQueuedAt = Date.now();
    this.queue.push(e);
    this.notify?.();
  }

  /** The engine ended: send what is left, then `done` resolves. */
  close(): void {
    this.closed = true;
    this.notify?.();
  }

  private async pump(): Promise<void> {
    for (;;) {
      if (!this.queue.length) {
        if (this.closed) return;
        await this.wait(null);
        continue;
      }
      const head = this.queue[0];
      if (head.type === 'checkpoint' && !this.uploaded.has(head)) {
        const sent = await this.session.call(() => this.upload(head));
        this.uploaded.add(sent);
        this.queue[0] = sent;
        continue;
      }
      const stop = this.queue.findIndex((e, i) => i > 0 && e.type === 'checkpoint');
      const ready = this.closed || stop > 0 || this.queue.length >= BATCH_EVENTS;
      const left = this.firstQueuedAt + BATCH_MS - Date.now();
      if (!ready && left > 0) {
        await this.wait(left);
        continue;
      }
      const batch = this.queue.slice(0, Math.min(stop > 0 ? stop : this.queue.length, BATCH_EVENTS));
      const answer = await this.session.call(() =>
        this.session.client.json('POST', this.session.route('/events'), { events: batch }, LeaseResponse, this.session.budgetMs),
      );
      this.session.lastRenewal = Date.now(); // events renew the lease as a heartbeat does
      this.queue.splice(0, batch.length);
      this.firstQueuedAt = Date.now();
      this.session.act(answer?.requested_action ?? null);
    }
  }

  private wait(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      const t = ms === null ? null : setTimeout(done, ms);
      function done() {
        if (t) clearTimeout(t);
        resolve();
      }
      this.notify = () => {
        this.notify = null;
        done();
      };
    });
  }
}

/** torchrun's own settings for this host's place in a multi-node run (engine distributed.py reads them); none for one node. */
function torchrunNodeEnv(node: NodeAssignment | null): Record<string, string> {
  if (!node) return {};
  return { PET_NNODES: String(node.nodes), PET_NODE_RANK: String(node.rank), PET_MASTER_ADDR: node.master_addr, PET_MASTER_PORT: String(node.master_port) };
}

/** A port free on this host now, for the rendezvous should the next claim make this worker a group's node 0. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function formatBytes(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`;
}
