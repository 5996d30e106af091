/**
 * /v1/models: list, retrieve, delete, and /v1/weitiao/models/{model}/deployment: how a model is served.
 * Model ids contain ':' and '/' (`ft:tiny:waimai:abc`, `Qwen/Qwen2.5-0.5B-Instruct`), so the id is the
 * whole rest of the path. Listed and retrieved models carry their deployment in `weitiao.deployment`
 * (null: the engine's warm process serves them).
 */
import { z } from 'zod';
import type { Context } from '../../context.js';
import { deleteModel, listModels, ModelDeleted, ModelList, ModelObject, publicModel, retrieveModel } from '../../models/index.js';
import { deploymentsByModel, deployModel, Deployment, DeployParams, retrieveDeployment, undeployModel } from '../../chat/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const ModelParams = z.object({ model: z.string().min(1) });

/** OpenAI's model object; `weitiao.deployment` is the model's deployment or null (the warm engine). */
const DeployedModel = ModelObject.extend({
  weitiao: ModelObject.shape.weitiao.extend({ deployment: Deployment.nullable() }),
});
const DeployedModelList = ModelList.extend({ data: z.array(DeployedModel) });

function withDeployment(model: ModelObject, deployments: Map<string, Deployment>): z.infer<typeof DeployedModel> {
  return { ...model, weitiao: { ...model.weitiao, deployment: deployments.get(model.id) ?? null } };
}

export function modelRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  routes.add(
    {
      method: 'get',
      path: '/v1/models',
      operationId: 'list_models',
      summary: 'Base models, fine-tuned models and their checkpoints',
      tag: 'Models',
      response: { description: 'Every registered model', schema: DeployedModelList, name: 'ModelList' },
    },
    (c) => {
      const deployments = deploymentsByModel(ctx);
      const list = listModels(ctx);
      // Shared base models and the caller's project's own (src/projects).
      const visible = new Set((ctx.db.prepare("SELECT id FROM models WHERE kind = 'base' OR weitiao_visible(project)").all() as { id: string }[]).map((r) => r.id));
      const data = list.data.filter((m) => visible.has(m.id));
      return c.json({ ...list, data: data.map((m) => withDeployment(publicModel(m, ctx.home.root), deployments)) });
    },
  );

  const base = '/v1/weitiao/models/:model{.+}/deployment';
  routes.add(
    {
      method: 'post',
      path: base,
      operationId: 'deploy_model',
      summary: "Deploy a model on a backend (engine | llamacpp | vllm), replacing its deployment; answers once it is loaded",
      tag: 'Deployments',
      params: ModelParams,
      body: DeployParams,
      response: { description: 'The deployment (state ready)', schema: Deployment, name: 'Deployment' },
    },
    async (c, { params, body }) => c.json(await deployModel(ctx, params.model, body)),
  );
  routes.add(
    {
      method: 'get',
      path: base,
      operationId: 'retrieve_deployment',
      summary: "A model's deployment (404: none, the engine's warm process serves it)",
      tag: 'Deployments',
      params: ModelParams,
      response: { description: 'The deployment', schema: Deployment, name: 'Deployment' },
    },
    (c, { params }) => c.json(retrieveDeployment(ctx, params.model)),
  );
  routes.add(
    {
      method: 'delete',
      path: base,
      operationId: 'undeploy_model',
      summary: "End a model's deployment: the engine's warm process serves it again",
      tag: 'Deployments',
      params: ModelParams,
      response: { description: 'The ended deployment (state stopped)', schema: Deployment, name: 'Deployment' },
    },
    async (c, { params }) => c.json(await undeployModel(ctx, params.model)),
  );

  routes.add(
    {
      method: 'get',
      path: '/v1/models/:model{.+}',
      operationId: 'retrieve_model',
      summary: 'Retrieve a model',
      tag: 'Models',
      params: ModelParams,
      response: { description: 'The model', schema: DeployedModel, name: 'Model' },
    },
    (c, { params }) => c.json(withDeployment(publicModel(retrieveModel(ctx, params.model), ctx.home.root), deploymentsByModel(ctx))),
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
