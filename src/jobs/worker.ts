/**
 * The worker: takes jobs from the store one at a time and runs them to an end.
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
 * checks every `pollMs` and signals the engine's process group.
 */
import { EventEmitter } from 'node:events';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../context.js';
import type { Issue } from '../data/index.js';
import { runEngine, type EngineEvent, type TrainResult } from '../engine/index.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { createFile, fileContentPath } from '../files/index.js';
import { registerModel, resolveModel } from '../models/index.js';
import { newId, now } from '../store/index.js';
import { buildTrainRequest, describeTrainingControls, pickTrainingControls, resolveTrainingControls, type Method } from '../train/index.js';
import { jobMethod, jobToWire, reinforcementWire, resolveReinforcement, REINFORCEMENT_GROUP, type FineTuningJob, type FineTuningJobEvent } from './index.js';
import { isGroupAlive, signalGroup, STALE_WORKER_SECONDS, stopGroup, workerGone } from './internal/process.js';
import {
  addEvent,
  checkpointModelName,
  fineTunedModelName,
  getJobRow,
  parseExtension,
  patchExtension,
  upsertCheckpoint,
  type CheckpointMetrics,
  type EventLevel,
  type JobError,
  type JobExtension,
  type JobRow,
} from './internal/records.js';
import { crashLoopMessage, defaultMaxCrashes, discardUnrecordedCheckpoints, newestCheckpoint, replaceMetricsEvent } from './internal/recovery.js';
import { describeIssue, fileError, jobFile, resolveJob, validateJobFile, type CheckedFile, type JobResolution } from './internal/plan.js';
import { transition, type JobStatus } from './internal/status.js';

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
}

export interface WorkerEvents {
  event: [jobId: string, event: FineTuningJobEvent];
  engine: [jobId: string, event: EngineEvent];
  status: [job: FineTuningJob];
  /** Something went wrong outside any one job (e.g. the store was busy); the loop carries on. */
  worker_error: [error: WeitiaoError];
}

type StopReason = 'cancel' | 'pause' | 'shutdown';

/** What a run's models are: registered with every checkpoint and the result, read back by resolveModel. */
interface Weights {
  method: Method;
  /** `full`: each saved directory is a complete model; `lora`: an adapter. */
  format: 'full' | 'lora';
  /** Continued fine-tuning of an adapter: the merged base the new adapter (or weights) were trained from. */
  base_path?: string;
}

interface RunState {
  ext: JobExtension;
  ftName: string;
  outputDir: string;
  weights: Weights;
  /** The step of the checkpoint the run resumes from (null: from the start). */
  resumeFrom: number | null;
  /** The highest step whose metrics the job's history already holds: a resumed run trains such steps again. */
  reportedUpTo: number;
  /** Whether the first metrics of this run arrived (that step tells which checkpoint the engine took). */
  sawMetrics: boolean;
  /** The engine said it skipped a damaged checkpoint. */
  sawSkip: boolean;
}

interface Run {
  jobId: string;
  pid: number | null;
  reason: StopReason | null;
  sawEngineError: boolean;
  killTimer: NodeJS.Timeout | null;
}

const MAX_ISSUE_EVENTS = 200;

