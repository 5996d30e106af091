/**
 * /v1/models: list, retrieve, delete. Model ids contain ':' and '/' (`ft:tiny:waimai:abc`,
 * `Qwen/Qwen2.5-0.5B-Instruct`), so the id is the whole rest of the path.
 */
import { z } from 'zod';
import type { Context } from '../../context.js';
import { deleteModel, listModels, ModelDeleted, ModelList, ModelObject, publicModel, retrieveModel } from '../../models/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const ModelParams = z.object({ model: z.string().min(1) });

export function modelRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  routes.add(
    {
      method: 'get',
      path: '/v1/models',
      operationId: 'list_models',
      summary: 'Base models, fine-tuned models and their checkpoints',
      tag: 'Models',
      response: { description: 'Every registered model', schema: ModelList, name: 'ModelList' },
    },
    (c) => {
      const list = listModels(ctx);
      return c.json({ ...list, data: list.data.map((m) => publicModel(m, ctx.home.root)) });
    },
  );

  routes.add(
    {
      method: 'get',
      path: '/v1/models/:model{.+}',
      operationId: 'retrieve_model',
      summary: 'Retrieve a model',
      tag: 'Models',
      params: ModelParams,
      response: { description: 'The model', schema: ModelObject, name: 'Model' },
    },
    (c, { params }) => c.json(publicModel(retrieveModel(ctx, params.model), ctx.home.root)),
  );

  routes.add(
    {
      method: 'delete',
      path: '/v1/models/:model{.+}',
      operationId: 'delete_model',
      summary: 'Delete a fine-tuned model or checkpoint and its files (base models are refused)',
      tag: 'Models',
      params: ModelParams,
      response: { description: 'Deletion status', schema: ModelDeleted, name: 'ModelDeleted' },
    },
    // Without `force`, as OpenAI's API: only fine-tuned models can be deleted over HTTP.
    (c, { params }) => c.json(deleteModel(ctx, params.model)),
  );
}
