/**
 * The job status machine: the ONE table of allowed transitions. Every status change in the service and
 * the worker goes through `transition`, which checks this table and updates the row only if its status
 * is still the one read (so two processes racing on one job cannot both win).
 */
import type { DB } from '../../store/index.js';
import { WeitiaoError } from '../../errors.js';
import { getJobState, updateJobIfStatus } from '../repository.js';

export const JOB_STATUSES = [
  'validating_files',
  'queued',
  'running',
  'pausing',
  'paused',
  'succeeded',
  'failed',
  'cancelled',
] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

//                 from                 → allowed to
export const TRANSITIONS: Readonly<Record<JobStatus, readonly JobStatus[]>> = {
  validating_files: ['queued', 'failed', 'cancelled'],
  //  queued → paused: pausing a job that has not started just holds it; → failed: its model or file vanished
  queued: ['running', 'paused', 'cancelled', 'failed'],
  //  running → queued: the worker stopped (shutdown or crash) and the job resumes from its last checkpoint
  running: ['pausing', 'succeeded', 'failed', 'cancelled', 'queued'],
  //  pausing → succeeded: training ended before the pause took effect
  pausing: ['paused', 'succeeded', 'failed', 'cancelled', 'queued'],
  paused: ['queued', 'cancelled'],
  succeeded: [],
  //  failed → queued: resumed from its last good checkpoint (resumeJob checks there is one)
  failed: ['queued'],
  cancelled: [],
};

export const TERMINAL: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];

export function canTransition(from: JobStatus, to: JobStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

/** `conflict` naming the job, its status and what was asked. */
export function transitionError(id: string, from: string, to: string, action?: string): WeitiaoError {
  const what = action ?? `move to '${to}'`;
  return new WeitiaoError('conflict', `cannot ${what} job ${id}: its status is '${from}' / 任务当前状态为 '${from}'，无法${zhAction(action)}`, {
    param: 'fine_tuning_job_id',
  });
}

function zhAction(action?: string): string {
  switch (action) {
    case 'cancel':
      return '取消';
    case 'pause':
      return '暂停';
    case 'resume':
      return '继续';
    default:
      return '变更状态';
  }
}

/**
 * Moves job `id` to `to` and sets `fields`, atomically; `conflict` when the table forbids it or when the
 * status is not one of `from` (if given). Returns the status the job had.
 */
export function transition(
  db: DB,
  id: string,
  to: JobStatus,
  fields: Record<string, unknown> = {},
  options: { from?: readonly JobStatus[]; action?: string } = {},
): JobStatus {
  return db.transaction(() => {
    const row = getJobState(db, id);
    if (!row) throw new WeitiaoError('not_found', `no such fine-tuning job: ${id} / 找不到微调任务`, { param: 'fine_tuning_job_id' });
    if ((options.from && !options.from.includes(row.status)) || !canTransition(row.status, to)) {
      throw transitionError(id, row.status, to, options.action);
    }
    updateJobIfStatus(db, id, row.status, to, fields);
    return row.status;
  }).immediate();
}
