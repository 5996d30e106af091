/**
 * One job's training run: the engine spawned for it, cancel and pause requests (which arrive through the
 * store) turned into signals to the engine's process group, its events translated into the store
 * (engine-events.ts), and the outcome — succeeded (the model registered, a metrics CSV as result file),
 * cancelled, paused, queued again or failed (outcomes.ts).
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../context.js';
import { runEngine, type TrainRequest, type TrainResult } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { runForgettingCheck } from '../eval/job-checks.js';
import { createFile, materializeFile } from '../files/index.js';
import { materializeCheckpointDir, materializeModel, registerModel, resolveModel, storeModelDirs } from '../models/index.js';
import { now, type DB } from '../store/index.js';
import { buildTrainRequest, describeTrainingControls, pickTrainingControls, resolveTrainingControls } from '../hyperparameters/index.js';
import { recordEngineEvent, storeFailed, type EngineOutcome, type RunState, type Weights } from './engine-events.js';
import { isGroupAlive, signalGroup } from './internal/process.js';
import { fineTunedModelName, parseExtension, patchExtension } from './internal/records.js';
import { discardUnrecordedCheckpoints, newestCheckpoint } from './internal/recovery.js';
import { transition } from './internal/status.js';
import { lost, fail, settle, type JobJournal } from './outcomes.js';
import { reinforcementRequest } from './reinforcement.js';
import { checkpointLocations, getJobRow, getJobState, lastMetricsStep, metricsEventData, setEnginePid, type JobRow } from './repository.js';
import { DEFAULT_DPO_BETA } from './schemas.js';
import { jobMethod, jobToWire } from './wire.js';

export interface RunOptions {
  /** The worker whose run this is (the job's `worker_id`). */
  workerId: string;
  /** How often the store is checked for cancel and pause requests. */
  pollMs: number;
  /** Cancel: SIGTERM, then SIGKILL after this long. */
  cancelGraceMs: number;
  /** Pause and shutdown: time the engine gets to save its checkpoint before SIGKILL. */
  pauseGraceMs: number;
  /** Lost runs in a row (no checkpoint saved between) after which the job fails. */
  maxCrashes: number;
  /** Torch threads for the engine (null: the engine's default). */
  threads: number | null;
}

export type StopReason = 'cancel' | 'pause' | 'shutdown';

/** A running engine: its process group, why it is being stopped, whether it reported an error. */
export class JobRun implements EngineOutcome {
  pid: number | null = null;
  reason: StopReason | null = null;
  sawEngineError = false;
  private killTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly jobId: string,
    private readonly graces: Pick<RunOptions, 'cancelGraceMs' | 'pauseGraceMs'>,
  ) {}

  /** SIGTERM to the engine's group (it saves a checkpoint), SIGKILL after the grace; cancel shortens the grace. */
  stop(reason: StopReason, force = false): void {
    const escalate = reason === 'cancel' && this.reason !== 'cancel';
    if (this.reason && !escalate && !force) return;
    this.reason = escalate || !this.reason ? reason : this.reason;
    if (this.pid === null) return; // not spawned yet: onSpawn stops it
    const grace = this.reason === 'cancel' ? this.graces.cancelGraceMs : this.graces.pauseGraceMs;
    signalGroup(this.pid, 'SIGTERM');
    if (this.killTimer) clearTimeout(this.killTimer);
    const pid = this.pid;
    this.killTimer = setTimeout(() => signalGroup(pid, 'SIGKILL'), grace);
    this.killTimer.unref();
  }

  /** SIGKILL to the engine's group, at once. */
  kill(): void {
    if (this.pid) signalGroup(this.pid, 'SIGKILL');
  }

  /** Checks the store for a cancel or pause request and acts on it. */
  watch(db: DB): void {
    const stop = requestedStop(db, this.jobId);
    if (stop) this.stop(stop);
  }

  /** The engine exited. */
  ended(): void {
    if (this.killTimer) clearTimeout(this.killTimer);
    // Children the engine started must not outlive it (a pgid is not reused while a member lives, so this is safe).
    if (this.pid !== null && isGroupAlive(this.pid)) signalGroup(this.pid, 'SIGKILL');
    this.pid = null; // from here no signal may reach a process that later reuses the id
  }
}

