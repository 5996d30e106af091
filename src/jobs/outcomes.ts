/**
 * How a job's handling ends, for the worker's loop (recovery) and a run alike: settled into a status with
 * one event, failed with its error, or lost (engine crash, worker gone) and queued again — until a crash
 * loop fails it with the cause said once.
 */
import type { Context } from '../context.js';
import type { EngineEvent } from '../engine/index.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { now } from '../store/index.js';
import { addEvent, parseExtension, type JobError, type WireJobEvent } from './internal/records.js';
import { crashLoopMessage } from './internal/recovery.js';
import { transition, type JobStatus } from './internal/status.js';
import { countCheckpoints, type EventLevel, type JobRow } from './repository.js';

/** A new event for a job's log. */
export interface NewJobEvent {
  level?: EventLevel;
  type?: 'message' | 'metrics';
  message: string;
  data?: unknown;
}

/** Where the phases of a job write: the store, and the worker's listeners (its options' hooks and events). */
export interface JobJournal {
  readonly ctx: Context;
  /** Appends an event to the job's log and tells the listeners. */
  event(jobId: string, event: NewJobEvent): void;
  /** Tells the listeners of an event rewritten in place (a resumed run's repeated step). */
  replaced(jobId: string, event: WireJobEvent): void;
  /** Tells the listeners of a raw engine event (progress bars want these). */
  engine(jobId: string, event: EngineEvent): void;
}

/** The event, then the transition, in one transaction. */
export function settle(j: JobJournal, id: string, to: JobStatus, fields: Record<string, unknown>, message: string, level: EventLevel = 'info'): void {
  j.ctx.db.transaction(() => {
    j.event(id, { level, message });
    transition(j.ctx.db, id, to, fields);
  })();
}

/** Fails the job with `error`; nothing when it was cancelled meanwhile. */
export function fail(j: JobJournal, id: string, error: JobError, extra: Record<string, unknown> = {}): void {
  try {
    settle(
      j,
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

/**
 * A lost run (engine crash, worker gone): queued again to resume from its checkpoint, or, the
 * `maxCrashes`-th time in a row without a checkpoint saved in between, failed with the cause stated once:
 * `why` and the engine's last output (`detail`, its stderr tail), server paths hidden.
 */
export function lost(j: JobJournal, row: JobRow, maxCrashes: number, why: string, detail?: string): void {
  const attempts = row.attempts + 1;
  const ext = parseExtension(row);
  const streak = (ext.crash_streak ?? 0) + 1;
  const release = { worker_id: null, worker_pid: null, estimated_finish: null, attempts, extension: JSON.stringify({ ...ext, crash_streak: streak }) };
  const root = j.ctx.home.root;
  const cause = hideServerPaths(why, root);
  if (streak < maxCrashes) {
    settle(
      j,
      row.id,
      'queued',
      release,
      `Training stopped unexpectedly (${cause}); it will resume from its last checkpoint (crash ${streak} of at most ${maxCrashes} in a row) / 训练意外中断，将从最后的检查点继续`,
      'warn',
    );
    return;
  }
  const resumable = countCheckpoints(j.ctx.db, row.id) > 0;
  const message = crashLoopMessage({ jobId: row.id, streak, cause, output: hideServerPaths(detail ?? '', root), resumable });
  fail(j, row.id, { code: 'training_interrupted', message, param: null }, { attempts, extension: release.extension });
}

/**
 * A running or pausing job whose worker is gone (a dead local worker, a remote lease not renewed): cancelled when
 * that was asked, paused when pausing, else lost (queued again to resume from its checkpoint, or a crash loop).
 */
export function settleAbandoned(j: JobJournal, row: JobRow, maxCrashes: number, why: string): void {
  const release = { worker_id: null, worker_pid: null, estimated_finish: null };
  if (row.requested_action === 'cancel') {
    settle(j, row.id, 'cancelled', { ...release, requested_action: null, finished_at: now() }, 'The job was cancelled / 任务已取消');
  } else if (row.status === 'pausing') {
    settle(j, row.id, 'paused', { ...release, requested_action: null }, 'The job was paused / 任务已暂停');
  } else {
    lost(j, row, maxCrashes, why);
  }
}

/** A journal that only writes to the store (no listeners): remote leases' runs, whose events nobody in this process follows live. */
export function storeJournal(ctx: Context): JobJournal {
  return { ctx, event: (jobId, e) => void addEvent(ctx.db, jobId, e), replaced: () => {}, engine: () => {} };
}
