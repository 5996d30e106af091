/**
 * /v1/fine_tuning/alpha/graders: OpenAI's graders API, so a grader can be tried on one sample before a
 * reinforcement job or an evaluation uses it. Bad grader JSON is a 400 naming the field
 * (`grader.graders.b.operation`); a grader that fails on the sample is a 200 with reward 0 and its error flags.
 */
import type { Context } from '../../context.js';
import { GraderRunResult } from '../../engine/index.js';
import { GraderRunParams, GraderValidateParams, GraderValidateResponse, runGrader, validateGrader } from '../../graders/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

export function graderRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  routes.add(
    {
      method: 'post',
      path: '/v1/fine_tuning/alpha/graders/run',
      operationId: 'run_grader',
      summary: 'Run a grader on one model sample (and its data item)',
      tag: 'Graders',
      body: GraderRunParams,
      response: { description: "The reward, OpenAI's metadata and error flags, and weitiao's notes", schema: GraderRunResult, name: 'GraderRunResponse' },
    },
    async (c, { body }) => {
      // A score_model judge with no endpoint configured asks this server, with the caller's own key.
      const key = c.req.header('authorization')?.match(/^Bearer\s+(\S+)/i)?.[1] ?? null;
      const [result] = await runGrader(ctx, body.grader, [{ model_sample: body.model_sample, item: body.item ?? {} }], {
        defaultJudge: { base_url: `${new URL(c.req.url).origin}/v1`, api_key: key },
        signal: c.req.raw.signal,
      });
      return c.json(result);
    },
  );

  routes.add(
    {
      method: 'post',
      path: '/v1/fine_tuning/alpha/graders/validate',
      operationId: 'validate_grader',
      summary: 'Validate a grader: shapes, templates, the calculate_output formula, python source',
      tag: 'Graders',
      body: GraderValidateParams,
      response: { description: 'The grader as it will run', schema: GraderValidateResponse, name: 'GraderValidateResponse' },
    },
    async (c, { body }) => c.json({ grader: await validateGrader(ctx, body.grader, { signal: c.req.raw.signal }) }),
  );
}
