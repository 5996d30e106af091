/**
 * The web console's routes under `/v1/weitiao/` (docs/WEB.md): dataset preview, validation, preparation
 * and stats, the pre-launch estimate, and evaluations. Shells over the services: preview in
 * src/data/preview.ts, the data rules in src/data, the estimate is src/hyperparameters's `estimateRun` with the
 * explanations of src/hyperparameters/explain.ts, evaluations in src/eval/file-evaluation.ts. Errors leave through
 * the API's one error handler, which hides server paths.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../../context.js';
import { datasetStats, DataFormat, Encoding, prepareDataset, validateChatFile, type DatasetStats, type Issue } from '../../data/index.js';
import { isChatFile, previewDataset } from '../../data/preview.js';
import { cachedTokenDeps } from '../../data/token-cache.js';
import { LoraConfig } from '../../engine/protocol.js';
import { hideServerPaths, WeitiaoError } from '../../errors.js';
import { evaluateFile } from '../../eval/file-evaluation.js';
import { createFile, materializeFile, retrieveFile } from '../../files/index.js';
import { materializeModel, resolveModel, retrieveModel } from '../../models/index.js';
import { explainHyperparameters } from '../../hyperparameters/explain.js';
import { estimateRun } from '../../hyperparameters/estimate.js';
import { LoraSettings, RequestedHyperparameters, resolveHyperparameters } from '../../hyperparameters/index.js';
import type { ApiEnv } from '../internal/auth.js';
import type { RouteTable } from '../internal/routes.js';

const FileId = z.string().min(1);
const ModelId = z.string().min(1);
const Source = {
  file_id: FileId,
  format: DataFormat.optional(),
  encoding: Encoding.optional(),
  /** Column → chat turn templates with `{column}` placeholders; absent for a chat-format JSONL file. */
  mapping: z.strictObject({ system: z.string().optional(), user: z.string(), assistant: z.string() }).optional(),
  /** `1=好评,0=差评` or an object, applied to the assistant template's column. */
  label_map: z.union([z.string(), z.record(z.string(), z.string())]).optional(),
  label_column: z.string().optional(),
};
/** `limit` records from the one on (or after) 1-based line `from_line`: how a report's issue is shown in context. */
export const PreviewBody = z.strictObject({ ...Source, limit: z.number().int().min(1).max(50).default(5), from_line: z.number().int().min(1).optional() });
/** `model`: count tokens with its tokenizer (too-long examples are reported). */
export const ValidateBody = z.strictObject({ ...Source, model: ModelId.optional() });
export const PrepareBody = ValidateBody.extend({
  /** Share of examples for the validation file; 0 writes a training file only. */
  validation: z.number().min(0).lt(1).default(0.2),
  seed: z.number().int().default(42),
  /** `skip`: bad rows are left out and listed in `skipped` (file:line, reason); `error` stores nothing. */
  on_invalid: z.enum(['error', 'skip']).default('error'),
  /** Leave out near-duplicate examples (listed in `skipped` with the line kept). */
  dedupe: z.boolean().default(false),
  /** The name stem of the created files (`<stem>-train.jsonl`); defaults to the source file's. */
  name: z.string().regex(/^[\p{L}\p{N}._ -]{1,100}$/u).optional(),
});
export const StatsQuery = z.object({ model: ModelId.optional(), epochs: z.coerce.number().int().min(1).max(50).default(1) });
export const EstimateBody = z.strictObject({
  model: ModelId,
  training_file: FileId,
  validation_file: FileId.nullable().optional(),
  method: z.enum(['lora', 'qlora']).optional(),
  hyperparameters: RequestedHyperparameters.optional(),
  lora: LoraSettings.pick({ r: true, alpha: true }).optional(),
  max_seq_length: z.number().int().positive().optional(),
});
/** `compare_with`: a second model on the same file (e.g. the fine-tune's base); `max_examples`: the first N only. */
export const EvaluationBody = z.strictObject({ model: ModelId, file_id: FileId, compare_with: ModelId.optional(), max_examples: z.number().int().positive().optional() });

