/**
 * /v1/weitiao/teacher-runs: data made with a teacher model (label, synthesize, pairs) as background tasks
 * tracked like exports: estimate before starting, create (answered at once, status `queued`), list,
 * retrieve with progress, cancel (requests in flight are answered and journaled first), resume (nothing is
 * asked twice), and download the output JSONL. Inputs are uploaded file ids, never server paths.
 */
import { createReadStream, statSync } from 'node:fs';
import { Readable } from 'node:stream';
import { z } from 'zod';
import type { Context } from '../../context.js';
import {
  cancelTeacherRun,
  createTeacherRun,
  CreateTeacherRunBody,
  estimateTeacherRun,
  listTeacherRuns,
  resumeTeacherRun,
  retrieveTeacherRun,
  TeacherRunEstimate,
  TeacherRunObject,
  teacherRunOutput,
} from '../../data/teacher/server-runs.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const ListQuery = z.object({
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
});

const TeacherRunList = z.object({
  object: z.literal('list'),
  data: z.array(TeacherRunObject),
  has_more: z.boolean(),
  first_id: z.string().nullable(),
  last_id: z.string().nullable(),
});

const RunParams = z.object({ run_id: z.string().min(1) });
const RUN = { schema: TeacherRunObject, name: 'TeacherRun' } as const;

export function teacherRunRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const base = '/v1/weitiao/teacher-runs';
  const tag = 'Teacher runs';

  routes.add(
    {
      method: 'post',
      path: `${base}/estimate`,
      operationId: 'estimate_teacher_run',
      summary: 'Cost estimate of a teacher run before it starts: requests, estimated prompt tokens, completion tokens at most',
      tag,
      body: CreateTeacherRunBody,
      response: { description: 'The estimate', schema: TeacherRunEstimate, name: 'TeacherRunEstimate' },
    },
    async (c, { body }) => c.json(await estimateTeacherRun(ctx, body)),
  );

  routes.add(
    {
      method: 'post',
      path: base,
      operationId: 'create_teacher_run',
      summary: 'Label a column, synthesize examples or make preference pairs with a teacher model (background task)',
      tag,
      body: CreateTeacherRunBody,
      response: { description: 'The run, queued', ...RUN },
    },
    async (c, { body }) => c.json(await createTeacherRun(ctx, body), 202),
  );

  routes.add(
    {
      method: 'get',
      path: base,
      operationId: 'list_teacher_runs',
      summary: 'List teacher runs, newest first',
      tag,
      query: ListQuery,
      response: { description: 'A page of runs', schema: TeacherRunList, name: 'TeacherRunList' },
    },
    (c, { query }) => c.json(listTeacherRuns(ctx, query)),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/:run_id`,
      operationId: 'retrieve_teacher_run',
      summary: 'Retrieve a teacher run: status, estimate, progress, rejected units, label counts',
      tag,
      params: RunParams,
      response: { description: 'The run', ...RUN },
    },
    (c, { params }) => c.json(retrieveTeacherRun(ctx, params.run_id)),
  );

  routes.add(
    {
      method: 'post',
      path: `${base}/:run_id/cancel`,
      operationId: 'cancel_teacher_run',
      summary: 'Stop a teacher run once its requests in flight are answered and journaled',
      tag,
      params: RunParams,
      response: { description: 'The run, cancelled', ...RUN },
    },
    async (c, { params }) => c.json(await cancelTeacherRun(ctx, params.run_id)),
  );

  routes.add(
    {
      method: 'post',
      path: `${base}/:run_id/resume`,
      operationId: 'resume_teacher_run',
      summary: 'Start a cancelled or failed teacher run again: nothing already answered is requested again',
      tag,
      params: RunParams,
      response: { description: 'The run, queued', ...RUN },
    },
    async (c, { params }) => c.json(await resumeTeacherRun(ctx, params.run_id), 202),
  );

  routes.add(
    {
      method: 'get',
      path: `${base}/:run_id/content`,
      operationId: 'download_teacher_run',
      summary: "Download a teacher run's output (OpenAI JSONL; what it holds so far while it runs)",
      tag,
      params: RunParams,
      response: { description: 'The JSONL', contentType: 'application/jsonl' },
    },
    (c, { params }) => {
      const file = teacherRunOutput(ctx, params.run_id);
      return c.body(Readable.toWeb(createReadStream(file)) as ReadableStream, 200, {
        'content-type': 'application/jsonl; charset=utf-8',
        'content-length': String(statSync(file).size),
      });
    },
  );
}
