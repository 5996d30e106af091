/**
 * Deployments: how a model is served. `engine` (the warm Python process, also what a model without a
 * deployment gets), `llamacpp` (a GGUF in this process, several sequences decoded together, LoRA adapters
 * over a shared base) or `vllm` (a proxy to an external OpenAI-compatible server).
 *
 * ```ts
 * await deployModel(ctx, 'ft:tiny:waimai:abc', { backend: 'llamacpp', replicas: 2, parallel: 8 }); // latest GGUF export
 * await deployModel(ctx, 'qwen-ft', { backend: 'vllm', base_url: 'http://gpu:8000/v1', served_model: 'waimai' });
 * undeployModel(ctx, 'qwen-ft');
 * ```
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../context.js';
import { hideServerPaths, parseOrThrow, WeitiaoError } from '../errors.js';
import { exportContent, listExports, retrieveExport, type ExportObject } from '../export/index.js';
import { retrieveModel } from '../models/index.js';
import {
  deleteDeployment,
  DeploymentBackend,
  DeploymentConfig,
  DeploymentState,
  getDeployment,
  listDeploymentRecords,
  putDeployment,
  type DeploymentRecord,
} from './internal/deployments.js';
import { loadDeployment, unloadDeployment } from './internal/router.js';

export { DeploymentBackend, DeploymentState } from './internal/deployments.js';

/** The body of `POST /v1/weitiao/models/{model}/deployment` (and `weitiao models deploy`'s flags). */
export const DeployParams = z.strictObject({
  backend: DeploymentBackend,
  /** llamacpp: contexts, each decoding `parallel` sequences; engine and vllm: 1. */
  replicas: z.number().int().min(1).max(16).default(1),
  /** llamacpp: sequences decoded together per replica (default 4). */
  parallel: z.number().int().min(1).max(64).nullish(),
  /** llamacpp: the GGUF file (the base model's, with `lora`); default: the model's latest succeeded GGUF export. */
  gguf: z.string().min(1).nullish(),
  /** llamacpp: a LoRA adapter GGUF on `gguf`. */
  lora: z.string().min(1).nullish(),
  /** llamacpp: a succeeded GGUF (or Ollama) export of this model, `export-…`. */
  export_id: z.string().min(1).nullish(),
  /** llamacpp: tokens per sequence (prompt + answer); default the model's context, at most 2048. */
  context_size: z.number().int().min(32).nullish(),
  /** llamacpp: threads per replica (default: 1 for a model under 64 MB, else the cores; env WEITIAO_LLAMA_THREADS). */
  threads: z.number().int().min(1).max(256).nullish(),
  /** vllm: the server's OpenAI base URL, e.g. http://gpu-box:8000/v1. */
  base_url: z.url({ protocol: /^https?$/ }).nullish(),
  /** vllm: the name the server serves the model under (default the model's id). */
  served_model: z.string().min(1).nullish(),
  /** vllm: the environment variable holding the server's API key. */
  api_key_env: z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]*$/)
    .nullish(),
});
export type DeployParams = z.input<typeof DeployParams>;

/** The wire object: a model's deployment. Files inside the home are shown relative to it. */
export const Deployment = z.object({
  object: z.literal('weitiao.deployment'),
  model: z.string(),
  backend: DeploymentBackend,
  replicas: z.number().int(),
  state: DeploymentState,
  error: z.string().nullable(),
  config: DeploymentConfig,
  created_at: z.number().int(),
  updated_at: z.number().int(),
});
export type Deployment = z.infer<typeof Deployment>;

function toWire(ctx: Context, record: DeploymentRecord, state = record.state): Deployment {
  const hide = (p: string | null) => (p ? hideServerPaths(p, ctx.home.root) : p);
  return {
    object: 'weitiao.deployment',
    model: record.model,
    backend: record.backend,
    replicas: record.replicas,
    state,
    error: record.error ? hideServerPaths(record.error, ctx.home.root) : null,
    config: { ...record.config, gguf: hide(record.config.gguf), lora: hide(record.config.lora) },
    created_at: record.created_at,
    updated_at: record.updated_at,
  };
}