/** queued → running for `workerId` (the transition the local worker and a remote lease share); false when the job was cancelled or paused meanwhile. */
export function startRun(db: DB, id: string, workerId: string): boolean {
  const started = getJobRow(db, id)!;
  try {
    transition(db, id, 'running', { started_at: started.started_at ?? now(), worker_id: workerId, heartbeat_at: now(), error: null }, { from: ['queued'] });
    return true;
  } catch (err) {
    if (err instanceof WeitiaoError && err.code === 'conflict') return false;
    throw err;
  }
}

/** A running job's engine request (this server's paths) and the state the translation of its events keeps. */
export interface PreparedRun {
  request: TrainRequest;
  state: RunState;
  /** The `checkpoints/step-N` directory the run resumes from, or null. */
  resumeFrom: string | null;
}

/**
 * Prepares a running job's engine run: the job's directory (unrecorded checkpoints discarded), the train request
 * resuming from its newest checkpoint, and the "started"/"resuming" event. Local runs and remote leases call it.
 */
export async function prepareRun(j: JobJournal, id: string, threads: number | null): Promise<PreparedRun> {
  const row = getJobRow(j.ctx.db, id)!;
  const ext = parseExtension(row);
  if (!ext.resolved) throw new WeitiaoError('internal_error', `job ${id} reached the queue without resolved hyperparameters`);

  // With object storage a fine-tuned model to continue from may have to be downloaded first.
  const model = await materializeModel(j.ctx, row.model);
  const method = jobMethod(row);
  const outputDir = path.join(j.ctx.home.jobs, id);
  await mkdir(outputDir, { recursive: true });
  const discarded = await discardUnrecordedCheckpoints(j.ctx, id, outputDir);
  if (discarded.length) {
    j.event(id, {
      level: 'warn',
      message: `Discarded ${discarded.join(', ')}: saved after the control plane stopped, so the steps it holds were never reported; they are trained again / 丢弃未登记的检查点 ${discarded.join(', ')}，相应步骤将重新训练`,
    });
  }
  // The newest recorded checkpoint, from object storage when this host lacks it (another host trained it).
  const recorded = checkpointLocations(j.ctx.db, id)[0];
  if (recorded && (await materializeCheckpointDir(j.ctx, recorded.path, recorded.model))) {
    j.event(id, { message: `Checkpoint ${path.basename(recorded.path)} downloaded from object storage / 已从对象存储下载检查点` });
  }
  const newest = newestCheckpoint(outputDir);
  const state = runState(j.ctx, row, newest ? Number(newest.slice(5)) : null);
  const fullWeights = state.weights.format === 'full';
  // With object storage the files may not be on this host yet: a checked local copy (the stored file itself when local).
  const trainingFile = await materializeFile(j.ctx, row.training_file);
  const validationFile = row.validation_file ? await materializeFile(j.ctx, row.validation_file) : null;
  const request = buildTrainRequest({
    basePath: model.basePath,
    outputDir,
    trainingFile,
    validationFile,
    hyperparameters: ext.resolved,
    seed: row.seed,
    lora: ext.settings.lora,
    method,
    ...(method === 'full' ? { full: ext.settings.full ?? {} } : {}),
    ...(method === 'dpo' ? { dpo: { beta: ext.settings.dpo?.beta ?? DEFAULT_DPO_BETA } } : {}),
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
    threads,
  });
  const controls = resolveTrainingControls(pickTrainingControls(ext.settings));
  j.event(id, {
    message:
      (newest ? `Resuming fine-tuning from checkpoint ${newest} / 从检查点 ${newest} 继续微调` : `Fine-tuning started / 开始微调`) +
      `; ${describeTrainingControls(controls)}`,
    data: { controls, ...(newest ? { resumed_from: newest } : {}) },
  });
  return { request, state, resumeFrom: newest };
}

