/**
 * /v1/evals: OpenAI's Evals API over weitiao's models and files (src/evals). A run is answered at once
 * with status `queued`; the server's eval queue (src/evals/queue.ts, started in src/api/index.ts) executes
 * it. Its output items are listed as OpenAI lists them; its progress events are weitiao's addition.
 */
import { z } from 'zod';
import type { Context } from '../../context.js';
import {
  cancelRun,
  createEval,
  createRun,
  deleteEval,
  deleteRun,
  EvalCreateParams,
  EvalUpdateParams,
  listEvals,
  listOutputItems,
  listRunEvents,
  listRuns,
  retrieveEval,
  retrieveOutputItem,
  retrieveRun,
  RunCreateParams,
  updateEval,
} from '../../evals/index.js';
import { compareWithBaselines, DEFAULT_SHOTS } from '../../eval/baseline.js';
import { checkForgetting } from '../../eval/forgetting.js';
import { saveEvalResult } from '../../eval/results.js';
import { fileContentPath } from '../../files/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const Page = {
  after: z.string().optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  order: z.enum(['asc', 'desc']).default('asc'),
};
const EvalParams = z.object({ eval_id: z.string().min(1) });
const RunParams = z.object({ eval_id: z.string().min(1), run_id: z.string().min(1) });
const ItemParams = z.object({ eval_id: z.string().min(1), run_id: z.string().min(1), output_item_id: z.string().min(1) });

const FileId = z.string().regex(/^file-[0-9a-z]+$/i, 'an uploaded file id (file-…)');

/** `weitiao eval --baseline few-shot[:k]` over HTTP: files by id, never server paths. */
export const BaselineBody = z.object({
  model: z.string().min(1),
  file_id: FileId,
  /** Where the shots come from; default the training file of the model's job. */
  training_file_id: FileId.optional(),
  shots: z.number().int().min(1).max(64).default(DEFAULT_SHOTS),
  seed: z.number().int().default(0),
  max_examples: z.number().int().positive().max(100_000).optional(),
});

export const ForgettingBody = z.object({
  model: z.string().min(1),
  /** Default: the model's base. */
  compare_with: z.string().min(1).optional(),
  max_examples: z.number().int().positive().max(300).optional(),
  seed: z.number().int().default(0),
});

