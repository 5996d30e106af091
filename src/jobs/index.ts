/**
 * Fine-tuning jobs in OpenAI's shape: create, list, retrieve, cancel, pause, resume, events, checkpoints.
 *
 * ```ts
 * const job = createJob(ctx, { model: 'tiny-qwen2', training_file: 'file-…', suffix: 'waimai' });
 * await new Worker(ctx).runNext();           // validates the files, trains, registers ft:tiny-qwen2:waimai:…
 * for await (const e of followJobEvents(ctx, job.id)) console.log(e.message);
 * ```
 * Jobs are rows in the store, so the CLI, the HTTP API and any worker process see the same state; the
 * worker (worker.ts) moves them through the statuses in internal/status.ts, the one transition table.
 * The wire job is OpenAI's FineTuningJob; weitiao's settings and live progress sit in its `weitiao` field.
 *
 * This is the domain's one entry module. Where things live:
 *   schemas.ts        request and wire schemas (zod), parseParams
 *   create.ts         createJob, planJob (the dry run)
 *   lifecycle.ts      listJobs, retrieveJob, cancelJob, pauseJob, resumeJob
 *   events.ts         listJobEvents, followJobEvents, listJobCheckpoints
 *   wire.ts           rows → OpenAI's wire objects
 *   reinforcement.ts  method.reinforcement: checks, `auto`, the engine's settings
 *   repository.ts     every SQL statement on jobs, job_events and checkpoints
 *   worker.ts         the queue loop (claim, heartbeat, recovery, stop); validate.ts and run.ts: one job's phases
 *   (src/workers' remote leases run the same phases: startRun, prepareRun, recordEngineEvent, finishRun)
 */

export {
  CreateJobParams,
  DEFAULT_DPO_BETA,
  DpoHyperparameters,
  FineTuningJob,
  FineTuningJobCheckpoint,
  FineTuningJobEvent,
  JobPlan,
  JobStatusSchema,
  ListCheckpointsParams,
  ListEventsParams,
  ListJobsParams,
  ListOf,
  Metadata,
  REINFORCEMENT_GROUP,
  ReinforcementHyperparameters,
  SupervisedHyperparameters,
  WeitiaoJobSettings,
} from './schemas.js';
export { createJob, planJob, submitJob } from './create.js';
export { cancelJob, listJobs, pauseJob, resumeJob, retrieveJob } from './lifecycle.js';
export { followJobEvents, listJobCheckpoints, listJobEvents, type FollowOptions } from './events.js';
export { jobMethod, jobToWire, reinforcementWire } from './wire.js';
export { resolveReinforcement } from './reinforcement.js';
export { JOB_STATUSES, TERMINAL, TRANSITIONS, canTransition, type JobStatus } from './internal/status.js';
export { STALE_WORKER_SECONDS, workerGone } from './internal/process.js';
export { Worker, type WorkerOptions } from './worker.js';
export { checkpointProject, isJobUnfinished } from './repository.js';
// One job's run, shared by the local worker and src/workers' remote leases (no second copy of the logic).
export { checkpointDirName, finishRun, JobRun, prepareRun, requestedStop, runState, startRun, type PreparedRun, type RunEnd, type StopReason } from './run.js';
export { recordEngineEvent, type RunState } from './engine-events.js';
export { fail, settleAbandoned, storeJournal, type JobJournal } from './outcomes.js';
export { getJobRow, jobOfLease, REMOTE_WORKER_PREFIX, staleRemoteJobs, unclaimedQueuedJobs, beatHeart, type JobRow } from './repository.js';
