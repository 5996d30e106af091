/**
 * Stored evaluation results under `/v1/weitiao/` (src/eval/results.ts): the leaderboard of a dataset, the
 * stored reports the console shows, and a job's forgetting check (read, or run now for a job that did not
 * ask for one at creation). Reports are stored without server paths: files are named by id.
 */
import { z } from 'zod';
import type { Context } from '../../context.js';
import { runForgettingCheck } from '../../eval/job-checks.js';
import { datasetKey, jobForgettingCheck, leaderboardOf, listEvalResults, retrieveEvalResult } from '../../eval/results.js';
import { WeitiaoError } from '../../errors.js';
import { fileContentPath, retrieveFile } from '../../files/index.js';
import { retrieveJob } from '../../jobs/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const FileId = z.string().regex(/^file-[0-9a-z]+$/i, 'an uploaded file id (file-…)');
const tag = 'Evaluation results (weitiao)';

/** The dataset key of an uploaded file (over HTTP a name is never taken as a server path). */
async function datasetOf(ctx: Context, fileId: string): Promise<string> {
  retrieveFile(ctx, fileId);
  return datasetKey(ctx, fileContentPath(ctx, fileId));
}

const ListQuery = z.object({ file_id: FileId.optional(), job_id: z.string().min(1).optional(), limit: z.coerce.number().int().min(1).max(100).default(20) });
const JobParams = z.object({ fine_tuning_job_id: z.string().min(1) });
const CheckBody = z.strictObject({ max_examples: z.number().int().min(6).max(300).optional() });

export function evalResultRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  routes.add(
    { method: 'get', path: '/v1/weitiao/leaderboard', operationId: 'weitiao_leaderboard', summary: 'Every model evaluated on one file, ranked (accuracy for labels, chrF/char F1 for text), newest result per model', tag, query: z.object({ file_id: FileId }), response: { description: '`weitiao.leaderboard`' } },
    async (c, { query }) => c.json(leaderboardOf(ctx, await datasetOf(ctx, query.file_id))),
  );
  routes.add(
    { method: 'get', path: '/v1/weitiao/eval_results', operationId: 'weitiao_list_eval_results', summary: 'Stored evaluation results, newest first (of one file or one job)', tag, query: ListQuery, response: { description: 'A list of `weitiao.eval_result`' } },
    async (c, { query }) => {
      const dataset = query.file_id ? await datasetOf(ctx, query.file_id) : undefined;
      const data = listEvalResults(ctx, { dataset, job_id: query.job_id, limit: query.limit });
      return c.json({ object: 'list', data, has_more: false, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null });
    },
  );
  routes.add(
    { method: 'get', path: '/v1/weitiao/eval_results/:result_id', operationId: 'weitiao_retrieve_eval_result', summary: 'One stored evaluation result with its whole report', tag, params: z.object({ result_id: z.string().min(1) }), response: { description: '`weitiao.eval_result`' } },
    (c, { params }) => c.json(retrieveEvalResult(ctx, params.result_id)),
  );
  routes.add(
    { method: 'get', path: '/v1/weitiao/jobs/:fine_tuning_job_id/forgetting_check', operationId: 'weitiao_job_forgetting_check', summary: "The job's forgetting check: base and fine-tune on the general-ability set, delta per category", tag, params: JobParams, response: { description: '`weitiao.forgetting_check`' } },
    (c, { params }) => {
      const job = retrieveJob(ctx, params.fine_tuning_job_id);
      const report = jobForgettingCheck(ctx, job.id);
      if (!report) throw new WeitiaoError('not_found', `job ${job.id} has no forgetting check / 该任务没有遗忘检查`, { param: 'fine_tuning_job_id' });
      return c.json(report);
    },
  );
  routes.add(
    { method: 'post', path: '/v1/weitiao/jobs/:fine_tuning_job_id/forgetting_check', operationId: 'weitiao_run_job_forgetting_check', summary: 'Run the forgetting check of a succeeded job now and store it with the job (synchronous)', tag, params: JobParams, body: CheckBody, response: { description: '`weitiao.forgetting_check`' } },
    async (c, { params, body }) => {
      const job = retrieveJob(ctx, params.fine_tuning_job_id);
      let failure: string | null = null;
      const stored = await runForgettingCheck(ctx, job, {
        request: body.max_examples ? { max_examples: body.max_examples } : true,
        signal: c.req.raw.signal,
        onEvent: (e) => (e.level === 'warn' ? (failure = e.message) : undefined),
      });
      if (!stored) throw new WeitiaoError('engine_error', failure ?? 'the forgetting check failed / 遗忘检查失败', { param: 'fine_tuning_job_id' });
      return c.json(stored.report);
    },
  );
}
