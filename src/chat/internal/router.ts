/**
 * Which backend answers a model: its deployment row, read at every request (so a `weitiao models deploy`
 * from another process takes effect on the server's next request), and the backends this process has
 * loaded for those rows. A row's `updated_at` is its version: a redeploy loads afresh, an undeploy
 * (row gone) unloads. No row, or backend `engine`: the shared warm engine process.
 */
import type { Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { materializeModel } from '../../models/index.js';
import type { Backend } from './backend.js';
import { getDeployment, setDeploymentState, type DeploymentRecord } from './deployments.js';
import { LlamaCppBackend } from './llamacpp.js';
import { closeChatEngine, EngineBackend } from './runner.js';
import type { VllmTarget } from './vllm.js';

export type Route = { kind: 'backend'; backend: Backend; deployment: DeploymentRecord | null } | { kind: 'vllm'; target: VllmTarget };

interface Loaded {
  version: number;
  backend: Promise<Backend>;
}

const loaded = new Map<string, Loaded>();

/** The backend for a chat request on `model` (a registered id or a model directory). */
export async function routeFor(ctx: Context, model: string): Promise<Route> {
  const deployment = getDeployment(ctx, model);
  const held = loaded.get(model);
  if (held && held.version !== deployment?.updated_at) await unloadDeployment(model);
  if (!deployment || deployment.backend === 'engine') {
    const resolved = await materializeModel(ctx, model); // downloaded from object storage when not here
    return { kind: 'backend', backend: new EngineBackend(resolved), deployment };
  }
  if (deployment.backend === 'vllm') return { kind: 'vllm', target: vllmTarget(deployment) };
  return { kind: 'backend', backend: await loadDeployment(ctx, deployment), deployment };
}

/**
 * The loaded backend of a llamacpp deployment, loading it on first use. A failed load marks the row
 * `failed` with the reason (the next request tries again: the file may have been fixed).
 */
export function loadDeployment(ctx: Context, deployment: DeploymentRecord): Promise<Backend> {
  const held = loaded.get(deployment.model);
  if (held && held.version === deployment.updated_at) return held.backend;
  const { config } = deployment;
  const backend = LlamaCppBackend.load({
    gguf: config.gguf!,
    lora: config.lora,
    replicas: deployment.replicas,
    parallel: config.parallel,
    contextSize: config.context_size,
    threads: config.threads,
  }).then(
    (b) => {
      if (deployment.state !== 'ready') setDeploymentState(ctx, deployment.model, deployment.updated_at, 'ready');
      return b as Backend;
    },
    (e: unknown) => {
      if (loaded.get(deployment.model)?.backend === backend) loaded.delete(deployment.model);
      const err =
        e instanceof WeitiaoError
          ? e
          : new WeitiaoError('engine_unavailable', `the llama.cpp deployment of ${deployment.model} could not be loaded: ${(e as Error).message} / 部署加载失败`, {
              cause: e,
            });
      setDeploymentState(ctx, deployment.model, deployment.updated_at, 'failed', err.message);
      throw err;
    },
  );
  loaded.set(deployment.model, { version: deployment.updated_at, backend });
  return backend;
}

/** Frees what this process loaded for `model`'s deployment (requests still running on it fail). */
export async function unloadDeployment(model: string): Promise<void> {
  const held = loaded.get(model);
  loaded.delete(model);
  if (held) await (await held.backend.catch(() => null))?.close();
}

/** Every loaded deployment and the warm engine: server shutdown. */
export async function closeAll(): Promise<void> {
  await Promise.all([...loaded.keys()].map(unloadDeployment));
  await closeChatEngine();
}

function vllmTarget(deployment: DeploymentRecord): VllmTarget {
  const { base_url, served_model, api_key_env } = deployment.config;
  return { baseUrl: base_url!, servedModel: served_model ?? deployment.model, apiKey: api_key_env ? (process.env[api_key_env] ?? null) : null };
}