/**
 * What the translation of a running job's events keeps, from its row: `resumeFrom` is the checkpoint step the
 * run started from (null: from the start, or unknown — a remote lease's state rebuilt after a server restart).
 */
export function runState(ctx: Context, row: JobRow, resumeFrom: number | null): RunState {
  const ext = parseExtension(row);
  const model = resolveModel(ctx, row.model);
  const method = jobMethod(row);
  const outputDir = path.join(ctx.home.jobs, row.id);
  // Continued fine-tuning of an adapter: the engine merges it into <outputDir>/base, which the new weights build on.
  const fullWeights = method === 'full' || (method === 'reinforcement' && ext.settings.method === 'full');
  const weights: Weights = {
    method,
    format: fullWeights ? 'full' : 'lora',
    ...(model.adapterPath && !fullWeights ? { base_path: path.join(outputDir, 'base') } : {}),
  };
  return {
    ext,
    ftName: fineTunedModelName(row),
    outputDir,
    weights,
    resumeFrom,
    reportedUpTo: lastMetricsStep(ctx.db, row.id) ?? 0,
    sawMetrics: false,
    sawSkip: false,
  };
}

/** A checkpoint's directory name under `<job dir>/checkpoints`, as the engine writes it (engine/weitiao_engine/training/checkpoints.py). */
export function checkpointDirName(step: number): string {
  return `step-${String(step).padStart(6, '0')}`;
}

/** Whether the store asks the job's run to stop: cancel (also when the job is gone or cancelled) or pause. */
export function requestedStop(db: DB, id: string): 'cancel' | 'pause' | null {
  const row = getJobState(db, id);
  if (!row || row.requested_action === 'cancel' || row.status === 'cancelled') return 'cancel';
  if (row.status === 'pausing' || row.requested_action === 'pause') return 'pause';
  return null;
}

/**
 * Runs a queued job's training to an outcome: running, the engine's `train` command in
 * `<home>/jobs/<job id>` (resuming from its newest checkpoint), its events into the store, then the next
 * status. `attach` receives the run as soon as it exists, so the worker can stop or kill its engine.
 */
export async function trainJob(j: JobJournal, id: string, opts: RunOptions, attach: (run: JobRun) => void): Promise<void> {
  if (!startRun(j.ctx.db, id, opts.workerId)) return; // cancelled or paused meanwhile
  const { request, state } = await prepareRun(j, id, opts.threads ?? null);

  const run = new JobRun(id, opts);
  attach(run);
  const watch = setInterval(() => run.watch(j.ctx.db), opts.pollMs);
  watch.unref();

  let result: TrainResult | null = null;
  let failure: WeitiaoError | null = null;
  try {
    result = await runEngine('train', request, {
      env: { WEITIAO_CACHE_DIR: j.ctx.home.cache }, // the precision probe's per-machine figures (engine precision_probe.py)
      onSpawn: (child) => {
        run.pid = child.pid ?? null;
        setEnginePid(j.ctx.db, id, run.pid);
        if (run.reason) run.stop(run.reason, true);
      },
      onEvent: (e) => recordEngineEvent(j, run, state, e),
    });
  } catch (err) {
    failure = WeitiaoError.from(err);
  } finally {
    clearInterval(watch);
    run.ended();
    setEnginePid(j.ctx.db, id, null);
  }
  run.watch(j.ctx.db); // a request that arrived in the last moments still decides the outcome
  await finishRun(j, opts.maxCrashes, run, state, result, failure);
}

/** How a run ended, as its outcome needs it: why it was stopped and whether the engine reported an error. */
export interface RunEnd {
  readonly jobId: string;
  readonly reason: StopReason | null;
  readonly sawEngineError: boolean;
}

/**
 * Turns the engine's outcome into the job's next status (local runs and remote leases alike): succeeded (the
 * model registered, the metrics CSV, the forgetting check), cancelled, paused, queued again, failed, or lost.
 */