/** An error of a lookup, re-aimed at the request field that named it. */
async function forParam<T>(param: string, lookup: () => T | Promise<T>): Promise<T> {
  try {
    return await lookup();
  } catch (err) {
    const e = WeitiaoError.from(err);
    throw new WeitiaoError(e.code, e.message, { param, cause: err });
  }
}
/** A stored file and a local path of its bytes (downloaded first when they live in object storage only). */
const stored = (ctx: Context, id: string, param = 'file_id') =>
  forParam(param, async () => ({ file: retrieveFile(ctx, id), path: await materializeFile(ctx, id) }));
/** A registered model's base directory, downloaded first when only object storage has it (over HTTP a name is never a server path). */
const modelDir = (ctx: Context, model: string | undefined, param = 'model') =>
  model === undefined ? undefined : forParam(param, async () => (retrieveModel(ctx, model), (await materializeModel(ctx, model)).basePath));

/** Issues and stats name the uploaded file, never a server path. */
const publicIssue = (filename: string) => (i: Issue) => ({ ...i, file: filename, message: hideServerPaths(i.message) });
const publicReport = (r: { errors: Issue[]; warnings: Issue[] }, filename: string) => ({ errors: r.errors.map(publicIssue(filename)), warnings: r.warnings.map(publicIssue(filename)) });
const publicStats = ({ file: _, ...stats }: DatasetStats, file_id: string) => ({ ...stats, file_id });

/** prepareDataset writes files: into a scratch directory under the home's cache, removed afterwards. */
async function withScratch<T>(ctx: Context, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(ctx.home.cache, 'web-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const mappingOptions = (b: z.infer<typeof ValidateBody>) => ({
  ...(b.format ? { format: b.format } : {}),
  ...(b.encoding ? { encoding: b.encoding } : {}),
  ...(b.mapping ?? {}),
  ...(b.label_map !== undefined ? { label_map: b.label_map } : {}),
  ...(b.label_column !== undefined ? { label_column: b.label_column } : {}),
});

async function preview(ctx: Context, body: z.infer<typeof PreviewBody>) {
  const { file, path: filePath } = await stored(ctx, body.file_id);
  return { object: 'weitiao.dataset_preview' as const, file_id: file.id, filename: file.filename, ...(await previewDataset(filePath, file.filename, body)) };
}

/** A chat file's report as it is, or a table's as the mapping would convert it; with the stats of what is valid. */
async function validate(ctx: Context, body: z.infer<typeof ValidateBody>) {
  const { file, path: filePath } = await stored(ctx, body.file_id);
  const tokens = cachedTokenDeps(await modelDir(ctx, body.model));
  const answer = { object: 'weitiao.dataset_validation' as const, file_id: file.id };
  if (!body.mapping && (await isChatFile(filePath, body.format, body.encoding))) {
    const enc = body.encoding ? { encoding: body.encoding } : {};
    const report = await validateChatFile(filePath, enc, tokens);
    const stats = await datasetStats(filePath, enc, tokens);
    return { ...answer, examples: report.examples, valid_examples: report.valid_examples, label_set: report.label_set, report: publicReport(report, file.filename), stats: publicStats(stats, file.id) };
  }
  return withScratch(ctx, async (dir) => {
    const r = await prepareDataset({ input: filePath, output_dir: dir, ...mappingOptions(body) }, tokens);
    const stats = r.written && r.train ? publicStats(await datasetStats(r.train.file, {}, tokens), file.id) : null;
    return { ...answer, examples: r.rows, valid_examples: r.examples, label_set: r.label_set, report: publicReport(r, file.filename), stats };
  });
}

