/**
 * Exports: a model written for use outside weitiao (a Hugging Face folder, a GGUF file, an Ollama bundle),
 * as a tracked background task, followed by the post-export check (internal/check.ts).
 *
 * ```ts
 * const exp = createExport(ctx, { model: 'ft:tiny:waimai:abc', format: 'gguf', quantize: 'q8_0' });
 * const done = await waitForExport(ctx, exp.id, (e) => console.log(e.progress));
 * done.check?.status; // 'passed'
 * ```
 * Exports run one at a time in the process that created them, after `createExport` returns. An export
 * found `running` whose process is gone is marked failed (`recoverExports`).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Context } from '../context.js';
import { runEngine, GgufQuantization, type ExportResult } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { fileContentPath } from '../files/index.js';
import { retrieveJob } from '../jobs/index.js';
import { llamaLibraryPath } from '../llamacpp/index.js';
import { resolveModel, retrieveModel } from '../models/index.js';
import { listPage, newId, type ListPage } from '../store/index.js';
import { runCheck, skippedCheck, type CheckReport } from './internal/check.js';
import { modelfile, ollamaTemplate } from './internal/ollama.js';
import * as repo from './internal/repository.js';

export type { CheckReport } from './internal/check.js';
export { tarDirectory } from './internal/tar.js';

export const ExportFormat = z.enum(['hf', 'gguf', 'ollama']);
export type ExportFormat = z.infer<typeof ExportFormat>;
export const ExportStatus = z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']);

const Difference = z.object({ index: z.number().int(), prompt: z.string(), expected: z.string(), engine: z.string(), artifact: z.string() });

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

interface StoredOptions {
  adapter_only: boolean;
  check: boolean;
  check_data: string | null;
  check_max_examples: number;
  check_threshold: number;
  runner_pid?: number;
}

/** Default agreement threshold: near-lossless types must agree almost always, 4/5-bit ones less. */
export function defaultThreshold(format: ExportFormat, quantize: string | null): number {
  if (format === 'hf' || !quantize || ['f32', 'f16', 'bf16', 'q8_0'].includes(quantize)) return 0.99;
  if (quantize === 'q6_k') return 0.95;
  if (/^q[45]/.test(quantize)) return 0.9;
  return 0.8;
}

/** Queues an export and starts it in this process once the caller has its answer. */
export function createExport(ctx: Context, options: CreateExportOptions): ExportObject {
  const format = ExportFormat.parse(options.format);
  const resolved = resolveModel(ctx, options.model); // not_found before anything is queued
  const adapterOnly = options.adapterOnly ?? false;
  if (adapterOnly && !resolved.adapterPath) {
    throw new WeitiaoError('invalid_request', `'${options.model}' has no LoRA adapter to export on its own / 该模型没有可单独导出的 LoRA 适配器`, {
      param: 'adapter_only',
    });
  }
  if (adapterOnly && format === 'ollama') {
    throw new WeitiaoError('invalid_request', 'an Ollama bundle holds a whole model, not an adapter / Ollama 格式须导出完整模型', { param: 'adapter_only' });
  }
  if (format === 'hf' && options.quantize) {
    throw new WeitiaoError('invalid_request', 'quantize applies to gguf and ollama exports / quantize 仅适用于 gguf 与 ollama', { param: 'quantize' });
  }
  const quantize = format === 'hf' ? null : GgufQuantization.parse(options.quantize ?? 'f16');
  const maxExamples = options.checkMaxExamples ?? 200;
  if (!Number.isInteger(maxExamples) || maxExamples < 1) {
    throw new WeitiaoError('invalid_request', 'check_max_examples must be a positive integer / 须为正整数', { param: 'check_max_examples' });
  }
  const threshold = options.checkThreshold ?? defaultThreshold(format, quantize);
  if (!(threshold >= 0 && threshold <= 1)) {
    throw new WeitiaoError('invalid_request', 'check_threshold must be between 0 and 1 / 阈值须在 0 到 1 之间', { param: 'check_threshold' });
  }
  if (options.checkData) locateData(ctx, options.checkData);

  const id = newId('export');
  const out = path.resolve(options.outputDir ?? path.join(ctx.home.root, 'exports', id));
  if (options.outputDir) requireReplaceable(out);
  const stored: StoredOptions = {
    adapter_only: adapterOnly,
    check: options.check ?? true,
    check_data: options.checkData ?? null,
    check_max_examples: maxExamples,
    check_threshold: threshold,
  };
  const record = repo.insertExport(ctx, { id, model: resolved.id, format, quantize, options: { ...stored }, path: out });
  setImmediate(() => runnerFor(ctx).kick());
  return toWire(ctx, record);
}