export async function finishRun(
  j: JobJournal,
  maxCrashes: number,
  run: RunEnd,
  state: RunState,
  result: TrainResult | null,
  failure: WeitiaoError | null,
): Promise<void> {
  const id = run.jobId;
  const release = { worker_id: null, worker_pid: null, estimated_finish: null };
  const step = state.ext.progress?.step;
  const at = step !== undefined ? ` at step ${step}` : '';

  if (result && !result.interrupted && result.model_dir) {
    await succeed(j, id, state, result);
    return;
  }
  if (run.reason === 'cancel') {
    settle(j, id, 'cancelled', { ...release, requested_action: null, finished_at: now() }, `The job was cancelled${at} / 任务已取消`);
    return;
  }
  if (run.reason === 'pause') {
    settle(j, id, 'paused', { ...release, requested_action: null }, `The job was paused${at}; resume continues from its last checkpoint / 任务已暂停`);
    return;
  }
  if (run.reason === 'shutdown') {
    const row = getJobRow(j.ctx.db, id)!;
    if (row.status === 'pausing') settle(j, id, 'paused', { ...release, requested_action: null }, `The job was paused${at} / 任务已暂停`);
    else settle(j, id, 'queued', release, `The worker stopped${at}; the job is queued and will resume from its last checkpoint / worker 已停止，任务将从最后的检查点继续`);
    return;
  }
  if (failure && run.sawEngineError) {
    fail(j, id, { code: failure.code, message: failure.message, param: failure.param ?? null });
    return;
  }
  // The engine died without saying why (killed, out of memory) or was stopped from outside: try again from the checkpoint.
  const why = failure ? failure.message.split('\n')[0] : 'the engine was interrupted';
  lost(j, getJobRow(j.ctx.db, id)!, maxCrashes, why, failure?.message.split('\n').slice(1).join('\n'));
}

async function succeed(j: JobJournal, id: string, state: RunState, result: TrainResult): Promise<void> {
  const row = getJobRow(j.ctx.db, id)!;
  const ext = parseExtension(row);
  const modelDir = path.resolve(state.outputDir, result.model_dir!);
  if (result.precision_choice) patchExtension(j.ctx.db, id, { precision_choice: result.precision_choice }); // shown in weitiao.controls
  const metricsFile = await writeMetricsCsv(j, id, state.outputDir);
  const resultFile = await createFile(j.ctx, { source: metricsFile, filename: 'step_metrics.csv', purpose: 'fine-tune-results' });
  registerModel(j.ctx, {
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
  storeModelDirs(j.ctx, state.ftName, (err) => storeFailed(j, id, state.ftName, err));
  j.ctx.db.transaction(() => {
    if (result.early_stopped) {
      j.event(id, {
        message: `Stopped early at step ${result.steps} of ${result.total_steps}: the validation loss stopped improving / 验证损失不再下降，已提前停止`,
        data: { early_stopped: true, steps: result.steps, total_steps: result.total_steps },
      });
    }
    j.event(id, {
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
      j.ctx.db,
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
    j.event(id, { message: 'The job has successfully completed / 任务已成功完成' });
  })();
  // Asked for at creation (weitiao.forgetting_check): base vs fine-tune on the general set. A failed check
  // is a warning event, never a failed job (the job has succeeded already).
  if (ext.settings.forgetting_check) {
    await runForgettingCheck(j.ctx, jobToWire(getJobRow(j.ctx.db, id)!), { request: ext.settings.forgetting_check, onEvent: (e) => j.event(id, e) });
  }
}

/** OpenAI's result file: one row per step with `step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`. */
async function writeMetricsCsv(j: JobJournal, id: string, outputDir: string): Promise<string> {
  const byStep = new Map<number, Record<string, number>>();
  for (const data of metricsEventData(j.ctx.db, id)) {
    const d = JSON.parse(data) as Record<string, number>;
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
