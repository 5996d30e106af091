/**
 * /v1/fine_tuning/jobs: create, list (with `metadata[k]=v`), retrieve, cancel, pause, resume, events
 * (a page, or `?stream=true` to follow the job live as server-sent events), checkpoints.
 */
import { z } from 'zod';
import type { Context } from '../../context.js';
import {
  cancelJob,
  CreateJobParams,
  FineTuningJob,
  FineTuningJobCheckpoint,
  FineTuningJobEvent,
  JobPlan,
  followJobEvents,
  listJobCheckpoints,
  ListCheckpointsParams,
  listJobEvents,
  ListEventsParams,
  listJobs,
  ListJobsParams,
  ListOf,
  pauseJob,
  resumeJob,
  retrieveJob,
  submitJob,
} from '../../jobs/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';
import { sse } from '../internal/sse.js';

const JobParams = z.object({ fine_tuning_job_id: z.string().min(1) });

const EventsQuery = ListEventsParams.extend({
  stream: z
    .stringbool()
    .default(false)
    .describe('`true`: follow the job as server-sent events (oldest first) until it finishes or pauses'),
});

const JOB = { schema: FineTuningJob, name: 'FineTuningJob' } as const;

export function jobRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const base = '/v1/fine_tuning/jobs';
  const tag = 'Fine-tuning';

  routes.add(
    {
      method: 'post',
      path: base,
      operationId: 'create_fine_tuning_job',
      summary: "Create a job; weitiao's own settings go in `weitiao`. With `weitiao.dry_run: true` nothing is created: the answer is a `weitiao.job_plan` (files validated, `auto` resolved, the memory and time estimate)",
      tag,
      body: CreateJobParams,
      response: {
        description: 'The job, validating its files; or, for a dry run, the plan',
        schema: z.union([FineTuningJob, JobPlan]),
        name: 'FineTuningJobOrPlan',
      },
    },
    // A dry run reads the files and runs the estimate: the client going away stops its engine.
    async (c, { body }) => c.json(await submitJob(ctx, body, { signal: c.req.raw.signal })),
  );

  routes.add(
    {
      method: 'get',
      path: base,
      operationId: 'list_fine_tuning_jobs',
      summary: 'List jobs, newest first; `metadata[key]=value` filters',
      tag,
      query: ListJobsParams,
      response: { description: 'A page of jobs', schema: ListOf(FineTuningJob), name: 'FineTuningJobList' },
    },
    (c, { query }) => c.json(listJobs(ctx, query)),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/:fine_tuning_job_id`,
      operationId: 'retrieve_fine_tuning_job',
      summary: 'Retrieve a job',
      tag,
      params: JobParams,
      response: { description: 'The job', ...JOB },
    },
    (c, { params }) => c.json(retrieveJob(ctx, params.fine_tuning_job_id)),
  );

  routes.add(
    {
      method: 'post',
      path: `${base}/:fine_tuning_job_id/cancel`,
      operationId: 'cancel_fine_tuning_job',
      summary: "Cancel a job (a running engine's processes stop within seconds)",
      tag,
      params: JobParams,
      response: { description: 'The job', ...JOB },
    },
    async (c, { params }) => c.json(await cancelJob(ctx, params.fine_tuning_job_id)),
  );

  routes.add(
    {
      method: 'post',
      path: `${base}/:fine_tuning_job_id/pause`,
      operationId: 'pause_fine_tuning_job',
      summary: 'Pause a job: it saves a checkpoint and stops (`pausing`, then `paused`)',
      tag,
      params: JobParams,
      response: { description: 'The job', ...JOB },
    },
    (c, { params }) => c.json(pauseJob(ctx, params.fine_tuning_job_id)),
  );

  routes.add(
    {
      method: 'post',
      path: `${base}/:fine_tuning_job_id/resume`,
      operationId: 'resume_fine_tuning_job',
      summary: 'Resume a paused job, or a failed one that saved a checkpoint, from its newest good checkpoint',
      tag,
      params: JobParams,
      response: { description: 'The job', ...JOB },
    },
    (c, { params }) => c.json(resumeJob(ctx, params.fine_tuning_job_id)),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/:fine_tuning_job_id/events`,
      operationId: 'list_fine_tuning_events',
      summary: "A page of a job's events, or with `stream=true` the events live as server-sent events",
      tag,
      params: JobParams,
      query: EventsQuery,
      response: {
        description: 'A page of events',
        schema: ListOf(FineTuningJobEvent),
        name: 'FineTuningJobEventList',
        alternatives: {
          'text/event-stream':
            '`stream=true`: one `data:` line per event (JSON, `id:` the event id), oldest first from `after` (or `Last-Event-ID`), ending when the job finishes or pauses',
        },
      },
    },
    (c, { params, query }) => {
      const id = params.fine_tuning_job_id;
      if (!query.stream) {
        const { stream: _, ...page } = query;
        return c.json(listJobEvents(ctx, id, page));
      }
      // Fail before the stream opens (unknown job or cursor → a real 404), then follow.
      const after = query.after ?? c.req.header('last-event-id') ?? undefined;
      listJobEvents(ctx, id, { after, limit: 1 });
      return sse(c, async (out) => {
        for await (const event of followJobEvents(ctx, id, { after, signal: out.signal })) await out.send(event, { id: event.id });
      });
    },
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/:fine_tuning_job_id/checkpoints`,
      operationId: 'list_fine_tuning_job_checkpoints',
      summary: "A job's checkpoints, newest first; each `fine_tuned_model_checkpoint` is a model id for chat",
      tag,
      params: JobParams,
      query: ListCheckpointsParams,
      response: { description: 'A page of checkpoints', schema: ListOf(FineTuningJobCheckpoint), name: 'FineTuningJobCheckpointList' },
    },
    (c, { params, query }) => c.json(listJobCheckpoints(ctx, params.fine_tuning_job_id, query)),
  );
}
