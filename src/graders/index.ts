/**
 * Graders: validate and run OpenAI-shaped graders through the engine's one implementation
 * (engine/weitiao_engine/graders), the same code that scores reinforcement fine-tuning and evaluations.
 *
 * ```ts
 * const grader = await validateGrader(ctx, json);                       // 400-style errors name the field
 * const [result] = await runGrader(ctx, grader, [{ model_sample: '好评', item: { label: '好评' } }]);
 * result.reward; // 1
 * ```
 * Configuration: `WEITIAO_JUDGE_BASE_URL` / `WEITIAO_JUDGE_API_KEY` (the OpenAI-compatible endpoint of
 * score_model judges; a grader's own `weitiao.base_url` wins, and the API server offers itself when neither
 * is set), `WEITIAO_EMBEDDING_MODEL` (a model id or folder for cosine; else the first registered base model
 * that is a sentence-embedding model).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { runEngine, type GraderRunResult, type RunEngineOptions } from '../engine/index.js';
import { parseOrThrow } from '../errors.js';
import { listModels, resolveModel } from '../models/index.js';
import { Grader } from './schema.js';

export * from './schema.js';
export type { GraderRunResult };

export interface JudgeSettings {
  /** An OpenAI-compatible base URL ending in `/v1`. */
  base_url?: string | null;
  api_key?: string | null;
}

export interface GraderOptions {
  /** The judge to use when neither the grader nor WEITIAO_JUDGE_BASE_URL names one (the API server passes itself). */
  defaultJudge?: JudgeSettings;
  /** Log lines from the engine (each failed sample's reason). */
  onLog?: (message: string) => void;
  signal?: AbortSignal;
}

/** A grader's JSON checked against OpenAI's shapes; `invalid_request` naming the first field at fault. */
export function parseGrader(json: unknown, param = 'grader'): Grader {
  // The field as the user wrote it: `graders.b.operation` → `grader.graders.b.operation`.
  return parseOrThrow(Grader, json, { where: { en: 'grader', zh: '评分器' }, param });
}

/** The folder of the sentence-embedding model cosine uses, or null when none is registered. */
export function embeddingModel(ctx: Context): string | null {
  const configured = process.env.WEITIAO_EMBEDDING_MODEL;
  if (configured) return resolveModel(ctx, configured).basePath;
  for (const model of listModels(ctx, { kind: 'base' }).data) {
    const dir = model.weitiao.path;
    // sentence-transformers folders say what they are; so can a registry entry's metadata
    if (model.weitiao.metadata.embedding === true || existsSync(path.join(dir, 'config_sentence_transformers.json')) || existsSync(path.join(dir, 'modules.json'))) {
      return dir;
    }
  }
  return null;
}

function judgeSettings(defaultJudge?: JudgeSettings): { base_url: string | null; api_key: string | null } {
  const base = process.env.WEITIAO_JUDGE_BASE_URL;
  if (base) return { base_url: base, api_key: process.env.WEITIAO_JUDGE_API_KEY ?? null };
  return { base_url: defaultJudge?.base_url ?? null, api_key: defaultJudge?.api_key ?? null };
}

function engineOptions(options: GraderOptions): RunEngineOptions {
  return {
    signal: options.signal,
    onEvent: (e) => {
      if (e.type === 'log') options.onLog?.(e.message);
    },
  };
}

/**
 * Every check that needs no sample: OpenAI's shapes, template syntax, the calculate_output formula and its
 * names, python source that compiles and defines grade(), cosine's embedding model; with `itemsFile`
 * (JSONL), that every line fills the grader's `{{item.x}}` templates (`invalid_file` naming file:line and field).
 */
export async function validateGrader(ctx: Context, json: unknown, options: GraderOptions & { itemsFile?: string } = {}): Promise<Grader> {
  const grader = parseGrader(json);
  await runEngine(
    'grade',
    { grader, items_file: options.itemsFile ? path.resolve(options.itemsFile) : null, embedding_model: embeddingModel(ctx) },
    engineOptions(options),
  );
  return grader;
}

export interface GradeInput {
  model_sample: string;
  item?: Record<string, unknown>;
}

/** One result per sample in OpenAI's graders/run shape; a failing grader scores 0 with its error flags, it never throws for a sample. */
export async function runGrader(ctx: Context, json: unknown, samples: GradeInput[], options: GraderOptions = {}): Promise<GraderRunResult[]> {
  const grader = parseGrader(json);
  const result = await runEngine(
    'grade',
    {
      grader,
      samples: samples.map((s) => ({ model_sample: s.model_sample, item: s.item ?? {} })),
      judge: judgeSettings(options.defaultJudge),
      embedding_model: embeddingModel(ctx),
    },
    engineOptions(options),
  );
  return result.results;
}
