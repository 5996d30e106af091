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
import { createReadStream, existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { GgufQuantization, type ExportResult } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { resolveModel } from '../models/index.js';
import { listPage, newId, type ListPage } from '../store/index.js';
import * as repo from './internal/repository.js';
import { openStoredExport, type StoredDownload } from './internal/stored.js';
import { checkError, locateData, ollamaFacts, postExportCheck, runnerFor } from './runner.js';
import { tarDirectory } from './internal/tar.js';
import { ExportFormat, toWire, type CreateExportOptions, type ExportObject, type StoredOptions } from './wire.js';

export type { CheckReport } from './internal/check.js';
export { tarDirectory } from './internal/tar.js';
export type { StoredDownload as ExportDownload } from './internal/stored.js';
export { recoverExports } from './runner.js';
export { CheckReportSchema, ExportFormat, ExportObject, ExportStatus, ollamaCommand, type CreateExportOptions } from './wire.js';

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
  const ollama = record.format === 'ollama' ? await ollamaFacts(ctx, record.model, result) : undefined;
  const check = await postExportCheck(ctx, record, options2, resolveModel(ctx, record.model), result, ollama, () => {}, options.signal ?? new AbortController().signal);
  repo.setCheck(ctx, id, check as unknown as Record<string, unknown>);
  repo.setOutcome(ctx, id, check.status === 'failed' ? 'failed' : 'succeeded', check.status === 'failed' ? checkError(check) : null);
  return retrieveExport(ctx, id);
}

/** The export's files on this host: the .gguf itself for a GGUF export, else the folder. */
export function exportContent(ctx: Context, id: string): { kind: 'file' | 'directory'; path: string; name: string } {
  const record = requireExport(ctx, id);
  const result = finishedResult(record);
  if (!existsSync(result.path)) throw new WeitiaoError('not_found', `the files of export ${id} are gone / 导出的文件已不存在`, { param: 'export_id' });
  if (record.format === 'gguf' && statSync(result.path).isFile()) return { kind: 'file', path: result.path, name: path.basename(result.path) };
  const dir = statSync(result.path).isFile() ? path.dirname(result.path) : result.path;
  return { kind: 'directory', path: dir, name: id };
}

/**
 * What `/content` sends, as a stream: the .gguf of a GGUF export, else a tar of its folder; from object
 * storage when the export was uploaded there (each object's sha256 checked as it streams), else from this host.
 */
export async function openExportContent(ctx: Context, id: string): Promise<StoredDownload> {
  const record = requireExport(ctx, id);
  const stored = await openStoredExport(ctx, id, record.format, finishedResult(record));
  if (stored) return stored;
  const local = exportContent(ctx, id);
  if (local.kind === 'file') return { kind: 'file', name: local.name, size: statSync(local.path).size, body: createReadStream(local.path) };
  return { kind: 'directory', name: local.name, body: tarDirectory(local.path, local.name) };
}

function finishedResult(record: repo.ExportRecord): ExportResult {
  if (record.status !== 'succeeded' && !(record.status === 'failed' && record.result)) {
    throw new WeitiaoError('conflict', `export ${record.id} has no files (${record.status}) / 导出尚无文件`, { param: 'export_id' });
  }
  const result = record.result as ExportResult | null;
  if (!result) throw new WeitiaoError('not_found', `the files of export ${record.id} are gone / 导出的文件已不存在`, { param: 'export_id' });
  return result;
}

function requireExport(ctx: Context, id: string): repo.ExportRecord {
  const record = repo.getExport(ctx, id);
  if (!record) throw notFound(id, 'export_id');
  return record;
}

function notFound(id: string, param: string): WeitiaoError {
  return new WeitiaoError('not_found', `export '${id}' not found / 找不到导出 '${id}'`, { param });
}