export function retrieveExport(ctx: Context, id: string): ExportObject {
  return toWire(ctx, requireExport(ctx, id));
}

export function listExports(ctx: Context, params: { model?: string; after?: string; limit?: number } = {}): ListPage<ExportObject> {
  const limit = params.limit ?? 20;
  const page = repo.pageExports(ctx, { model: params.model, after: params.after, limit });
  if (!page) throw notFound(params.after!, 'after');
  return listPage(page.rows.map((r) => toWire(ctx, r)), page.has_more);
}

/** Cancels a queued or running export (a running one's engine is stopped); `conflict` once it has ended. */
export function cancelExport(ctx: Context, id: string): ExportObject {
  const record = requireExport(ctx, id);
  if (!['queued', 'running'].includes(record.status)) {
    throw new WeitiaoError('conflict', `export ${id} has already ${record.status} / 导出已结束（${record.status}）`, { param: 'export_id' });
  }
  repo.finishExport(ctx, id, 'cancelled');
  runnerFor(ctx).abort(id);
  return retrieveExport(ctx, id);
}

// The files a GGUF/Ollama export writes: a folder holding only these may be exported over again.
const GGUF_EXPORT_FILES = new Set(['model.gguf', 'adapter.gguf', 'Modelfile', 'README.md']);

/**
 * The engine replaces the output folder as a whole, so `-o` must name a new or empty folder, or an earlier
 * GGUF/Ollama export: never a folder with someone's other files in it.
 */
function requireReplaceable(dir: string): void {
  if (!existsSync(dir)) return;
  const entries = statSync(dir).isDirectory() ? readdirSync(dir) : null;
  if (entries && entries.every((name) => GGUF_EXPORT_FILES.has(name))) return;
  throw new WeitiaoError(
    'conflict',
    `${dir} exists and holds other files; the export replaces its folder as a whole: choose a new or empty folder / ${dir} 已存在且含有其他文件，导出会整体替换该目录，请换一个新的或空目录`,
    { param: 'output_dir' },
  );
}

