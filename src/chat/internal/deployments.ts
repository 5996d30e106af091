/** The `deployments` table (migration 2): every SQL statement about deployments lives here. */
import { z } from 'zod';
import type { Context } from '../../context.js';
import { now } from '../../store/index.js';

export const DeploymentBackend = z.enum(['engine', 'llamacpp', 'vllm']);
export type DeploymentBackend = z.infer<typeof DeploymentBackend>;

export const DeploymentState = z.enum(['ready', 'loading', 'failed', 'stopped']);
export type DeploymentState = z.infer<typeof DeploymentState>;

/** The `config` column: what the backend needs, one field per setting (unused ones null). */
export const DeploymentConfig = z.object({
  /** llamacpp: the model's GGUF, or the base model's GGUF under a LoRA adapter. */
  gguf: z.string().nullable().default(null),
  /** llamacpp: the LoRA adapter GGUF applied on `gguf`. */
  lora: z.string().nullable().default(null),
  /** llamacpp: the export the GGUF came from, when it came from one. */
  export_id: z.string().nullable().default(null),
  /** llamacpp: sequences decoded together per replica. */
  parallel: z.number().int().positive().default(4),
  /** llamacpp: tokens per sequence (prompt + answer); null = the model's, at most 2048. */
  context_size: z.number().int().positive().nullable().default(null),
  /** llamacpp: threads per replica; null = WEITIAO_LLAMA_THREADS, else 1 for a model under 64 MB, else the cores. */
  threads: z.number().int().positive().nullable().default(null),
  /** vllm: the OpenAI-compatible server's base URL, e.g. http://gpu-box:8000/v1. */
  base_url: z.string().nullable().default(null),
  /** vllm: the model name the server knows it by (vllm serve's --served-model-name or a --lora-modules name). */
  served_model: z.string().nullable().default(null),
  /** vllm: the environment variable holding the server's API key (the key itself is never stored). */
  api_key_env: z.string().nullable().default(null),
});
export type DeploymentConfig = z.infer<typeof DeploymentConfig>;

export interface DeploymentRecord {
  model: string;
  backend: DeploymentBackend;
  replicas: number;
  config: DeploymentConfig;
  state: DeploymentState;
  error: string | null;
  created_at: number;
  updated_at: number;
}

interface Row {
  model: string;
  backend: string;
  replicas: number;
  config: string;
  state: string;
  error: string | null;
  created_at: number;
  updated_at: number;
}

function toRecord(row: Row): DeploymentRecord {
  let config: DeploymentConfig;
  try {
    config = DeploymentConfig.parse(JSON.parse(row.config));
  } catch {
    config = DeploymentConfig.parse({}); // a hand-edited row must not break every model listing
  }
  return {
    model: row.model,
    backend: DeploymentBackend.catch('engine').parse(row.backend),
    replicas: row.replicas,
    config,
    state: DeploymentState.catch('failed').parse(row.state),
    error: row.error,
    created_at: row.created_at,
    updated_at: row.updated_at,
  };
}

export function getDeployment(ctx: Context, model: string): DeploymentRecord | null {
  const row = ctx.db.prepare('SELECT * FROM deployments WHERE model = ?').get(model) as Row | undefined;
  return row ? toRecord(row) : null;
}

export function listDeploymentRecords(ctx: Context): DeploymentRecord[] {
  return (ctx.db.prepare('SELECT * FROM deployments ORDER BY created_at, model').all() as Row[]).map(toRecord);
}

/** Creates or replaces `model`'s deployment (keeping its creation time); `updated_at` always moves forward. */
export function putDeployment(
  ctx: Context,
  input: { model: string; backend: DeploymentBackend; replicas: number; config: DeploymentConfig; state: DeploymentState },
): DeploymentRecord {
  const previous = getDeployment(ctx, input.model);
  const t = Math.max(now(), (previous?.updated_at ?? 0) + 1);
  ctx.db
    .prepare(
      `INSERT INTO deployments (model, backend, replicas, config, state, error, created_at, updated_at)
       VALUES (@model, @backend, @replicas, @config, @state, NULL, @t, @t)
       ON CONFLICT(model) DO UPDATE SET backend = excluded.backend, replicas = excluded.replicas, config = excluded.config,
         state = excluded.state, error = NULL, updated_at = excluded.updated_at`,
    )
    .run({ ...input, config: JSON.stringify(input.config), t });
  return getDeployment(ctx, input.model)!;
}

/** Records a state change of the deployment whose version is `updatedAt` (a newer deployment is left alone). */
export function setDeploymentState(ctx: Context, model: string, updatedAt: number, state: DeploymentState, error: string | null = null): void {
  ctx.db.prepare('UPDATE deployments SET state = ?, error = ? WHERE model = ? AND updated_at = ?').run(state, error, model, updatedAt);
}

export function deleteDeployment(ctx: Context, model: string): boolean {
  return ctx.db.prepare('DELETE FROM deployments WHERE model = ?').run(model).changes > 0;
}
