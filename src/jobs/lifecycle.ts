/**
 * A job after its creation: list and retrieve it, and the requests that move it — cancel, pause, resume —
 * each checked against the status machine (internal/status.ts) in one transaction.
 */
import type { Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { retrieveFile } from '../files/index.js';
import { resolveModel, trainedDirAvailable } from '../models/index.js';
import { listPage, now, type ListPage } from '../store/index.js';
import { isGroupAlive, STALE_WORKER_SECONDS, stopGroup, workerGone } from './internal/process.js';
import { addEvent, parseExtension } from './internal/records.js';
import { transition, transitionError } from './internal/status.js';
import { checkpointLocations, getJobRow, requestJobCancel, selectJobsPage, type JobRow } from './repository.js';
import { ListJobsParams, parseParams, type FineTuningJob } from './schemas.js';
import { jobToWire } from './wire.js';

/** Jobs, newest first, in OpenAI's cursor pages; `metadata` keeps jobs holding all the given pairs. */
export function listJobs(ctx: Context, params: ListJobsParams = {}): ListPage<FineTuningJob> {
  const p = parseParams(ListJobsParams, params);
  const page = selectJobsPage(ctx.db, { metadata: p.metadata, after: p.after, limit: p.limit });
  if (!page) throw jobNotFound(p.after!, 'after');
  return listPage(page.rows.map(jobToWire), page.has_more);
}

/** One job; `not_found` (param `fine_tuning_job_id`) when there is none. */
export function retrieveJob(ctx: Context, id: string): FineTuningJob {
  return jobToWire(requireJob(ctx, id));
}

/**
 * Cancels a job. Not yet running (or paused): cancelled at once. Running: the worker is asked to stop
 * the engine's process group (within seconds) and marks it cancelled; if that worker is gone, the
 * engine is stopped here. `conflict` for a finished job.
 */
export async function cancelJob(ctx: Context, id: string): Promise<FineTuningJob> {
  const row = requireJob(ctx, id);
  if (row.status === 'running' || row.status === 'pausing') {
    if (workerGone(row.worker_id, row.heartbeat_at, STALE_WORKER_SECONDS)) {
      // Nobody will act on a request: stop a left-over engine ourselves, then cancel.
      if (isGroupAlive(row.worker_pid)) await stopGroup(row.worker_pid!, 2000);
      return finishCancel(ctx, id);
    }
    ctx.db.transaction(() => {
      const current = requireJob(ctx, id);
      if (current.status !== 'running' && current.status !== 'pausing') throw transitionError(id, current.status, 'cancelled', 'cancel');
      requestJobCancel(ctx.db, id);
      addEvent(ctx.db, id, { message: 'Cancellation requested / 已请求取消任务' });
    })();
    return retrieveJob(ctx, id);
  }
  return finishCancel(ctx, id);
}

function finishCancel(ctx: Context, id: string): FineTuningJob {
  ctx.db.transaction(() => {
    transition(
      ctx.db,
      id,
      'cancelled',
      { finished_at: now(), requested_action: null, worker_id: null, worker_pid: null, estimated_finish: null },
      { action: 'cancel' },
    );
    addEvent(ctx.db, id, { message: 'The job was cancelled / 任务已取消' });
  })();
  return retrieveJob(ctx, id);
}

/**
 * Pauses a job: running → pausing (the worker sends the engine SIGTERM; it saves a checkpoint and the job
 * becomes paused); queued → paused at once. `conflict` otherwise.
 */
export function pauseJob(ctx: Context, id: string): FineTuningJob {
  ctx.db.transaction(() => {
    const row = requireJob(ctx, id);
    if (row.status === 'queued') {
      transition(ctx.db, id, 'paused', { worker_id: null }, { from: ['queued'], action: 'pause' });
      addEvent(ctx.db, id, { message: 'The job was paused before it started / 任务在开始前已暂停' });
    } else {
      transition(ctx.db, id, 'pausing', { requested_action: 'pause' }, { from: ['running'], action: 'pause' });
      addEvent(ctx.db, id, { message: 'Pause requested: saving a checkpoint / 已请求暂停，正在保存检查点' });
    }
  })();
  return retrieveJob(ctx, id);
}

/**
 * Resumes a paused job, or a failed one that saved a checkpoint: it is queued again and continues from its
 * newest good checkpoint (the engine skips one that does not verify). `conflict` for a failed job with no
 * checkpoint on disk (nothing to resume from) and for every other status.
 */
export function resumeJob(ctx: Context, id: string): FineTuningJob {
  ctx.db.transaction(() => {
    const row = requireJob(ctx, id);
    if (row.status !== 'failed') {
      transition(
        ctx.db,
        id,
        'queued',
        { requested_action: null, worker_id: null, worker_pid: null, estimated_finish: null },
        { from: ['paused'], action: 'resume' },
      );
      addEvent(ctx.db, id, { message: 'The job was resumed and is queued / 任务已继续，正在排队' });
      return;
    }
    const checkpoints = checkpointLocations(ctx.db, id);
    const usable = checkpoints.filter((c) => trainedDirAvailable(ctx, c.model, c.path)); // here, or complete in object storage
    if (!usable.length) {
      throw new WeitiaoError(
        'conflict',
        `cannot resume job ${id}: it failed before saving a checkpoint, so there is nothing to resume from; create the job again / 任务 ${id} 失败前没有保存检查点，无法继续，请重新创建任务`,
        { param: 'fine_tuning_job_id' },
      );
    }
    // What it trains from must still be there, or the resumed run would only fail again.
    try {
      resolveModel(ctx, row.model);
    } catch (err) {
      const e = WeitiaoError.from(err);
      throw new WeitiaoError('conflict', `cannot resume job ${id}: ${e.message}`, { param: 'model', cause: e });
    }
    for (const param of ['training_file', 'validation_file'] as const) {
      const fileId = row[param];
      if (fileId && !fileExists(ctx, fileId)) {
        throw new WeitiaoError('conflict', `cannot resume job ${id}: its ${param} ${fileId} was deleted / 任务的文件 ${fileId} 已被删除，无法继续`, { param });
      }
    }
    const ext = parseExtension(row);
    transition(
      ctx.db,
      id,
      'queued',
      {
        extension: JSON.stringify({ ...ext, crash_streak: 0 }),
        error: null,
        finished_at: null,
        requested_action: null,
        worker_id: null,
        worker_pid: null,
        estimated_finish: null,
      },
      { from: ['failed'], action: 'resume' },
    );
    const step = usable[0].step;
    addEvent(ctx.db, id, {
      message: `The failed job was resumed and is queued; it continues from its last good checkpoint (step ${step} or, if that one is damaged, an older one) / 失败的任务已继续，将从最后一个完好的检查点继续`,
      data: { resumed_after_failure: true, newest_checkpoint_step: step },
    });
  })();
  return retrieveJob(ctx, id);
}


export function requireJob(ctx: Context, id: string): JobRow {
  const row = getJobRow(ctx.db, id);
  if (!row) throw jobNotFound(id);
  return row;
}

export function jobNotFound(id: string, param = 'fine_tuning_job_id'): WeitiaoError {
  return new WeitiaoError('not_found', `no such fine-tuning job: ${id} / 找不到微调任务 ${id}`, { param });
}

function fileExists(ctx: Context, id: string): boolean {
  try {
    retrieveFile(ctx, id);
    return true;
  } catch (err) {
    if (err instanceof WeitiaoError && err.code === 'not_found') return false;
    throw err;
  }
}