export class Worker extends EventEmitter<WorkerEvents> {
  readonly id: string;
  private readonly opts: Required<Omit<WorkerOptions, 'id' | 'onEvent' | 'onEngineEvent' | 'threads'>> & WorkerOptions;
  private loop: Promise<void> | null = null;
  private stopping = false;
  private wake: (() => void) | null = null;
  private busy = false;
  private run: Run | null = null;
  private lastRecovery = 0;

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
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, this.opts.pollMs);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        this.wake = null;
      }
    })();
  }

  /** Stops polling; a running job's engine saves a checkpoint and the job is queued again for the next start. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake?.();
    if (this.run) this.stopEngine(this.run, 'shutdown');
    await this.loop;
    this.loop = null;
  }

  /**
   * SIGKILL to the running engine's process group, at once (a second Ctrl-C). The engine runs in its own
   * group, so exiting this process would otherwise leave it training; the job is re-queued by the next
   * worker's recovery and resumes from its last checkpoint.
   */
  kill(): void {
    if (this.run?.pid) signalGroup(this.run.pid, 'SIGKILL');
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
    const rows = this.ctx.db
      .prepare(
        `SELECT * FROM jobs WHERE worker_id IS NOT NULL AND worker_id != ?
         AND status IN ('validating_files', 'queued', 'running', 'pausing')`,
      )
      .all(this.id) as JobRow[];
    const touched: string[] = [];
    for (const row of rows) {
      if (!workerGone(row.worker_id, row.heartbeat_at, this.opts.staleSeconds)) continue;
      // Its engine runs in its own process group and may have outlived the worker: two engines must
      // never write one job directory.
      if (isGroupAlive(row.worker_pid)) await stopGroup(row.worker_pid!, 10_000);
      const release = { worker_id: null, worker_pid: null, estimated_finish: null };
      try {
        if (row.status === 'validating_files' || row.status === 'queued') {
          this.ctx.db.prepare('UPDATE jobs SET worker_id = NULL, worker_pid = NULL WHERE id = ? AND worker_id = ?').run(row.id, row.worker_id);
        } else if (row.requested_action === 'cancel') {
          this.settle(row.id, 'cancelled', { ...release, requested_action: null, finished_at: now() }, 'The job was cancelled / 任务已取消');
        } else if (row.status === 'pausing') {
          this.settle(row.id, 'paused', { ...release, requested_action: null }, 'The job was paused / 任务已暂停');
        } else {
          this.lost(row, `its worker ${row.worker_id} stopped / 运行它的 worker 已停止`);
        }
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
    const db = this.ctx.db;
    return db
      .transaction((): JobRow | null => {
        const waiting = `worker_id IS NULL AND status IN ('validating_files', 'queued')`;
        const row = (
          id === undefined
            ? db.prepare(`SELECT * FROM jobs WHERE ${waiting} ORDER BY rowid LIMIT 1`).get()
            : db.prepare(`SELECT * FROM jobs WHERE id = ? AND ${waiting}`).get(id)
        ) as JobRow | undefined;
        if (!row) return null;
        db.prepare('UPDATE jobs SET worker_id = ?, heartbeat_at = ? WHERE id = ?').run(this.id, now(), row.id);
        return { ...row, worker_id: this.id };
      })
      .immediate();
  }

  private async execute(claimed: JobRow): Promise<void> {
    this.busy = true;
    const beat = setInterval(() => {
      try {
        this.ctx.db.prepare('UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker_id = ?').run(now(), claimed.id, this.id);
      } catch {
        /* busy store: the next beat will do */
      }
    }, this.opts.heartbeatMs);
    beat.unref();
    try {
      if (claimed.status === 'validating_files' && !(await this.validate(claimed.id))) return;
      if (this.stopping) {
        this.release(claimed.id);
        return;
      }
      await this.train(claimed.id);
    } catch (err) {
      const e = WeitiaoError.from(err);
      this.fail(claimed.id, { code: e.code, message: e.message, param: e.param ?? null });
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
    this.ctx.db.prepare('UPDATE jobs SET worker_id = NULL, worker_pid = NULL WHERE id = ? AND worker_id = ?').run(id, this.id);
  }

  // ----------------------------------------------------------------------------------------- validating

  /** Validates the job's files and resolves its settings; true when the job is now queued. */
  private async validate(id: string): Promise<boolean> {
    const row = getJobRow(this.ctx.db, id)!;
    const ext = parseExtension(row);
    let modelDir: string;
    try {
      modelDir = resolveModel(this.ctx, row.model).basePath;
    } catch (err) {
      const e = WeitiaoError.from(err);
      this.fail(id, { code: 'model_not_found', message: e.message, param: 'model' });
      return false;
    }

    const method = jobMethod(row);
    const reports: CheckedFile[] = [];
    for (const param of ['training_file', 'validation_file'] as const) {
      const fileId = row[param];
      if (!fileId) continue;
      const file = jobFile(this.ctx, param, fileId);
      if ('code' in file) {
        this.fail(id, file);
        return false;
      }
      this.event(id, { message: `Validating ${param.replace('_', ' ')}: ${file.file.filename} / 正在校验文件 ${file.file.filename}` });
      const checked = await this.validateFile(id, file, param, { method, modelDir, settings: ext.settings });
      if (!checked || !this.stillIs(id, 'validating_files')) return false;
      this.issueEvents(id, file.file.filename, checked.report.warnings, 'warn');
      const error = fileError(checked);
      if (error) {
        this.issueEvents(id, file.file.filename, checked.report.errors, 'error');
        this.fail(id, error);
        return false;
      }
      reports.push(checked);
    }

    const train = reports[0].report;
    const valid = reports.find((r) => r.param === 'validation_file')?.report ?? null;
    let resolution: JobResolution;
    try {
      resolution = resolveJob({ method, settings: ext.settings, requested: ext.requested, train });
    } catch (err) {
      const e = WeitiaoError.from(err);
      this.fail(id, { code: e.code, message: e.message, param: e.param ?? null });
      return false;
    }
    const { resolved, labelSet } = resolution;
    const hyperparameters = {
      n_epochs: resolved.n_epochs,
      batch_size: resolved.batch_size,
      learning_rate_multiplier: resolved.learning_rate_multiplier,
    };
    const rl = ext.settings.reinforcement;
    const wireMethod =
      method === 'reinforcement' && rl
        ? reinforcementWire(ext.settings, {
            ...hyperparameters,
            ...resolveReinforcement(rl, resolved.estimated_total_steps, valid?.valid_examples ?? null),
            reasoning_effort: rl.reasoning_effort,
          })
        : method === 'dpo'
          ? { type: 'dpo', dpo: { hyperparameters: { ...hyperparameters, beta: ext.settings.dpo?.beta ?? 0.1 } } }
          : { type: 'supervised', supervised: { hyperparameters } };
    patchExtension(
      this.ctx.db,
      id,
      { resolved, label_set: labelSet, n_examples: train.valid_examples, n_validation_examples: valid ? valid.valid_examples : null },
      { method: JSON.stringify(wireMethod) },
    );
    const autoNote = (k: string) => (resolved.auto.includes(k as never) ? ' (auto)' : '');
    this.event(id, {
      message:
        `Files validated: ${train.valid_examples} training` +
        (valid ? ` and ${valid.valid_examples} validation` : '') +
        ` examples; n_epochs=${resolved.n_epochs}${autoNote('n_epochs')}, batch_size=${resolved.batch_size}${autoNote('batch_size')}, ` +
        `learning_rate=${resolved.learning_rate}${autoNote('learning_rate_multiplier')}` +
        (labelSet ? `; labels: ${labelSet.join(', ')}` : '') +
        ` / 文件校验通过：训练样本 ${train.valid_examples} 条` +
        (valid ? `，验证样本 ${valid.valid_examples} 条` : ''),
      data: { n_examples: train.valid_examples, n_validation_examples: valid?.valid_examples ?? null, hyperparameters: resolved, label_set: labelSet },
    });
    try {
      transition(this.ctx.db, id, 'queued', {}, { from: ['validating_files'] });
    } catch (err) {
      if (err instanceof WeitiaoError && err.code === 'conflict') return false; // cancelled meanwhile
      throw err;
    }
    this.event(id, { message: 'The job is queued / 任务已进入队列' });
    return true;
  }

  /**
   * validateJobFile, stopped (thread and token count) as soon as the job is cancelled or the worker
   * stops; null then. Cancel and stop requests arrive through the store, so it looks every `pollMs`.
   */
  private async validateFile(
    id: string,
    file: Parameters<typeof validateJobFile>[0],
    param: Parameters<typeof validateJobFile>[1],
    options: Omit<Parameters<typeof validateJobFile>[2], 'signal'>,
  ): Promise<CheckedFile | null> {
    const stop = new AbortController();
    const watch = setInterval(() => {
      if (this.stopping || !this.stillIs(id, 'validating_files')) stop.abort();
    }, this.opts.pollMs);
    try {
      return await validateJobFile(file, param, { ...options, signal: stop.signal });
    } catch (err) {
      if (stop.signal.aborted) return null;
      throw err;
    } finally {
      clearInterval(watch);
    }
  }

  private issueEvents(id: string, filename: string, issues: Issue[], level: EventLevel): void {
    for (const issue of issues.slice(0, MAX_ISSUE_EVENTS)) {
      this.event(id, { level, message: describeIssue(filename, issue), data: { ...issue, file: filename } });
    }
    if (issues.length > MAX_ISSUE_EVENTS) {
      this.event(id, { level, message: `… and ${issues.length - MAX_ISSUE_EVENTS} more / 另有 ${issues.length - MAX_ISSUE_EVENTS} 条` });
    }
  }

  // -------------------------------------------------------------------------------------------- running

  private async train(id: string): Promise<void> {
    const started = getJobRow(this.ctx.db, id)!;
    try {
      transition(
        this.ctx.db,
        id,
        'running',
        { started_at: started.started_at ?? now(), worker_id: this.id, heartbeat_at: now(), error: null },
        { from: ['queued'] },
      );
    } catch (err) {
      if (err instanceof WeitiaoError && err.code === 'conflict') return; // cancelled or paused meanwhile
      throw err;
    }
    const row = getJobRow(this.ctx.db, id)!;
    const ext = parseExtension(row);
    if (!ext.resolved) throw new WeitiaoError('internal_error', `job ${id} reached the queue without resolved hyperparameters`);

    const model = resolveModel(this.ctx, row.model);
    const method = jobMethod(row);
    const outputDir = path.join(this.ctx.home.jobs, id);
    // Continued fine-tuning of an adapter: the engine merges it into <outputDir>/base, which the new weights build on.
    const fullWeights = method === 'full' || (method === 'reinforcement' && ext.settings.method === 'full');
    const weights: Weights = {
      method,
      format: fullWeights ? 'full' : 'lora',
      ...(model.adapterPath && !fullWeights ? { base_path: path.join(outputDir, 'base') } : {}),
    };
    await mkdir(outputDir, { recursive: true });
    const discarded = await discardUnrecordedCheckpoints(this.ctx, id, outputDir);
    if (discarded.length) {
      this.event(id, {
        level: 'warn',
        message: `Discarded ${discarded.join(', ')}: saved after the control plane stopped, so the steps it holds were never reported; they are trained again / 丢弃未登记的检查点 ${discarded.join(', ')}，相应步骤将重新训练`,
      });
    }
    const newest = newestCheckpoint(outputDir);
    const request = buildTrainRequest({
      basePath: model.basePath,
      outputDir,
      trainingFile: fileContentPath(this.ctx, row.training_file),
      validationFile: row.validation_file ? fileContentPath(this.ctx, row.validation_file) : null,
      hyperparameters: ext.resolved,
      seed: row.seed,
      lora: ext.settings.lora,
      method,
      ...(method === 'full' ? { full: ext.settings.full ?? {} } : {}),
      ...(method === 'dpo' ? { dpo: { beta: ext.settings.dpo?.beta ?? 0.1 } } : {}),
      ...(method === 'reinforcement' ? { reinforcement: reinforcementRequest(row, fullWeights) } : {}),
      baseAdapter: model.adapterPath,
      labelSet: ext.label_set,
      evalEverySteps: method === 'reinforcement' ? reinforcementRequest(row, fullWeights).eval_every_steps : ext.settings.eval_every_steps,
      saveEverySteps: ext.settings.save_every_steps,
      maxSteps: ext.settings.max_steps ?? null,
      ...(ext.settings.max_seq_length ? { maxSeqLength: ext.settings.max_seq_length } : {}),
      // Stored with the job, so a resumed or recovered run gets the same controls as its first start.
      controls: pickTrainingControls(ext.settings),
      resume: newest !== null,
      threads: this.opts.threads ?? null,
    });
    const controls = resolveTrainingControls(pickTrainingControls(ext.settings));
    this.event(id, {
      message:
        (newest ? `Resuming fine-tuning from checkpoint ${newest} / 从检查点 ${newest} 继续微调` : `Fine-tuning started / 开始微调`) +
        `; ${describeTrainingControls(controls)}`,
      data: { controls, ...(newest ? { resumed_from: newest } : {}) },
    });

    const run: Run = { jobId: id, pid: null, reason: null, sawEngineError: false, killTimer: null };
    this.run = run;
    const ftName = fineTunedModelName(row);
    const reported = this.ctx.db
      .prepare(`SELECT MAX(json_extract(data, '$.step')) AS step FROM job_events WHERE job_id = ? AND type = 'metrics'`)
      .get(id) as { step: number | null };
    const state: RunState = {
      ext,
      ftName,
      outputDir,
      weights,
      resumeFrom: newest ? Number(newest.slice(5)) : null,
      reportedUpTo: reported.step ?? 0,
      sawMetrics: false,
      sawSkip: false,
    };
    const watch = setInterval(() => this.watch(run), this.opts.pollMs);
    watch.unref();

    let result: TrainResult | null = null;
    let failure: WeitiaoError | null = null;
    try {
      result = await runEngine('train', request, {
        env: { WEITIAO_CACHE_DIR: this.ctx.home.cache }, // the precision probe's per-machine figures (engine precision_probe.py)
        onSpawn: (child) => {
          run.pid = child.pid ?? null;
          this.ctx.db.prepare('UPDATE jobs SET worker_pid = ? WHERE id = ?').run(run.pid, id);
          if (run.reason) this.stopEngine(run, run.reason, true);
        },
        onEvent: (e) => this.onEngineEvent(run, state, e),
      });
    } catch (err) {
      failure = WeitiaoError.from(err);
    } finally {
      clearInterval(watch);
      if (run.killTimer) clearTimeout(run.killTimer);
      // Children the engine started must not outlive it (a pgid is not reused while a member lives, so this is safe).
      if (run.pid !== null && isGroupAlive(run.pid)) signalGroup(run.pid, 'SIGKILL');
      run.pid = null; // from here no signal may reach a process that later reuses the id
      this.ctx.db.prepare('UPDATE jobs SET worker_pid = NULL WHERE id = ?').run(id);
    }
    this.watch(run); // a request that arrived in the last moments still decides the outcome
    await this.finish(run, state, result, failure);
  }

  /** Checks the store for a cancel or pause request and acts on it. */
  private watch(run: Run): void {
    const row = this.ctx.db.prepare('SELECT status, requested_action FROM jobs WHERE id = ?').get(run.jobId) as
      | { status: JobStatus; requested_action: string | null }
      | undefined;
    if (!row || row.requested_action === 'cancel' || row.status === 'cancelled') this.stopEngine(run, 'cancel');
    else if (row.status === 'pausing' || row.requested_action === 'pause') this.stopEngine(run, 'pause');
  }

  /** SIGTERM to the engine's group (it saves a checkpoint), SIGKILL after the grace; cancel shortens the grace. */
  private stopEngine(run: Run, reason: StopReason, force = false): void {
    const escalate = reason === 'cancel' && run.reason !== 'cancel';
    if (run.reason && !escalate && !force) return;
    run.reason = escalate || !run.reason ? reason : run.reason;
    if (run.pid === null) return; // not spawned yet: onSpawn stops it
    const grace = run.reason === 'cancel' ? this.opts.cancelGraceMs : this.opts.pauseGraceMs;
    signalGroup(run.pid, 'SIGTERM');
    if (run.killTimer) clearTimeout(run.killTimer);
    const pid = run.pid;
    run.killTimer = setTimeout(() => signalGroup(pid, 'SIGKILL'), grace);
    run.killTimer.unref();
  }

  private onEngineEvent(run: Run, state: RunState, e: EngineEvent): void {
    const id = run.jobId;
    this.opts.onEngineEvent?.(id, e);
    this.emit('engine', id, e);
    const db = this.ctx.db;
    switch (e.type) {
      case 'hello':
        this.event(id, { message: `Engine started: torch ${e.torch_version} on ${e.device}, ${e.threads} threads${e.allocator ? `, ${e.allocator}` : ''} / 训练引擎已启动` });
        break;
      case 'log': {
        if (e.level === 'debug') break;
        // The engine skipped a checkpoint that does not verify (truncated, corrupted) and took an older one.
        const skipped = e.level === 'warning' && /skip/i.test(e.message) ? /step-\d+/.exec(e.message)?.[0] : undefined;
        if (skipped) state.sawSkip = true;
        this.event(id, {
          level: e.level === 'warning' ? 'warn' : e.level,
          message: e.message,
          ...(skipped ? { data: { skipped_checkpoint: skipped } } : {}),
        });
        break;
      }
      case 'metrics': {
        const { type: _type, ...data } = e;
        const progress = { step: e.step, total_steps: e.total_steps, epoch: e.epoch };
        const last: Record<string, number> = { ...(state.ext.last_metrics ?? {}) };
        for (const [k, v] of Object.entries(data)) if (typeof v === 'number') last[k] = v;
        state.ext.last_metrics = last;
        state.ext.progress = progress;
        if (!state.sawMetrics) {
          state.sawMetrics = true;
          this.noteOlderCheckpoint(id, state, e.step);
        }
        db.transaction(() => {
          // A resumed run trains again the steps after its checkpoint: their figures replace the earlier ones, so
          // the history holds every step once.
          if (e.step > state.reportedUpTo || !this.replaceMetrics(id, e.step, metricsMessage(e), data)) {
            this.event(id, { type: 'metrics', message: metricsMessage(e), data });
          }
          patchExtension(db, id, { progress, last_metrics: last }, {
            heartbeat_at: now(),
            ...(e.trained_tokens !== undefined ? { trained_tokens: e.trained_tokens } : {}),
            ...(e.eta_seconds !== undefined ? { estimated_finish: now() + Math.round(e.eta_seconds) } : {}),
          });
        })();
        break;
      }
      case 'eval': {
        const m = e.label_metrics;
        state.ext.last_eval = { step: e.step, valid_loss: e.valid_loss, accuracy: m?.accuracy };
        if (m) state.ext.label_metrics = m;
        const parts = [
          e.valid_loss !== undefined ? `validation loss=${fmt(e.valid_loss)}` : null,
          m ? `accuracy=${fmt(m.accuracy)}, macro F1=${fmt(m.macro_f1)}` : null,
          e['rewards/accuracy'] !== undefined ? `reward accuracy=${fmt(e['rewards/accuracy'])}, reward margin=${fmt(e['rewards/margin'])}` : null,
        ].filter(Boolean);
        db.transaction(() => {
          this.event(id, {
            message: `Evaluation at step ${e.step} (epoch ${fmt(e.epoch, 2)}): ${parts.join(', ')} / 第 ${e.step} 步验证：${parts.join('，')}`,
            data: {
              step: e.step,
              epoch: e.epoch,
              valid_loss: e.valid_loss ?? null,
              label_metrics: m ?? null,
              ...(e['rewards/accuracy'] !== undefined ? { 'rewards/accuracy': e['rewards/accuracy'], 'rewards/margin': e['rewards/margin'] } : {}),
            },
          });
          patchExtension(db, id, { last_eval: state.ext.last_eval, ...(m ? { label_metrics: m } : {}) });
        })();
        break;
      }
      case 'checkpoint': {
        const last = state.ext.last_metrics ?? {};
        const lastEval = state.ext.last_eval?.step === e.step ? state.ext.last_eval : null;
        const metrics: CheckpointMetrics = dropUndefined({
          step: e.step,
          train_loss: e.train_loss ?? last.train_loss,
          train_mean_token_accuracy: last.train_mean_token_accuracy,
          valid_loss: e.valid_loss ?? last.valid_loss,
          valid_mean_token_accuracy: last.valid_mean_token_accuracy,
          full_valid_loss: lastEval?.valid_loss,
        });
        const ckptPath = path.resolve(state.outputDir, e.path);
        const name = checkpointModelName(state.ftName, e.step);
        const row = getJobRow(db, id)!;
        db.transaction(() => {
          upsertCheckpoint(db, { job_id: id, step: e.step, epoch: e.epoch, metrics, path: ckptPath, fine_tuned_model_checkpoint: name });
          // Progress was saved: crashes before this one no longer count towards the crash loop.
          if (state.ext.crash_streak) {
            state.ext.crash_streak = 0;
            patchExtension(db, id, { crash_streak: 0 });
          }
          registerModel(this.ctx, {
            id: name,
            kind: 'checkpoint',
            path: ckptPath,
            base_model: row.model,
            job_id: id,
            source: 'training',
            metadata: { step: e.step, epoch: e.epoch, metrics, training_file: row.training_file, ...state.weights },
          });
          this.event(id, { message: `Checkpoint saved at step ${e.step}: ${name} / 已在第 ${e.step} 步保存检查点`, data: { step: e.step, epoch: e.epoch, fine_tuned_model_checkpoint: name } });
        })();
        break;
      }
      case 'error':
        run.sawEngineError = true;
        break;
      default:
        break; // progress and tokens: only for the in-process hooks above
    }
  }

  /** Turns the engine's outcome into the job's next status. */
  private async finish(
    run: Run,
    state: RunState,
    result: TrainResult | null,
    failure: WeitiaoError | null,
  ): Promise<void> {
    const id = run.jobId;
    const release = { worker_id: null, worker_pid: null, estimated_finish: null };
    const step = state.ext.progress?.step;
    const at = step !== undefined ? ` at step ${step}` : '';

    if (result && !result.interrupted && result.model_dir) {
      await this.succeed(id, state, result);
      return;
    }
    if (run.reason === 'cancel') {
      this.settle(id, 'cancelled', { ...release, requested_action: null, finished_at: now() }, `The job was cancelled${at} / 任务已取消`);
      return;
    }
    if (run.reason === 'pause') {
      this.settle(id, 'paused', { ...release, requested_action: null }, `The job was paused${at}; resume continues from its last checkpoint / 任务已暂停`);
      return;
    }
    if (run.reason === 'shutdown') {
      const row = getJobRow(this.ctx.db, id)!;
      if (row.status === 'pausing') this.settle(id, 'paused', { ...release, requested_action: null }, `The job was paused${at} / 任务已暂停`);
      else this.settle(id, 'queued', release, `The worker stopped${at}; the job is queued and will resume from its last checkpoint / worker 已停止，任务将从最后的检查点继续`);
      return;
    }
    if (failure && run.sawEngineError) {
      this.fail(id, { code: failure.code, message: failure.message, param: failure.param ?? null });
      return;
    }
    // The engine died without saying why (killed, out of memory) or was stopped from outside: try again from the checkpoint.
    const why = failure ? failure.message.split('\n')[0] : 'the engine was interrupted';
    this.lost(getJobRow(this.ctx.db, id)!, why, failure?.message.split('\n').slice(1).join('\n'));
  }

  private async succeed(id: string, state: RunState, result: TrainResult): Promise<void> {
    const row = getJobRow(this.ctx.db, id)!;
    const ext = parseExtension(row);
    const modelDir = path.resolve(state.outputDir, result.model_dir!);
    if (result.precision_choice) patchExtension(this.ctx.db, id, { precision_choice: result.precision_choice }); // shown in weitiao.controls
    const metricsFile = await this.writeMetricsCsv(id, state.outputDir);
    const resultFile = await createFile(this.ctx, { source: metricsFile, filename: 'step_metrics.csv', purpose: 'fine-tune-results' });
    registerModel(this.ctx, {
      id: state.ftName,
      kind: 'fine-tuned',
      path: modelDir,
      base_model: row.model,
      job_id: id,
      source: 'training',
      metadata: {
        training_file: row.training_file,
        validation_file: row.validation_file,
        ...state.weights,
        ...(state.weights.method === 'dpo' ? { dpo: ext.settings.dpo } : {}),
        ...(state.weights.method === 'full' ? { full: ext.settings.full ?? {} } : {}),
        hyperparameters: ext.resolved,
        lora: ext.settings.lora ?? {},
        label_set: ext.label_set,
        seed: row.seed,
        controls: resolveTrainingControls(pickTrainingControls(ext.settings)),
        steps: result.steps,
        early_stopped: result.early_stopped ?? false,
        trained_tokens: result.trained_tokens,
        final_train_loss: result.final_train_loss,
        final_valid_loss: result.final_valid_loss,
        label_metrics: ext.label_metrics,
      },
    });
    this.ctx.db.transaction(() => {
      if (result.early_stopped) {
        this.event(id, {
          message: `Stopped early at step ${result.steps} of ${result.total_steps}: the validation loss stopped improving / 验证损失不再下降，已提前停止`,
          data: { early_stopped: true, steps: result.steps, total_steps: result.total_steps },
        });
      }
      this.event(id, {
        message: `New fine-tuned model created: ${state.ftName} / 已创建微调模型`,
        data: {
          fine_tuned_model: state.ftName,
          steps: result.steps,
          ...(result.early_stopped !== undefined ? { early_stopped: result.early_stopped } : {}),
          ...(result.precision ? { precision: result.precision } : {}),
          ...(result.truncated_examples ? { truncated_examples: result.truncated_examples } : {}),
        },
      });
      transition(
        this.ctx.db,
        id,
        'succeeded',
        {
          fine_tuned_model: state.ftName,
          finished_at: now(),
          trained_tokens: result.trained_tokens,
          result_files: JSON.stringify([resultFile.id]),
          estimated_finish: null,
          requested_action: null,
          worker_pid: null,
        },
        { from: ['running', 'pausing'] },
      );
      this.event(id, { message: 'The job has successfully completed / 任务已成功完成' });
    })();
  }

  /** OpenAI's result file: one row per step with `step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`. */
  private async writeMetricsCsv(id: string, outputDir: string): Promise<string> {
    const rows = this.ctx.db
      .prepare(`SELECT data FROM job_events WHERE job_id = ? AND type = 'metrics' ORDER BY seq`)
      .all(id) as { data: string }[];
    const byStep = new Map<number, Record<string, number>>();
    for (const r of rows) {
      const d = JSON.parse(r.data) as Record<string, number>;
      byStep.set(d.step, { ...byStep.get(d.step), ...d }); // a resumed run repeats steps: the newest figures win
    }
    const cell = (v: number | undefined) => (v === undefined || v === null ? '' : String(v));
    const lines = ['step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy'];
    for (const [step, d] of [...byStep].sort((a, b) => a[0] - b[0])) {
      lines.push([step, cell(d.train_loss), cell(d.train_mean_token_accuracy), cell(d.valid_loss), cell(d.valid_mean_token_accuracy)].join(','));
    }
    const file = path.join(outputDir, 'metrics.csv');
    await writeFile(`${file}.tmp`, lines.join('\n') + '\n');
    await rename(`${file}.tmp`, file);
    return file;
  }

  // ----------------------------------------------------------------------------------------- outcomes

  /**
   * A lost run (engine crash, worker gone): queued again to resume from its checkpoint, or, the
   * `maxCrashes`-th time in a row without a checkpoint saved in between, failed with the cause stated once:
   * `why` and the engine's last output (`detail`, its stderr tail), server paths hidden.
   */
  private lost(row: JobRow, why: string, detail?: string): void {
    const attempts = row.attempts + 1;
    const ext = parseExtension(row);
    const streak = (ext.crash_streak ?? 0) + 1;
    const release = { worker_id: null, worker_pid: null, estimated_finish: null, attempts, extension: JSON.stringify({ ...ext, crash_streak: streak }) };
    const cause = hideServerPaths(why, this.ctx.home.root);
    if (streak < this.opts.maxCrashes) {
      this.settle(
        row.id,
        'queued',
        release,
        `Training stopped unexpectedly (${cause}); it will resume from its last checkpoint (crash ${streak} of at most ${this.opts.maxCrashes} in a row) / 训练意外中断，将从最后的检查点继续`,
        'warn',
      );
      return;
    }
    const saved = this.ctx.db.prepare('SELECT COUNT(*) AS n FROM checkpoints WHERE job_id = ?').get(row.id) as { n: number };
    const message = crashLoopMessage({ jobId: row.id, streak, cause, output: hideServerPaths(detail ?? '', this.ctx.home.root), resumable: saved.n > 0 });
    this.fail(row.id, { code: 'training_interrupted', message, param: null }, { attempts, extension: release.extension });
  }

  /** The step the first metrics of a resumed run carry tells whether the engine took an older checkpoint than the newest. */
  private noteOlderCheckpoint(id: string, state: RunState, firstStep: number): void {
    if (state.resumeFrom === null || firstStep > state.resumeFrom) return;
    const from = firstStep - 1;
    this.event(id, {
      level: 'warn',
      message:
        (state.sawSkip ? '' : `The newest checkpoint (step ${state.resumeFrom}) could not be used; `) +
        `training resumed from the checkpoint at step ${from}: steps ${from + 1}–${state.resumeFrom} are trained again and their figures replace the earlier ones / 最新检查点无法使用，已从第 ${from} 步的检查点继续`,
      data: { skipped_checkpoint_step: state.resumeFrom, resumed_from_step: from },
    });
  }

  /** Replaces the metrics event already recorded for `step` (internal/recovery.ts); false when there is none. */
  private replaceMetrics(id: string, step: number, message: string, data: Record<string, unknown>): boolean {
    const wire = replaceMetricsEvent(this.ctx.db, id, step, message, data);
    if (!wire) return false;
    this.opts.onEvent?.(id, wire);
    this.emit('event', id, wire);
    return true;
  }

  private fail(id: string, error: JobError, extra: Record<string, unknown> = {}): void {
    try {
      this.settle(
        id,
        'failed',
        { error: JSON.stringify(error), finished_at: now(), worker_id: null, worker_pid: null, estimated_finish: null, requested_action: null, ...extra },
        `Fine-tuning failed: ${error.message} / 微调失败`,
        'error',
      );
    } catch (err) {
      if (!(err instanceof WeitiaoError && err.code === 'conflict')) throw err; // already cancelled: nothing to fail
    }
  }

  private settle(id: string, to: JobStatus, fields: Record<string, unknown>, message: string, level: EventLevel = 'info'): void {
    this.ctx.db.transaction(() => {
      this.event(id, { level, message });
      transition(this.ctx.db, id, to, fields);
    })();
  }

  private stillIs(id: string, status: JobStatus): boolean {
    return getJobRow(this.ctx.db, id)?.status === status;
  }

  private event(id: string, e: { level?: EventLevel; type?: 'message' | 'metrics'; message: string; data?: unknown }): void {
    const wire = addEvent(this.ctx.db, id, e);
    this.opts.onEvent?.(id, wire);
    this.emit('event', id, wire);
  }
}

function metricsMessage(e: Extract<EngineEvent, { type: 'metrics' }>): string {
  const parts: string[] = [];
  if (e.train_loss !== undefined) parts.push(`training loss=${fmt(e.train_loss)}`);
  if (e.valid_loss !== undefined) parts.push(`validation loss=${fmt(e.valid_loss)}`);
  if (e.train_mean_token_accuracy !== undefined) parts.push(`token accuracy=${fmt(e.train_mean_token_accuracy)}`);
  if (e['rewards/accuracy'] !== undefined) parts.push(`reward accuracy=${fmt(e['rewards/accuracy'])}, margin=${fmt(e['rewards/margin'])}`);
  if (e.train_mean_reward !== undefined) parts.push(`mean reward=${fmt(e.train_mean_reward)}, answer tokens=${fmt(e.train_mean_answer_tokens, 1)}, KL=${fmt(e.kl)}`);
  if (e.valid_mean_reward !== undefined) parts.push(`validation reward=${fmt(e.valid_mean_reward)}`);
  return `Step ${e.step}/${e.total_steps}: ${parts.join(', ')}`;
}

/** The engine's reinforcement settings of a job: its grader and the hyperparameters its method object resolved. */
function reinforcementRequest(row: JobRow, full: boolean) {
  const method = JSON.parse(row.method) as Extract<FineTuningJob['method'], { type: 'reinforcement' }>;
  const hp = method.reinforcement.hyperparameters;
  const multiplier = typeof hp.compute_multiplier === 'number' ? hp.compute_multiplier : 1;
  const base = process.env.WEITIAO_JUDGE_BASE_URL;
  return {
    policy: full ? ('full' as const) : ('lora' as const),
    grader: method.reinforcement.grader,
    response_format: method.reinforcement.response_format,
    samples_per_prompt: Math.max(2, Math.round(REINFORCEMENT_GROUP * multiplier)),
    ...(typeof hp.eval_samples === 'number' ? { eval_samples: hp.eval_samples } : {}),
    ...(base ? { judge: { base_url: base, api_key: process.env.WEITIAO_JUDGE_API_KEY ?? null } } : {}),
    // Per sample, for python graders (engine defaults: 10 s CPU, 20 s wall clock, 1024 MB).
    python_limits: {
      ...(process.env.WEITIAO_GRADER_CPU_SECONDS ? { cpu_seconds: Number(process.env.WEITIAO_GRADER_CPU_SECONDS) } : {}),
      ...(process.env.WEITIAO_GRADER_WALL_SECONDS ? { wall_seconds: Number(process.env.WEITIAO_GRADER_WALL_SECONDS) } : {}),
    },
    eval_every_steps: typeof hp.eval_interval === 'number' ? hp.eval_interval : 0,
  };
}

function fmt(v: number | undefined, digits = 4): string {
  return v === undefined ? '-' : Number(v.toFixed(digits)).toString();
}

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

