/**
 * The worker: the queue loop. It claims jobs from the store one at a time (atomically, across processes),
 * beats a heartbeat while it holds one, takes back jobs whose worker died, and stops cleanly.
 *
 * ```ts
 * const worker = new Worker(ctx, { onEngineEvent: (jobId, e) => drawProgress(e) });
 * worker.start();        // recovers jobs a dead worker left behind, then polls for work
 * await worker.stop();   // a running job saves a checkpoint and is queued again
 * ```
 * Phases of a job: validating_files (validate the chat files with the base model's tokenizer, resolve
 * `auto` hyperparameters and the label set) → queued → running (the engine's `train` command in
 * `<home>/jobs/<job id>`, its events translated into job events, checkpoints and progress) → succeeded
 * (the adapter registered as `ft:<base>:<suffix>:<id>`, a metrics CSV as result file), failed, cancelled
 * or paused. Cancel and pause requests arrive through the store (any process may make them); the worker
 * checks every `pollMs` and signals the engine's process group. One job's phases live beside this file:
 * validate.ts (validating_files), run.ts (the engine run and its outcome), outcomes.ts (settle, fail, lost).
 */
import { EventEmitter } from 'node:events';
import type { Context } from '../context.js';
import type { EngineEvent } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { IdleWait } from '../idle.js';
import { newId } from '../store/index.js';
import { isGroupAlive, STALE_WORKER_SECONDS, stopGroup, workerGone } from './internal/process.js';
import { addEvent, parseExtension } from './internal/records.js';
import { defaultMaxCrashes } from './internal/recovery.js';
import { fail, settleAbandoned, type JobJournal, type NewJobEvent } from './outcomes.js';
import { beatHeart, claimWaitingJob, getJobRow, jobsClaimedByOthers, releaseJob, type JobRow } from './repository.js';
import { trainJob, type JobRun, type RunOptions } from './run.js';
import type { FineTuningJob, FineTuningJobEvent } from './schemas.js';
import { validateJobFiles } from './validate.js';
import { jobToWire } from './wire.js';

export interface WorkerOptions {
  /** A name for this worker; the process id is appended so others can tell whether it still lives. */
  id?: string;
  /** How often an idle worker looks for jobs and a busy one for cancel/pause requests. */
  pollMs?: number;
  heartbeatMs?: number;
  /** A claimed job whose worker has not beaten for this long is taken over. */
  staleSeconds?: number;
  /** Cancel: SIGTERM, then SIGKILL after this long (the whole tree must be gone within 5 s). */
  cancelGraceMs?: number;
  /** Pause and shutdown: time the engine gets to save its checkpoint before SIGKILL. */
  pauseGraceMs?: number;
  /**
   * A job whose run is lost (engine crash, worker gone) this many times in a row — no checkpoint saved in
   * between — fails with the cause instead of resuming again. Default `WEITIAO_MAX_ENGINE_CRASHES`, else 3.
   */
  maxCrashes?: number;
  /** Torch threads for the engine (null: the engine's default). */
  threads?: number | null;
  /** Every job event this worker writes, as it is written. */
  onEvent?: (jobId: string, event: FineTuningJobEvent) => void;
  /** Every raw engine event (progress bars want these: step, loss, tokens/s, ETA). */
  onEngineEvent?: (jobId: string, event: EngineEvent) => void;
  /** False: only validate jobs' files (validating_files → queued) and leave the training to remote workers (src/workers). */
  train?: boolean;
}

export interface WorkerEvents {
  event: [jobId: string, event: FineTuningJobEvent];
  engine: [jobId: string, event: EngineEvent];
  status: [job: FineTuningJob];
  /** Something went wrong outside any one job (e.g. the store was busy); the loop carries on. */
  worker_error: [error: WeitiaoError];
}

export class Worker extends EventEmitter<WorkerEvents> {
  readonly id: string;
  private readonly opts: Required<Omit<WorkerOptions, 'id' | 'onEvent' | 'onEngineEvent' | 'threads' | 'train'>> & WorkerOptions;
  private loop: Promise<void> | null = null;
  private stopping = false;
  private readonly idle = new IdleWait();
  private busy = false;
  private run: JobRun | null = null;
  private lastRecovery = 0;
  /** Where a job's phases write: the store, and this worker's hooks and events. */
  private readonly journal: JobJournal;

  constructor(
    private readonly ctx: Context,
    options: WorkerOptions = {},
  ) {
    super();
    this.id = `${options.id ?? newId('worker')}:${process.pid}`;
    this.opts = {
      pollMs: 1000,
      heartbeatMs: 5000,
      staleSeconds: STALE_WORKER_SECONDS,
      cancelGraceMs: 2000,
      pauseGraceMs: 120_000,
      maxCrashes: defaultMaxCrashes(),
      ...options,
    };
    this.journal = {
      ctx,
      event: (jobId, e) => this.event(jobId, e),
      replaced: (jobId, wire) => this.announce(jobId, wire),
      engine: (jobId, e) => {
        this.opts.onEngineEvent?.(jobId, e);
        this.emit('engine', jobId, e);
      },
    };
  }

  /** Recovers jobs left by dead workers, then runs jobs one after another until `stop()`. */
  start(): void {
    if (this.loop) return;
    this.stopping = false;
    this.loop = (async () => {
      while (!this.stopping) {
        try {
          if (Date.now() - this.lastRecovery > 30_000) await this.recover();
          const id = await this.runNext();
          if (id !== null) continue;
        } catch (err) {
          this.emit('worker_error', WeitiaoError.from(err));
        }
        if (this.stopping) break;
        await this.idle.sleep(this.opts.pollMs);
      }
    })();
  }