/** Converts (tables) or re-splits (chat files) and stores the train/validation files; with errors nothing is stored. */
async function prepare(ctx: Context, body: z.infer<typeof PrepareBody>) {
  const { file, path: filePath } = await stored(ctx, body.file_id);
  const tokens = cachedTokenDeps(await modelDir(ctx, body.model));
  const stem = body.name ?? (file.filename.replace(/\.[^.]+$/, '') || 'dataset');
  return withScratch(ctx, async (dir) => {
    const options = { validation: body.validation, seed: body.seed, on_invalid: body.on_invalid, dedupe: body.dedupe, train_file: `${stem}-train.jsonl`, validation_file: `${stem}-validation.jsonl` };
    const r = await prepareDataset({ input: filePath, output_dir: dir, ...mappingOptions(body), ...options }, tokens);
    const { rows, examples, label_set, stratified, seed, validation_fraction, skipped_rows } = r;
    const answer = { object: 'weitiao.dataset' as const, source_file: file.id, written: r.written, rows, examples, label_set, stratified, seed, validation_fraction };
    const reported = { ...answer, report: publicReport(r, file.filename), skipped_rows, skipped: r.skipped.map(publicIssue(file.filename)) };
    if (!r.written || !r.train) return { ...reported, training_file: null, validation_file: null, stats: null };
    const store = (f: string) => createFile(ctx, { source: f, filename: path.basename(f), purpose: 'fine-tune' });
    const training_file = await store(r.train.file);
    const validation_file = r.validation ? await store(r.validation.file) : null;
    const stats = publicStats(await datasetStats(r.train.file, {}, tokens), training_file.id);
    return { ...reported, training_file, validation_file, train_label_counts: r.train.label_counts, validation_label_counts: r.validation?.label_counts ?? null, stats };
  });
}

/** Starting the engine and loading the model, before the first step (added to the estimate's training time). */
const STARTUP_SECONDS = 15;

/**
 * src/hyperparameters's `estimateRun` (the one engine estimate: `weitiao estimate` and a job's dry run give the same)
 * on `auto` resolved by `resolveHyperparameters` (the worker's rules), each value explained. Not planJob:
 * its file validation is one more uncached tokenizer run per file, and the console asks at every edit.
 */
async function estimate(ctx: Context, body: z.infer<typeof EstimateBody>, signal: AbortSignal) {
  const method = body.method ?? 'lora';
  const tokens = cachedTokenDeps(await modelDir(ctx, body.model));
  const train = await stored(ctx, body.training_file, 'training_file');
  const valid = body.validation_file ? await stored(ctx, body.validation_file, 'validation_file') : null;
  const stats = await datasetStats(train.path, body.max_seq_length ? { max_length: body.max_seq_length } : {}, tokens);
  if (stats.examples === 0) {
    throw new WeitiaoError('invalid_file', `${train.file.filename} has no valid chat examples: validate it first / 训练文件中没有有效的对话样本`, { param: 'training_file' });
  }
  const validStats = valid ? await datasetStats(valid.path, {}, tokens) : null;
  const n = stats.examples;
  const hp = resolveHyperparameters({ n_examples: n, requested: body.hyperparameters ?? {}, method });
  const { r, alpha } = LoraConfig.parse(body.lora ?? {});
  const engineHp = { n_epochs: hp.n_epochs, batch_size: hp.batch_size, ...(body.max_seq_length ? { max_seq_length: body.max_seq_length } : {}) };
  const e = await estimateRun(ctx, { model: body.model, training_file: body.training_file, method, hyperparameters: engineHp, lora: { r, alpha } }, { signal });
  const notes = [
    `Memory and time from the engine's estimate on this machine: ${e.steps_per_epoch} steps per epoch, ${e.threads} threads; validation passes are not included / 内存与时间为训练引擎在本机的预估（不含验证）`,
    ...(e.n_truncated ? [`${e.n_truncated} examples will be truncated to max_seq_length / ${e.n_truncated} 条样本将被截断`] : []),
    ...(stats.over_max_length ? [`${stats.over_max_length} examples are longer than ${stats.max_length} tokens / ${stats.over_max_length} 个样本超过最大长度`] : []),
  ];
  const lr = { r, alpha, r_set: body.lora?.r !== undefined, alpha_set: body.lora?.alpha !== undefined };
  const hyperparameters = explainHyperparameters({ n_examples: n, hyperparameters: hp, requested_batch_size: body.hyperparameters?.batch_size, method, lora: lr, trainable_parameters: e.trainable_parameters });
  return {
    object: 'weitiao.estimate' as const,
    model: body.model,
    method,
    examples: n,
    validation_examples: validStats?.examples ?? null,
    tokens_per_example: stats.tokens_per_example,
    label_set: stats.label_set,
    hyperparameters,
    total_steps: hp.estimated_total_steps,
    // Trained tokens as OpenAI counts them: every token of every example, once per epoch.
    trained_tokens: stats.total_tokens * hp.n_epochs,
    tokens_per_second: Math.round(e.tokens_per_epoch / e.time_per_epoch_seconds),
    throughput_source: 'estimate' as const,
    estimated_seconds: Math.round(STARTUP_SECONDS + e.total_seconds),
    estimated_memory_bytes: e.peak_memory_bytes,
    estimate: e,
    notes,
  };
}