/**
 * Deploys `model` (replacing its deployment), then loads it in this process: a llamacpp deployment is
 * `ready` once its GGUF loaded and its contexts exist; a load that fails leaves it `failed` and throws.
 */
export async function deployModel(ctx: Context, model: string, params: DeployParams): Promise<Deployment> {
  const p = parseOrThrow(DeployParams, params, { where: { en: 'deployment settings', zh: '部署参数' } });
  const registered = retrieveModel(ctx, model); // not_found before anything is stored
  const config = configFor(ctx, registered.id, registered.weitiao.base_model, p);
  await unloadDeployment(registered.id);
  const record = putDeployment(ctx, { model: registered.id, backend: p.backend, replicas: p.replicas, config, state: p.backend === 'llamacpp' ? 'loading' : 'ready' });
  if (record.backend === 'llamacpp') await loadDeployment(ctx, record);
  return toWire(ctx, getDeployment(ctx, registered.id)!);
}

/** Ends `model`'s deployment (it is served by the warm engine again); the answer shows it `stopped`. */
export async function undeployModel(ctx: Context, model: string): Promise<Deployment> {
  const record = getDeployment(ctx, model);
  if (!record) throw new WeitiaoError('not_found', `'${model}' has no deployment / '${model}' 没有部署`, { param: 'model' });
  deleteDeployment(ctx, model);
  await unloadDeployment(model);
  return toWire(ctx, record, 'stopped');
}

/** `model`'s deployment; `not_found` when it has none (it is served by the warm engine). */
export function retrieveDeployment(ctx: Context, model: string): Deployment {
  const record = getDeployment(ctx, model);
  if (!record) throw new WeitiaoError('not_found', `'${model}' has no deployment: the engine's warm process serves it / '${model}' 没有部署`, { param: 'model' });
  return toWire(ctx, record);
}

/** Every deployment by model id (for the models list). */
export function deploymentsByModel(ctx: Context): Map<string, Deployment> {
  return new Map(listDeploymentRecords(ctx).map((r) => [r.model, toWire(ctx, r)]));
}

/** The stored config for `params`: every check that needs no loading, and the GGUF found when none was named. */
function configFor(ctx: Context, model: string, baseModel: string | null, p: z.output<typeof DeployParams>): DeploymentConfig {
  const refuse = (param: string, why: string) => new WeitiaoError('invalid_request', why, { param });
  const llamaOnly = ['parallel', 'gguf', 'lora', 'export_id', 'context_size', 'threads'] as const;
  const vllmOnly = ['base_url', 'served_model', 'api_key_env'] as const;
  const misplaced = [...(p.backend === 'llamacpp' ? [] : llamaOnly), ...(p.backend === 'vllm' ? [] : vllmOnly)].find((k) => p[k] != null);
  if (misplaced) throw refuse(misplaced, `${misplaced} does not apply to the ${p.backend} backend / ${misplaced} 不适用于 ${p.backend} 后端`);
  if (p.backend !== 'llamacpp' && p.replicas !== 1) {
    throw refuse('replicas', `the ${p.backend} backend has one replica here (${p.backend === 'engine' ? 'one warm process' : 'scale the vLLM server itself'}) / 该后端只有一个副本`);
  }
  if (p.backend === 'engine') return DeploymentConfig.parse({});
  if (p.backend === 'vllm') {
    if (!p.base_url) throw refuse('base_url', 'a vllm deployment needs base_url (e.g. http://gpu-box:8000/v1) / vllm 部署须提供 base_url');
    return DeploymentConfig.parse({ base_url: p.base_url, served_model: p.served_model ?? model, api_key_env: p.api_key_env ?? null });
  }
  const files = ggufFiles(ctx, model, baseModel, p);
  for (const [param, file] of Object.entries(files)) {
    if (file && !(existsSync(file) && statSync(file).isFile())) throw refuse(param, `${file} is not a file / 文件不存在`);
  }
  return DeploymentConfig.parse({ ...files, parallel: p.parallel ?? 4, context_size: p.context_size ?? null, threads: p.threads ?? null });
}

