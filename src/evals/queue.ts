/**
 * The eval runs' durable queue: runs are rows in the store (status `queued`), so any process on the home may
 * execute them. A queue claims one run at a time atomically (two processes never run the same run), beats
 * its heartbeat while it holds it, takes back runs whose worker died (dead process or stale heartbeat, the
 * fine-tuning worker's rule: src/jobs/internal/process.ts) and resumes them after their last stored row,
 * and stops a run that is cancelled or deleted from any process. Progress goes to the run object
 * (`weitiao.progress`) and to its events (`eval_run_events`).
 *
 * ```ts
 * const queue = new EvalRunQueue(ctx, { judgeBaseUrl: `${url}/v1` });
 * queue.start();        // the API server: recovers, then polls for queued runs
 * await queue.drain();  // a CLI command: runs what is queued now, then returns
 * await queue.stop();   // a running run is queued again and continues where it stopped
 * ```
 */
import { EventEmitter } from 'node:events';
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { IdleWait } from '../idle.js';
import { STALE_WORKER_SECONDS, workerGone } from '../jobs/index.js';
import { newId } from '../store/index.js';
import * as repo from './internal/repository.js';
import { executeRun } from './internal/runner.js';

export interface EvalRunQueueOptions {
  /** A name for this queue; the process id is appended so others can tell whether it still lives. */
  id?: string;
  /** How often an idle queue looks for runs and a busy one checks that its run was not cancelled. */
  pollMs?: number;
  heartbeatMs?: number;
  /** A claimed run whose queue has not beaten for this long is taken over. */
  staleSeconds?: number;
  /**
   * Rows generated, graded and stored together; at most this many are scored again after a crash. Each chunk
   * starts the engine twice (generate, grade: seconds each on a CPU), so the default keeps a 500-row run to two chunks.
   */
  chunkSize?: number;
  /** A run lost this many times (its worker died each time) fails instead of being queued again. */
  maxAttempts?: number;
  /** The judge endpoint for score_model criteria that name none (the API server passes its own /v1); else the one stored with the run. */
  judgeBaseUrl?: string | null;
  /** The judge's key when the run's creator gave none to this process (default WEITIAO_JUDGE_API_KEY). */
  judgeApiKey?: string | null;
}

export interface EvalRunQueueEvents {
  event: [runId: string, event: repo.RunEventObject];
  /** A run this queue executed has stopped (ended, cancelled, or queued again at shutdown). */
  status: [run: repo.RunObject];
  queue_error: [error: WeitiaoError];
}

/** Callers' keys for score_model judges, held in the memory of the process that created the run: never stored. */
const judgeKeys = new Map<string, string>();
/** The queues running in this process, so a run created or cancelled here is picked up or stopped at once. */
const localQueues = new Set<EvalRunQueue>();

/** Keeps the creator's judge key for the run, for a queue of this process to use. */
export function rememberJudgeKey(runId: string, key: string | null | undefined): void {
  if (key) judgeKeys.set(runId, key);
}

/** Wakes this process's idle queues (a run was just queued). */
export function wakeLocalQueues(): void {
  for (const q of localQueues) q.wake();
}

/** Aborts the run at once if a queue of this process is executing it (cancel, delete). */
export function stopLocalRun(runId: string): void {
  for (const q of localQueues) q.abort(runId);
}

export class EvalRunQueue extends EventEmitter<EvalRunQueueEvents> {
  readonly id: string;
  private readonly opts: Required<Omit<EvalRunQueueOptions, 'id' | 'judgeBaseUrl' | 'judgeApiKey'>> & EvalRunQueueOptions;
  private loop: Promise<void> | null = null;
  private stopping = false;
  private readonly idle = new IdleWait();
  private current: { runId: string; controller: AbortController } | null = null;
  private lastRecovery = 0;

  constructor(
    private readonly ctx: Context,
    options: EvalRunQueueOptions = {},
  ) {
    super();
    this.id = `${options.id ?? newId('evalqueue')}:${process.pid}`;
    this.opts = { pollMs: 1000, heartbeatMs: 5000, staleSeconds: STALE_WORKER_SECONDS, chunkSize: 256, maxAttempts: 3, ...options };
  }

  /** Recovers runs left by dead queues, then executes queued runs one after another until `stop()`. */
  start(): void {
    if (this.loop) return;
    this.stopping = false;
    localQueues.add(this);
    this.loop = (async () => {
      while (!this.stopping) {
        try {
          if (Date.now() - this.lastRecovery > 30_000) this.recover();
          if ((await this.runNext()) !== null) continue;
        } catch (err) {
          this.emit('queue_error', WeitiaoError.from(err));
        }
        if (this.stopping) break;
        await this.idle.sleep(this.opts.pollMs);
      }
    })();
  }

