/** The export's wire objects and their shaping from a stored record (home-relative paths only). */
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../context.js';
import type { ExportResult, GgufQuantization } from '../engine/index.js';
import type { CheckReport } from './internal/check.js';
import type * as repo from './internal/repository.js';

export const ExportFormat = z.enum(['hf', 'gguf', 'ollama']);
export type ExportFormat = z.infer<typeof ExportFormat>;
export const ExportStatus = z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']);

export const Difference = z.object({ index: z.number().int(), prompt: z.string(), expected: z.string(), engine: z.string(), artifact: z.string() });

/** The post-export check's report (see internal/check.ts). */
export const CheckReportSchema = z.object({
  status: z.enum(['passed', 'failed', 'skipped']),
  reason: z.string(),
  data: z.string().nullable(),
  n: z.number().int(),
  mode: z.enum(['labels', 'generation']).nullable(),
  labels: z.array(z.string()).nullable(),
  agreement: z.number().nullable(),
  threshold: z.number(),
  engine: z.object({ backend: z.literal('engine'), accuracy: z.number().nullable() }),
  artifact: z.object({ backend: z.enum(['llama.cpp', 'engine']), accuracy: z.number().nullable() }),
  first_difference: Difference.nullable(),
  template: z
    .object({
      status: z.enum(['passed', 'failed']),
      first_difference: z.object({ index: z.number().int(), jinja: z.string(), ollama: z.string() }).nullable(),
    })
    .nullable(),
  seconds: z.number(),
}) satisfies z.ZodType<CheckReport>;

/** The wire object. Paths are relative to the home (null when the export was written outside it). */
export const ExportObject = z.object({
  id: z.string(),
  object: z.literal('weitiao.export'),
  model: z.string(),
  format: ExportFormat,
  quantize: z.string().nullable(),
  adapter_only: z.boolean(),
  status: ExportStatus,
  progress: z.object({ phase: z.string(), current: z.number(), total: z.number() }).nullable(),
  path: z.string().nullable(),
  files: z.array(z.object({ name: z.string(), bytes: z.number().int(), sha256: z.string() })).nullable(),
  artifact: z
    .object({
      architecture: z.string(),
      parameters: z.number().int(),
      context_length: z.number().int(),
      stop_tokens: z.array(z.string()),
    })
    .nullable(),
  /** Ollama exports: the Modelfile's name and the one command that imports the bundle. */
  ollama: z.object({ modelfile: z.string(), command: z.string() }).nullable(),
  check: CheckReportSchema.nullable(),
  error: z.object({ code: z.string(), message: z.string(), param: z.string().nullable() }).nullable(),
  created_at: z.number().int(),
  finished_at: z.number().int().nullable(),
});
export type ExportObject = z.infer<typeof ExportObject>;

export interface CreateExportOptions {
  /** A model id (base, fine-tuned or checkpoint) or a local model directory. */
  model: string;
  format: ExportFormat;
  /** gguf/ollama: the GGUF type (default f16). */
  quantize?: GgufQuantization;
  /** Only the LoRA adapter (hf: the PEFT folder; gguf: a LoRA GGUF). */
  adapterOnly?: boolean;
  /** Where the files go (default `<home>/exports/<id>`); the API never sets it. */
  outputDir?: string;
  /** Run the post-export check (default true). */
  check?: boolean;
  /** The check's data: a chat JSONL path or a `file-…` id (default the training job's validation file). */
  checkData?: string;
  /** At most this many examples (default 200). */
  checkMaxExamples?: number;
  /** Agreement below this fails the export (default by type: 0.99 for f32/f16/bf16/q8_0 and hf). */
  checkThreshold?: number;
}

export interface StoredOptions {
  adapter_only: boolean;
  check: boolean;
  check_data: string | null;
  check_max_examples: number;
  check_threshold: number;
  runner_pid?: number;
}

/** `ollama create <name> -f Modelfile`, with the model id made an Ollama name. */
export function ollamaCommand(model: string): string {
  const name = model.toLowerCase().replace(/^ft:/, '').replace(/[^a-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '') || 'weitiao-model';
  return `ollama create ${name} -f Modelfile`;
}

/** A path for the wire: relative to the home, or null outside it (never an absolute server path). */
export function homeRelative(ctx: Context, p: string | null): string | null {
  if (!p) return null;
  const rel = path.relative(ctx.home.root, p);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel.split(path.sep).join('/') : null;
}

export function toWire(ctx: Context, r: repo.ExportRecord): ExportObject {
  const result = r.result as ExportResult | null;
  const options = r.options as unknown as StoredOptions;
  return {
    id: r.id,
    object: 'weitiao.export',
    model: r.model,
    format: r.format,
    quantize: r.quantize,
    adapter_only: options.adapter_only ?? false,
    status: r.status,
    progress: r.progress,
    path: homeRelative(ctx, r.path),
    files: result?.files ?? null,
    artifact: result
      ? { architecture: result.architecture, parameters: result.parameters, context_length: result.context_length, stop_tokens: result.stop_tokens }
      : null,
    ollama: r.format === 'ollama' ? { modelfile: 'Modelfile', command: ollamaCommand(r.model) } : null,
    check: (r.check as unknown as CheckReport | null) ?? null,
    error: r.error,
    created_at: r.created_at,
    finished_at: r.finished_at,
  };
}