export function evalRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const tag = 'Evals';
  const base = '/v1/evals';

  routes.add(
    { method: 'post', path: base, operationId: 'create_eval', summary: 'Create an eval: a data-source schema and testing criteria (graders)', tag, body: EvalCreateParams, response: { description: 'The eval' } },
    (c, { body }) => c.json(createEval(ctx, body)),
  );
  routes.add(
    { method: 'get', path: base, operationId: 'list_evals', summary: 'List evals', tag, query: z.object({ ...Page, order_by: z.enum(['created_at', 'updated_at']).optional() }), response: { description: 'A page of evals' } },
    (c, { query }) => c.json(listEvals(ctx, query)),
  );
  routes.add(
    { method: 'get', path: `${base}/:eval_id`, operationId: 'retrieve_eval', summary: 'Retrieve an eval', tag, params: EvalParams, response: { description: 'The eval' } },
    (c, { params }) => c.json(retrieveEval(ctx, params.eval_id)),
  );
  routes.add(
    { method: 'post', path: `${base}/:eval_id`, operationId: 'update_eval', summary: "Rename an eval or change its metadata", tag, params: EvalParams, body: EvalUpdateParams, response: { description: 'The eval' } },
    (c, { params, body }) => c.json(updateEval(ctx, params.eval_id, body)),
  );
  routes.add(
    { method: 'delete', path: `${base}/:eval_id`, operationId: 'delete_eval', summary: 'Delete an eval, its runs and their output items', tag, params: EvalParams, response: { description: 'Deleted' } },
    (c, { params }) => c.json(deleteEval(ctx, params.eval_id)),
  );

  routes.add(
    { method: 'post', path: `${base}/:eval_id/runs`, operationId: 'create_eval_run', summary: 'Start a run (background task): answer the items with a model, or grade the given samples', tag, params: EvalParams, body: RunCreateParams, response: { description: 'The run, queued' } },
    (c, { params, body }) => {
      // score_model criteria with no endpoint of their own ask this server, with the caller's key.
      const key = c.req.header('authorization')?.match(/^Bearer\s+(\S+)/i)?.[1] ?? null;
      return c.json(createRun(ctx, params.eval_id, body, { judgeBaseUrl: `${new URL(c.req.url).origin}/v1`, judgeApiKey: key }));
    },
  );
  routes.add(
    { method: 'get', path: `${base}/:eval_id/runs`, operationId: 'list_eval_runs', summary: "List an eval's runs", tag, params: EvalParams, query: z.object({ ...Page, status: z.enum(['queued', 'in_progress', 'completed', 'canceled', 'failed']).optional() }), response: { description: 'A page of runs' } },
    (c, { params, query }) => c.json(listRuns(ctx, params.eval_id, query)),
  );
  routes.add(
    { method: 'get', path: `${base}/:eval_id/runs/:run_id`, operationId: 'retrieve_eval_run', summary: 'Retrieve a run (status, counts, progress)', tag, params: RunParams, response: { description: 'The run' } },
    (c, { params }) => c.json(retrieveRun(ctx, params.eval_id, params.run_id)),
  );
  routes.add(
    { method: 'post', path: `${base}/:eval_id/runs/:run_id`, operationId: 'cancel_eval_run', summary: 'Cancel a queued or running run', tag, params: RunParams, response: { description: 'The run' } },
    (c, { params }) => c.json(cancelRun(ctx, params.eval_id, params.run_id)),
  );
  routes.add(
    { method: 'delete', path: `${base}/:eval_id/runs/:run_id`, operationId: 'delete_eval_run', summary: 'Delete a run and its output items', tag, params: RunParams, response: { description: 'Deleted' } },
    (c, { params }) => c.json(deleteRun(ctx, params.eval_id, params.run_id)),
  );
  routes.add(
    { method: 'get', path: `${base}/:eval_id/runs/:run_id/events`, operationId: 'weitiao_list_eval_run_events', summary: "weitiao: a run's progress events (started or resumed, each chunk of items scored, ended)", tag, params: RunParams, query: z.object(Page), response: { description: 'A page of `eval.run.event`' } },
    (c, { params, query }) => c.json(listRunEvents(ctx, params.eval_id, params.run_id, query)),
  );
  routes.add(
    { method: 'get', path: `${base}/:eval_id/runs/:run_id/output_items`, operationId: 'list_eval_run_output_items', summary: "A run's output items: each data item, the model's answer and each criterion's result", tag, params: RunParams, query: z.object({ ...Page, status: z.enum(['pass', 'fail']).optional() }), response: { description: 'A page of output items' } },
    (c, { params, query }) => c.json(listOutputItems(ctx, params.eval_id, params.run_id, query)),
  );
  routes.add(
    { method: 'get', path: `${base}/:eval_id/runs/:run_id/output_items/:output_item_id`, operationId: 'retrieve_eval_run_output_item', summary: 'One output item', tag, params: ItemParams, response: { description: 'The output item' } },
    (c, { params }) => c.json(retrieveOutputItem(ctx, params.eval_id, params.run_id, params.output_item_id)),
  );

  // weitiao's own: the "was it worth it?" comparison and the forgetting check (synchronous; the client going
  // away stops the engine).
  routes.add(
    { method: 'post', path: '/v1/weitiao/evaluations/baselines', operationId: 'weitiao_compare_baselines', summary: 'Base zero-shot, base few-shot and the fine-tune on one file, with cost and paired tests', tag, body: BaselineBody, response: { description: '`weitiao.baseline_comparison`' } },
    async (c, { body }) => {
      const file = fileContentPath(ctx, body.file_id);
      const result = await compareWithBaselines(ctx, {
        model: body.model,
        file,
        trainingFile: body.training_file_id,
        shots: body.shots,
        seed: body.seed,
        maxExamples: body.max_examples ?? null,
        signal: c.req.raw.signal,
      });
      // Stored for the leaderboard and the console's report view, under the file id.
      const stored = await saveEvalResult(ctx, result, { datasetName: body.file_id });
      // Server paths stay on the server: the files by the ids the client knows.
      return c.json({ ...result, file: body.file_id, training_file: body.training_file_id ?? null, result_id: stored.id });
    },
  );
  routes.add(
    { method: 'post', path: '/v1/weitiao/evaluations/forgetting', operationId: 'weitiao_forgetting_check', summary: 'The model and its base on the general-ability set: the delta overall and per category', tag, body: ForgettingBody, response: { description: '`weitiao.forgetting_check`' } },
    async (c, { body }) => {
      const report = await checkForgetting(ctx, { model: body.model, compareWith: body.compare_with, maxExamples: body.max_examples ?? null, seed: body.seed, signal: c.req.raw.signal });
      const stored = await saveEvalResult(ctx, report);
      return c.json({ ...report, result_id: stored.id });
    },
  );
}