  /** Stops polling; a run in progress is queued again and continues after its last stored row on the next start. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.idle.wake();
    this.current?.controller.abort('shutdown');
    await this.loop;
    this.loop = null;
    localQueues.delete(this);
  }

  /** Runs every run queued now (after recovering dead queues' runs), then returns: for commands that wait. */
  async drain(): Promise<void> {
    this.recover();
    localQueues.add(this);
    try {
      while ((await this.runNext()) !== null);
    } finally {
      if (!this.loop) localQueues.delete(this);
    }
  }

  wake(): void {
    this.idle.wake();
  }

  abort(runId: string): void {
    if (this.current?.runId === runId) this.current.controller.abort('cancel');
  }

  /**
   * Takes back runs whose queue is gone (process dead or heartbeat stale): queued again to continue after
   * their last stored row, or failed once they were lost `maxAttempts` times. Returns the ids it touched.
   */
  recover(): string[] {
    this.lastRecovery = Date.now();
    const touched: string[] = [];
    for (const row of repo.runsClaimedByOthers(this.ctx, this.id)) {
      if (!workerGone(row.worker_id, row.heartbeat_at, this.opts.staleSeconds)) continue;
      const stored = repo.storedItemCount(this.ctx, row.id);
      if (row.attempts >= this.opts.maxAttempts) {
        const message = `its worker stopped ${row.attempts} times; start a new run / 运行它的进程已 ${row.attempts} 次中断，请重新发起`;
        if (repo.finishRun(this.ctx, row.id, { status: 'failed', error: { code: 'interrupted', message } }, row.worker_id!)) {
          this.event(row.id, { level: 'error', message: `Failed: ${message}`, data: { worker: row.worker_id, attempts: row.attempts } });
          touched.push(row.id);
        }
      } else if (repo.requeueRun(this.ctx, row.id, row.worker_id!)) {
        this.event(row.id, {
          level: 'warn',
          message: `Its worker ${row.worker_id} stopped; queued again to continue after item ${stored} / 运行它的进程已停止，重新排队`,
          data: { worker: row.worker_id, current: stored },
        });
        touched.push(row.id);
      }
    }
    return touched;
  }

  /**
   * Claims the oldest queued run (or run `id` if it is queued), atomically across processes, and executes it;
   * its id, or null when none waits. The claim happens before the first await.
   */
  async runNext(id?: string): Promise<string | null> {
    if (this.current || this.stopping) return null;
    const row = repo.claimRun(this.ctx, this.id, id);
    if (!row) return null;
    await this.execute(row);
    return row.id;
  }

  private async execute(row: repo.RunRow): Promise<void> {
    const controller = new AbortController();
    this.current = { runId: row.id, controller };
    let lastBeat = Date.now();
    // Every pollMs: is the run still ours and in progress (cancel and delete may come from any process)?
    // Every heartbeatMs the check also renews the heartbeat.
    const watch = setInterval(() => {
      try {
        const held = repo.getRunRow(this.ctx, row.id);
        if (!held || held.status !== 'in_progress' || held.worker_id !== this.id) controller.abort('cancel');
        else if (Date.now() - lastBeat >= this.opts.heartbeatMs && repo.beatRun(this.ctx, row.id, this.id)) lastBeat = Date.now();
      } catch {
        /* a busy store: the next tick will do */
      }
    }, Math.min(this.opts.pollMs, this.opts.heartbeatMs));
    watch.unref();
    try {
      await executeRun(this.ctx, row.id, {
        workerId: this.id,
        signal: controller.signal,
        judge: {
          // This queue's own endpoint first (a server's is current; the creator's may have moved since).
          base_url: this.opts.judgeBaseUrl ?? row.judge_base_url ?? null,
          api_key: judgeKeys.get(row.id) ?? this.opts.judgeApiKey ?? process.env.WEITIAO_JUDGE_API_KEY ?? null,
        },
        chunkSize: this.opts.chunkSize,
        onEvent: (e) => this.emit('event', row.id, e),
      });
    } catch (err) {
      // executeRun ends the run itself; this is the store failing underneath it.
      this.emit('queue_error', WeitiaoError.from(err));
    } finally {
      clearInterval(watch);
      this.current = null;
      // Stopped with this process: the next queue continues after the stored rows.
      if (controller.signal.reason === 'shutdown' && repo.requeueRun(this.ctx, row.id, this.id)) {
        this.event(row.id, { message: 'Stopped with its process; queued again / 进程停止，已重新排队', data: { current: repo.storedItemCount(this.ctx, row.id) } });
      }
      const run = repo.getRun(this.ctx, row.id);
      if (run && run.status !== 'in_progress') judgeKeys.delete(row.id);
      if (run) this.emit('status', run);
    }
  }

  private event(runId: string, e: Parameters<typeof repo.insertRunEvent>[2]): void {
    this.emit('event', runId, repo.insertRunEvent(this.ctx, runId, e));
  }
}