/** The GGUF (and LoRA GGUF) a llamacpp deployment runs: given, from the named export, or the latest exports. */
function ggufFiles(
  ctx: Context,
  model: string,
  baseModel: string | null,
  p: z.output<typeof DeployParams>,
): { gguf: string; lora: string | null; export_id: string | null } {
  const abs = (f: string | null | undefined) => (f ? path.resolve(f) : null);
  if (p.export_id) {
    const e = retrieveExport(ctx, p.export_id);
    if (e.model !== model) throw new WeitiaoError('invalid_request', `${e.id} is an export of '${e.model}', not of '${model}' / 该导出不属于此模型`, { param: 'export_id' });
    if (e.status !== 'succeeded' || e.format === 'hf') {
      throw new WeitiaoError('invalid_request', `${e.id} is not a succeeded GGUF export (${e.format}, ${e.status}) / 不是成功的 GGUF 导出`, { param: 'export_id' });
    }
    const file = exportGguf(ctx, e);
    if (!e.adapter_only) return { gguf: file, lora: abs(p.lora), export_id: e.id };
    const base = abs(p.gguf) ?? (baseModel ? latestGguf(ctx, baseModel, false) : null);
    if (!base) throw noGguf(baseModel ?? model, 'gguf');
    return { gguf: base, lora: file, export_id: e.id };
  }
  if (p.gguf) return { gguf: abs(p.gguf)!, lora: abs(p.lora), export_id: null };
  if (p.lora) throw new WeitiaoError('invalid_request', 'lora needs the base model\'s GGUF in gguf / 使用 lora 时须同时提供基座 GGUF', { param: 'gguf' });
  const whole = latestExport(ctx, model, false);
  if (whole) return { gguf: exportGguf(ctx, whole), lora: null, export_id: whole.id };
  const adapter = latestExport(ctx, model, true);
  const base = baseModel ? latestGguf(ctx, baseModel, false) : null;
  if (adapter && base) return { gguf: base, lora: exportGguf(ctx, adapter), export_id: adapter.id };
  throw noGguf(model, 'gguf');
}

function noGguf(model: string, param: string): WeitiaoError {
  return new WeitiaoError(
    'invalid_request',
    `no GGUF for '${model}': export one first (\`weitiao export ${model} --format gguf --quantize q8_0\`) or pass gguf / ` +
      `'${model}' 还没有 GGUF：请先导出或指定 GGUF 文件`,
    { param },
  );
}

/** The newest succeeded GGUF/Ollama export of `model` (adapter-only or whole). */
function latestExport(ctx: Context, model: string, adapterOnly: boolean): ExportObject | null {
  const found = listExports(ctx, { model, limit: 100 })
    .data.filter((e) => e.status === 'succeeded' && e.format !== 'hf' && e.adapter_only === adapterOnly)
    .sort((a, b) => b.created_at - a.created_at);
  return found[0] ?? null;
}

function latestGguf(ctx: Context, model: string, adapterOnly: boolean): string | null {
  const e = latestExport(ctx, model, adapterOnly);
  return e ? exportGguf(ctx, e) : null;
}

/** The .gguf file of a GGUF export (the file itself) or an Ollama bundle (the .gguf in its folder). */
function exportGguf(ctx: Context, e: ExportObject): string {
  const content = exportContent(ctx, e.id);
  if (content.kind === 'file') return content.path;
  const gguf = readdirSync(content.path).find((f) => f.endsWith('.gguf'));
  if (!gguf) throw new WeitiaoError('not_found', `export ${e.id} has no .gguf file / 导出中没有 GGUF 文件`, { param: 'export_id' });
  return path.join(content.path, gguf);
}