/** Resolves when the export has ended, calling `onUpdate` as its progress changes. */
export async function waitForExport(ctx: Context, id: string, onUpdate?: (e: ExportObject) => void, pollMs = 250): Promise<ExportObject> {
  let last = '';
  for (;;) {
    const e = retrieveExport(ctx, id);
    const key = JSON.stringify([e.status, e.progress]);
    if (key !== last) onUpdate?.(e);
    last = key;
    if (!['queued', 'running'].includes(e.status)) return e;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/**
 * Runs the post-export check again on the export's files as they are now (after a hand edit, or with
 * other data) and records its verdict: a failed check marks the export failed, a passed one succeeded.
 */
export async function checkExport(
  ctx: Context,
  id: string,
  options: { checkData?: string; checkMaxExamples?: number; checkThreshold?: number; signal?: AbortSignal } = {},
): Promise<ExportObject> {
  const record = requireExport(ctx, id);
  if (!['succeeded', 'failed'].includes(record.status) || !record.result) {
    throw new WeitiaoError('conflict', `export ${id} has no finished files to check (${record.status}) / 导出尚未完成`, { param: 'export_id' });
  }
  const stored = record.options as unknown as StoredOptions;
  const options2: StoredOptions = {
    ...stored,
    check: true,
    check_data: options.checkData ?? stored.check_data,
    check_max_examples: options.checkMaxExamples ?? stored.check_max_examples,
    check_threshold: options.checkThreshold ?? stored.check_threshold,
  };
  const result = record.result as ExportResult;
  const ollama = record.format === 'ollama' ? ollamaFacts(ctx, record.model, result) : undefined;
  const check = await postExportCheck(ctx, record, options2, resolveModel(ctx, record.model), result, ollama, () => {}, options.signal ?? new AbortController().signal);
  repo.setCheck(ctx, id, check as unknown as Record<string, unknown>);
  repo.setOutcome(ctx, id, check.status === 'failed' ? 'failed' : 'succeeded', check.status === 'failed' ? checkError(check) : null);
  return retrieveExport(ctx, id);
}

function checkError(check: CheckReport): repo.ExportError {
  return { code: 'unprocessable', message: `post-export check failed: ${check.reason} / 导出检查未通过`, param: null };
}

function ollamaFacts(ctx: Context, model: string, result: ExportResult) {
  return { template: ollamaTemplate(result.chat_template ?? ''), system: trainingSystemPrompt(ctx, model), chatTemplate: result.chat_template ?? '' };
}

/** Marks exports left `running` by a process that is gone as failed. Returns their ids. */
export function recoverExports(ctx: Context): string[] {
  const lost = repo.runningExports(ctx).filter((r) => r.pid !== process.pid && !alive(r.pid));
  for (const r of lost) {
    repo.finishExport(ctx, r.id, 'failed', {
      code: 'engine_error',
      message: 'the process running this export stopped before it finished; export again / 运行此导出的进程已退出，请重新导出',
      param: null,
    });
  }
  return lost.map((r) => r.id);
}

/** What `/content` sends: the .gguf itself for a GGUF export, else the folder (as a tar). */
export function exportContent(ctx: Context, id: string): { kind: 'file' | 'directory'; path: string; name: string } {
  const record = requireExport(ctx, id);
  if (record.status !== 'succeeded' && !(record.status === 'failed' && record.result)) {
    throw new WeitiaoError('conflict', `export ${id} has no files (${record.status}) / 导出尚无文件`, { param: 'export_id' });
  }
  const result = record.result as ExportResult | null;
  if (!result || !existsSync(result.path)) throw new WeitiaoError('not_found', `the files of export ${id} are gone / 导出的文件已不存在`, { param: 'export_id' });
  if (record.format === 'gguf' && statSync(result.path).isFile()) return { kind: 'file', path: result.path, name: path.basename(result.path) };
  const dir = statSync(result.path).isFile() ? path.dirname(result.path) : result.path;
  return { kind: 'directory', path: dir, name: id };
}

// ------------------------------------------------------------------------------------------- the runner

class Runner {
  private running: Promise<void> | null = null;
  private readonly controllers = new Map<string, AbortController>();

  constructor(private readonly ctx: Context) {
    recoverExports(ctx);
  }

  kick(): void {
    this.running ??= (async () => {
      try {
        for (let next = repo.nextQueued(this.ctx); next; next = repo.nextQueued(this.ctx)) {
          if (!repo.markRunning(this.ctx, next.id, process.pid)) continue;
          const controller = new AbortController();
          this.controllers.set(next.id, controller);
          try {
            await runExport(this.ctx, repo.getExport(this.ctx, next.id)!, controller.signal);
          } finally {
            this.controllers.delete(next.id);
          }
        }
      } catch {
        /* the store closed under us (tests, shutdown): nothing left to record into */
      } finally {
        this.running = null;
      }
    })();
  }

  abort(id: string): void {
    this.controllers.get(id)?.abort();
  }
}

const runners = new WeakMap<Context, Runner>();
function runnerFor(ctx: Context): Runner {
  let r = runners.get(ctx);
  if (!r) runners.set(ctx, (r = new Runner(ctx)));
  return r;
}

async function runExport(ctx: Context, record: repo.ExportRecord, signal: AbortSignal): Promise<void> {
  const options = record.options as unknown as StoredOptions;
  const progress = (phase: string, current: number, total: number) => repo.setProgress(ctx, record.id, { phase, current, total });
  try {
    const resolved = resolveModel(ctx, record.model);
    mkdirSync(path.dirname(record.path!), { recursive: true });
    progress('export', 0, 1);
    const result = await runEngine(
      'export',
      {
        model: resolved.basePath,
        adapter: resolved.adapterPath,
        format: record.format === 'hf' ? 'hf' : 'gguf',
        output_dir: record.path!,
        quantize: (record.quantize ?? 'f16') as GgufQuantization,
        adapter_only: options.adapter_only,
        llama_library: llamaLibraryPath(),
        name: record.model,
      },
      { signal, onEvent: (e) => e.type === 'progress' && progress(`export: ${e.phase}`, e.current, e.total) },
    );
    repo.setResult(ctx, record.id, result);

    let ollama: { template: string; system: string | null; chatTemplate: string } | undefined;
    if (record.format === 'ollama') {
      const system = trainingSystemPrompt(ctx, record.model);
      const dir = path.dirname(result.path);
      const text = modelfile({ chatTemplate: result.chat_template, stopTokens: result.stop_tokens, system, gguf: path.basename(result.path) });
      writeFileSync(path.join(dir, 'Modelfile'), text);
      writeFileSync(
        path.join(dir, 'README.md'),
        `# ${record.model}\n\nImport into Ollama / 导入 Ollama:\n\n    ${ollamaCommand(record.model)}\n`,
      );
      ollama = ollamaFacts(ctx, record.model, result);
    }

    if (options.check) {
      const check = await postExportCheck(ctx, record, options, resolved, result, ollama, progress, signal);
      repo.setCheck(ctx, record.id, check as unknown as Record<string, unknown>);
      if (check.status === 'failed') {
        repo.finishExport(ctx, record.id, 'failed', checkError(check));
        return;
      }
    }
    repo.finishExport(ctx, record.id, 'succeeded');
  } catch (err) {
    if (signal.aborted) {
      repo.finishExport(ctx, record.id, 'cancelled');
      return;
    }
    const e = WeitiaoError.from(err);
    repo.finishExport(ctx, record.id, 'failed', { code: e.code, message: e.message, param: e.param ?? null });
  }
}

async function postExportCheck(
  ctx: Context,
  record: repo.ExportRecord,
  options: StoredOptions,
  resolved: ReturnType<typeof resolveModel>,
  result: ExportResult,
  ollama: { template: string; system: string | null; chatTemplate: string } | undefined,
  progress: (phase: string, current: number, total: number) => void,
  signal: AbortSignal,
): Promise<CheckReport> {
  const threshold = options.check_threshold;
  const data = options.check_data ?? jobValidationFile(ctx, record.model);
  if (!data) {
    return skippedCheck('skipped: no data (the model has no training job with a validation file; pass --check-data) / 已跳过：没有可用的检查数据', threshold);
  }
  if (options.adapter_only && record.format !== 'hf') {
    return skippedCheck('skipped: a LoRA GGUF is checked on a base GGUF, which this export does not have / 已跳过：LoRA GGUF 需配合基础模型 GGUF 检查', threshold);
  }
  const artifact =
    record.format === 'hf'
      ? { kind: 'hf' as const, model: options.adapter_only ? resolved.basePath : result.path, adapter: options.adapter_only ? result.path : null }
      : { kind: 'gguf' as const, file: result.path };
  try {
    return await runCheck({
      dataFile: locateData(ctx, data),
      dataName: /^file-/.test(data) ? data : path.basename(data),
      maxExamples: options.check_max_examples,
      threshold,
      trained: { basePath: resolved.basePath, adapterPath: resolved.adapterPath },
      artifact,
      ollama,
      onProgress: progress,
      signal,
    });
  } catch (err) {
    if (signal.aborted) throw err;
    // An artifact llama.cpp cannot load or run is exactly what the check is for: a failed check, not a crash.
    const e = WeitiaoError.from(err);
    return {
      ...skippedCheck('', threshold, data),
      status: 'failed',
      reason: `the check could not run the export: ${e.message} / 检查无法运行导出的模型`,
    };
  }
}

/** `ollama create <name> -f Modelfile`, with the model id made an Ollama name. */
export function ollamaCommand(model: string): string {
  const name = model.toLowerCase().replace(/^ft:/, '').replace(/[^a-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '') || 'weitiao-model';
  return `ollama create ${name} -f Modelfile`;
}

/** The system message of the first training example of the job that made `model`, or null. */
function trainingSystemPrompt(ctx: Context, model: string): string | null {
  const file = jobFiles(ctx, model)?.training_file;
  if (!file) return null;
  try {
    const first = readFileSync(fileContentPath(ctx, file), 'utf8').replace(/^\uFEFF/, '').split('\n').find((l) => l.trim());
    const messages = first ? (JSON.parse(first) as { messages?: { role: string; content: string }[] }).messages : undefined;
    return messages?.[0]?.role === 'system' ? messages[0].content : null;
  } catch {
    return null; // the training file was deleted: the Modelfile goes without SYSTEM
  }
}

function jobValidationFile(ctx: Context, model: string): string | null {
  return jobFiles(ctx, model)?.validation_file ?? null;
}

function jobFiles(ctx: Context, model: string): { training_file: string; validation_file: string | null } | null {
  let jobId: string | null = null;
  try {
    jobId = retrieveModel(ctx, model).weitiao.job_id;
  } catch {
    return null; // an unregistered local directory has no job
  }
  if (!jobId) return null;
  try {
    return retrieveJob(ctx, jobId);
  } catch {
    return null;
  }
}

/** A chat file path, or an uploaded file's stored copy for a `file-…` id. */
function locateData(ctx: Context, data: string): string {
  if (/^file-[0-9a-z]+$/i.test(data)) return fileContentPath(ctx, data);
  if (existsSync(data)) return path.resolve(data);
  throw new WeitiaoError('not_found', `check data not found: ${data} / 找不到检查数据：${data}`, { param: 'check_data', file: data });
}

function alive(pid: number | null): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function requireExport(ctx: Context, id: string): repo.ExportRecord {
  const record = repo.getExport(ctx, id);
  if (!record) throw notFound(id, 'export_id');
  return record;
}

function notFound(id: string, param: string): WeitiaoError {
  return new WeitiaoError('not_found', `export '${id}' not found / 找不到导出 '${id}'`, { param });
}

/** A path for the wire: relative to the home, or null outside it (never an absolute server path). */
function homeRelative(ctx: Context, p: string | null): string | null {
  if (!p) return null;
  const rel = path.relative(ctx.home.root, p);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel.split(path.sep).join('/') : null;
}

function toWire(ctx: Context, r: repo.ExportRecord): ExportObject {
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
