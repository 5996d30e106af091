/**
 * The engine's events of one training run translated into the store: log lines and metrics become job
 * events (a resumed run's repeated steps replace their earlier figures), progress and the newest figures go
 * to the job's extension, evaluations to label metrics, checkpoints to checkpoint rows and models.
 */
import path from 'node:path';
import type { EngineEvent } from '../engine/index.js';
import { registerModel, storeModelDirs } from '../models/index.js';
import { now } from '../store/index.js';
import type { Method } from '../hyperparameters/index.js';
import { checkpointModelName, patchExtension, upsertCheckpoint, type CheckpointMetrics, type JobExtension } from './internal/records.js';
import { replaceMetricsEvent } from './internal/recovery.js';
import type { JobJournal } from './outcomes.js';
import { getJobRow } from './repository.js';

/** What a run's models are: registered with every checkpoint and the result, read back by resolveModel. */
export interface Weights {
  method: Method;
  /** `full`: each saved directory is a complete model; `lora`: an adapter. */
  format: 'full' | 'lora';
  /** Continued fine-tuning of an adapter: the merged base the new adapter (or weights) were trained from. */
  base_path?: string;
}

/** What the translation keeps between events of one run. */
export interface RunState {
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

/** The part of a run the translation reports to: which job, and whether the engine said it failed. */
export interface EngineOutcome {
  readonly jobId: string;
  sawEngineError: boolean;
}

export function recordEngineEvent(j: JobJournal, run: EngineOutcome, state: RunState, e: EngineEvent): void {
  const id = run.jobId;
  j.engine(id, e);
  const db = j.ctx.db;
  switch (e.type) {
    case 'hello':
      j.event(id, { message: `Engine started: torch ${e.torch_version} on ${e.device}, ${e.threads} threads${e.allocator ? `, ${e.allocator}` : ''} / 训练引擎已启动` });
      break;
    case 'log': {
      if (e.level === 'debug') break;
      // The engine skipped a checkpoint that does not verify (truncated, corrupted) and took an older one.
      const skipped = e.level === 'warning' && /skip/i.test(e.message) ? /step-\d+/.exec(e.message)?.[0] : undefined;
      if (skipped) state.sawSkip = true;
      j.event(id, {
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
        noteOlderCheckpoint(j, id, state, e.step);
      }
      db.transaction(() => {
        // A resumed run trains again the steps after its checkpoint: their figures replace the earlier ones, so
        // the history holds every step once.
        if (e.step > state.reportedUpTo || !replaceMetrics(j, id, e.step, metricsMessage(e), data)) {
          j.event(id, { type: 'metrics', message: metricsMessage(e), data });
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
        j.event(id, {
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
        registerModel(j.ctx, {
          id: name,
          kind: 'checkpoint',
          path: ckptPath,
          base_model: row.model,
          job_id: id,
          source: 'training',
          metadata: { step: e.step, epoch: e.epoch, metrics, training_file: row.training_file, ...state.weights },
        });
        j.event(id, { message: `Checkpoint saved at step ${e.step}: ${name} / 已在第 ${e.step} 步保存检查点`, data: { step: e.step, epoch: e.epoch, fine_tuned_model_checkpoint: name } });
      })();
      // With object storage: uploaded in the background (the engine goes on training; the row works from the local copy meanwhile).
      storeModelDirs(j.ctx, name, (err) => storeFailed(j, id, name, err));
      break;
    }
    case 'error':
      run.sawEngineError = true;
      break;
    default:
      break; // progress and tokens: only for the in-process hooks above
  }
}

/** An upload to object storage failed: said in the job's history; the checkpoint or model stays usable on this host. */
export function storeFailed(j: JobJournal, id: string, name: string, err: Error): void {
  try {
    j.event(id, { level: 'warn', message: `${name} could not be uploaded to object storage (it stays usable on this host): ${err.message} / 未能上传到对象存储` });
  } catch {
    process.emitWarning(`object storage: ${name}: ${err.message}`); // the job is gone meanwhile
  }
}

/** The step the first metrics of a resumed run carry tells whether the engine took an older checkpoint than the newest. */
function noteOlderCheckpoint(j: JobJournal, id: string, state: RunState, firstStep: number): void {
  if (state.resumeFrom === null || firstStep > state.resumeFrom) return;
  const from = firstStep - 1;
  j.event(id, {
    level: 'warn',
    message:
      (state.sawSkip ? '' : `The newest checkpoint (step ${state.resumeFrom}) could not be used; `) +
      `training resumed from the checkpoint at step ${from}: steps ${from + 1}–${state.resumeFrom} are trained again and their figures replace the earlier ones / 最新检查点无法使用，已从第 ${from} 步的检查点继续`,
    data: { skipped_checkpoint_step: state.resumeFrom, resumed_from_step: from },
  });
}

/** Replaces the metrics event already recorded for `step` (internal/recovery.ts); false when there is none. */
function replaceMetrics(j: JobJournal, id: string, step: number, message: string, data: Record<string, unknown>): boolean {
  const wire = replaceMetricsEvent(j.ctx.db, id, step, message, data);
  if (!wire) return false;
  j.replaced(id, wire);
  return true;
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

function fmt(v: number | undefined, digits = 4): string {
  return v === undefined ? '-' : Number(v.toFixed(digits)).toString();
}

function dropUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