  /** Stops polling; a running job's engine saves a checkpoint and the job is queued again for the next start. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.idle.wake();
    this.run?.stop('shutdown');
    await this.loop;
    this.loop = null;
  }

  /**
   * SIGKILL to the running engine's process group, at once (a second Ctrl-C). The engine runs in its own
   * group, so exiting this process would otherwise leave it training; the job is re-queued by the next
   * worker's recovery and resumes from its last checkpoint.
   */
  kill(): void {
    this.run?.kill();
  }

  /** Claims the oldest waiting job (atomically, across processes) and runs it; its id, or null when none waits. */
  async runNext(): Promise<string | null> {
    if (this.busy) return null;
    const row = this.claim();
    if (!row) return null;
    await this.execute(row);
    return row.id;
  }

  /** Claims one given job (it must be waiting: validating_files or queued) and runs it to an end. */
  async runJob(id: string): Promise<FineTuningJob> {
    if (this.busy) throw new WeitiaoError('conflict', `worker ${this.id} is already running a job / 该 worker 正在运行其他任务`);
    const row = this.claim(id);
    if (!row) {
      const current = getJobRow(this.ctx.db, id);
      if (!current) throw new WeitiaoError('not_found', `no such fine-tuning job: ${id} / 找不到微调任务`, { param: 'fine_tuning_job_id' });
      throw new WeitiaoError('conflict', `job ${id} is not waiting to run (status '${current.status}') / 任务不在等待运行`, {
        param: 'fine_tuning_job_id',
      });
    }
    await this.execute(row);
    return jobToWire(getJobRow(this.ctx.db, id)!);
  }

  /**
   * Takes back jobs whose worker is gone (process dead or heartbeat stale): a left-over engine is stopped;
   * a running job is queued again to resume from its last checkpoint, or failed after `maxCrashes` losses in a row.
   * Returns the ids it touched.
   */
  async recover(): Promise<string[]> {
    this.lastRecovery = Date.now();
    const rows = jobsClaimedByOthers(this.ctx.db, this.id);
    const touched: string[] = [];
    for (const row of rows) {
      if (!workerGone(row.worker_id, row.heartbeat_at, this.opts.staleSeconds)) continue;
      // Its engine runs in its own process group and may have outlived the worker: two engines must
      // never write one job directory.
      if (isGroupAlive(row.worker_pid)) await stopGroup(row.worker_pid!, 10_000);
      try {
        if (row.status === 'validating_files' || row.status === 'queued') releaseJob(this.ctx.db, row.id, row.worker_id!);
        else settleAbandoned(this.journal, row, this.opts.maxCrashes, `its worker ${row.worker_id} stopped / 运行它的 worker 已停止`);
        touched.push(row.id);
      } catch (err) {
        // Another worker got there first: fine.
        if (!(err instanceof WeitiaoError && err.code === 'conflict')) throw err;
      }
    }
    return touched;
  }

  // ---------------------------------------------------------------------------------------------- claim

  private claim(id?: string): JobRow | null {
    return claimWaitingJob(this.ctx.db, this.id, id, this.opts.train === false ? ['validating_files'] : undefined);
  }

  private async execute(claimed: JobRow): Promise<void> {
    this.busy = true;
    const beat = setInterval(() => {
      try {
        beatHeart(this.ctx.db, claimed.id, this.id);
      } catch {
        /* busy store: the next beat will do */
      }
    }, this.opts.heartbeatMs);
    beat.unref();
    try {
      const validating = { pollMs: this.opts.pollMs, stopping: () => this.stopping };
      if (claimed.status === 'validating_files' && !(await validateJobFiles(this.journal, claimed.id, validating))) return;
      if (this.stopping || this.opts.train === false) {
        this.release(claimed.id);
        return;
      }
      const nodes = parseExtension(claimed).settings.nodes ?? 1;
      if (nodes > 1) {
        // Multi-node runs are gangs of remote workers (src/workers/groups.ts); this worker runs one process tree.
        this.event(claimed.id, {
          level: 'warn',
          message: `This job trains on ${nodes} nodes: it waits for ${nodes} remote workers (\`weitiao worker --server URL\` on each host); the local worker does not run multi-node jobs / 该任务需要 ${nodes} 个节点：等待 ${nodes} 个远程 worker 领取，本地 worker 不运行多节点任务`,
        });
        this.release(claimed.id);
        return;
      }
      await trainJob(this.journal, claimed.id, this.runOptions(), (run) => (this.run = run));
    } catch (err) {
      const e = WeitiaoError.from(err);
      fail(this.journal, claimed.id, { code: e.code, message: e.message, param: e.param ?? null });
    } finally {
      clearInterval(beat);
      this.busy = false;
      this.run = null;
      const row = getJobRow(this.ctx.db, claimed.id);
      // Whatever happened, a job that is still waiting must be claimable again.
      if (row && row.worker_id === this.id && (row.status === 'queued' || row.status === 'validating_files')) this.release(claimed.id);
      if (row) this.emit('status', jobToWire(getJobRow(this.ctx.db, claimed.id)!));
    }
  }

  private release(id: string): void {
    releaseJob(this.ctx.db, id, this.id);
  }

  private runOptions(): RunOptions {
    const { pollMs, cancelGraceMs, pauseGraceMs, maxCrashes } = this.opts;
    return { workerId: this.id, pollMs, cancelGraceMs, pauseGraceMs, maxCrashes, threads: this.opts.threads ?? null };
  }

  private event(id: string, e: NewJobEvent): void {
    this.announce(id, addEvent(this.ctx.db, id, e));
  }

  private announce(id: string, wire: FineTuningJobEvent): void {
    this.opts.onEvent?.(id, wire);
    this.emit('event', id, wire);
  }
}