async function evaluate(ctx: Context, body: z.infer<typeof EvaluationBody>, signal: AbortSignal) {
  const { file, path: filePath } = await stored(ctx, body.file_id);
  await forParam('model', () => resolveModel(ctx, body.model)); // evaluateFile downloads what object storage holds
  if (body.compare_with !== undefined) await forParam('compare_with', () => resolveModel(ctx, body.compare_with!));
  return evaluateFile(ctx, { file: { id: file.id, path: filePath }, model: body.model, compare_with: body.compare_with, max_examples: body.max_examples, signal });
}

// What each route answers, for the console's `import type` (web/src/api.ts): inferred from the code that builds it.
export type PreviewResponse = Awaited<ReturnType<typeof preview>>;
export type ValidateResponse = Awaited<ReturnType<typeof validate>>;
export type PrepareResponse = Awaited<ReturnType<typeof prepare>>;
export type EstimateResponse = Awaited<ReturnType<typeof estimate>>;
export type EvaluationResponse = Awaited<ReturnType<typeof evaluate>>;

/** Declared in the API's route table: `/openapi.json` documents them, and they sit behind the same key check. */
export function consoleRoutes(routes: RouteTable<ApiEnv>, ctx: Context): void {
  const base = '/v1/weitiao';
  const spec = (path: string, operationId: string, summary: string, object: string) => ({
    path: `${base}/${path}`,
    operationId,
    summary,
    tag: 'Console (weitiao)',
    response: { description: `\`${object}\` (docs/WEB.md)` },
  });
  const post = <B extends z.ZodType>(body: B, ...s: Parameters<typeof spec>) => ({ method: 'post' as const, body, ...spec(...s) });

  routes.add(
    post(PreviewBody, 'datasets/preview', 'weitiao_preview_dataset', 'The first records of an uploaded CSV/TSV/JSONL file as chat examples, with a suggested column mapping', 'weitiao.dataset_preview'),
    async (c, { body }) => c.json(await preview(ctx, body)),
  );
  routes.add(
    post(ValidateBody, 'datasets/validate', 'weitiao_validate_dataset', 'Validate an uploaded file as chat examples: every error and warning with its line and field', 'weitiao.dataset_validation'),
    async (c, { body }) => c.json(await validate(ctx, body)),
  );
  routes.add(
    post(PrepareBody, 'datasets/prepare', 'weitiao_prepare_dataset', 'Map, validate and split an uploaded file into stored training and validation chat files', 'weitiao.dataset_prepared'),
    async (c, { body }) => c.json(await prepare(ctx, body)),
  );
  routes.add(
    { method: 'get', params: z.object({ file_id: FileId }), query: StatsQuery, ...spec('datasets/:file_id/stats', 'weitiao_dataset_stats', 'Token and label statistics of a stored chat file', 'weitiao.dataset_stats') },
    async (c, { params, query }) => {
      const { file, path: filePath } = await stored(ctx, params.file_id);
      const stats = await datasetStats(filePath, { epochs: query.epochs }, cachedTokenDeps(await modelDir(ctx, query.model)));
      return c.json({ object: 'weitiao.dataset_stats', ...publicStats(stats, file.id) });
    },
  );
  // The client going away stops the engine (its signal aborts the estimate or the evaluation).
  routes.add(
    post(EstimateBody, 'estimate', 'weitiao_estimate', "What a job would do before launching it: `auto` resolved and explained, steps, tokens, and the engine's memory and time estimate", 'weitiao.estimate'),
    async (c, { body }) => c.json(await estimate(ctx, body, c.req.raw.signal)),
  );
  routes.add(
    post(EvaluationBody, 'evaluations', 'weitiao_create_evaluation', 'Evaluate a model (or two side by side) on a stored chat file: accuracy, confusion matrix, misclassified examples', 'weitiao.evaluation_result'),
    async (c, { body }) => c.json(await evaluate(ctx, body, c.req.raw.signal)),
  );
}
