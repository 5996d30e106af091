/**
 * The export runner: one export at a time in the process that created it (engine export, the Ollama
 * Modelfile, then the post-export check), and recovery of exports whose process is gone.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Context } from '../context.js';
import { runEngine, type ExportResult, type GgufQuantization } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { fileContentPath, materializeFile } from '../files/index.js';
import { retrieveJob } from '../jobs/index.js';
import { llamaLibraryPath } from '../llamacpp/index.js';
import { materializeModel, resolveModel, retrieveModel } from '../models/index.js';
import { runCheck, skippedCheck, type CheckReport } from './internal/check.js';
import { modelfile, ollamaTemplate } from './internal/ollama.js';
import * as repo from './internal/repository.js';
import { uploadExport } from './internal/stored.js';
import { ollamaCommand, type StoredOptions } from './wire.js';
import { isAlive } from '../engine/process.js';

/** Marks exports left `running` by a process that is gone as failed. Returns their ids. */
export function recoverExports(ctx: Context): string[] {
  const lost = repo.runningExports(ctx).filter((r) => r.pid !== process.pid && !isAlive(r.pid));
  for (const r of lost) {
    repo.finishExport(ctx, r.id, 'failed', {
      code: 'engine_error',
      message: 'the process running this export stopped before it finished; export again / 运行此导出的进程已退出，请重新导出',
      param: null,
    });
  }
  return lost.map((r) => r.id);
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

export const runners = new WeakMap<Context, Runner>();
export function runnerFor(ctx: Context): Runner {
  let r = runners.get(ctx);
  if (!r) runners.set(ctx, (r = new Runner(ctx)));
  return r;
}

async function runExport(ctx: Context, record: repo.ExportRecord, signal: AbortSignal): Promise<void> {
  const options = record.options as unknown as StoredOptions;
  const progress = (phase: string, current: number, total: number) => repo.setProgress(ctx, record.id, { phase, current, total });
  try {
    const resolved = await materializeModel(ctx, record.model);
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
      const system = await trainingSystemPrompt(ctx, record.model);
      const dir = path.dirname(result.path);
      const text = modelfile({ chatTemplate: result.chat_template, stopTokens: result.stop_tokens, system, gguf: path.basename(result.path) });
      writeFileSync(path.join(dir, 'Modelfile'), text);
      writeFileSync(
        path.join(dir, 'README.md'),
        `# ${record.model}\n\nImport into Ollama / 导入 Ollama:\n\n    ${ollamaCommand(record.model)}\n`,
      );
      ollama = await ollamaFacts(ctx, record.model, result);
    }

    let failed: repo.ExportError | null = null;
    if (options.check) {
      const check = await postExportCheck(ctx, record, options, resolved, result, ollama, progress, signal);
      repo.setCheck(ctx, record.id, check as unknown as Record<string, unknown>);
      if (check.status === 'failed') failed = checkError(check);
    }
    // A failed check's files are still downloadable (to look at), so they are uploaded too.
    await uploadExport(ctx, record.id, result, progress, signal);
    repo.finishExport(ctx, record.id, failed ? 'failed' : 'succeeded', failed);
  } catch (err) {
    if (signal.aborted) {
      repo.finishExport(ctx, record.id, 'cancelled');
      return;
    }
    const e = WeitiaoError.from(err);
    repo.finishExport(ctx, record.id, 'failed', { code: e.code, message: e.message, param: e.param ?? null });
  }
}

export async function postExportCheck(
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
      dataFile: await materializeData(ctx, data),
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

export function checkError(check: CheckReport): repo.ExportError {
  return { code: 'unprocessable', message: `post-export check failed: ${check.reason} / 导出检查未通过`, param: null };
}

export async function ollamaFacts(ctx: Context, model: string, result: ExportResult) {
  return { template: ollamaTemplate(result.chat_template ?? ''), system: await trainingSystemPrompt(ctx, model), chatTemplate: result.chat_template ?? '' };
}

/** The system message of the first training example of the job that made `model`, or null. */
async function trainingSystemPrompt(ctx: Context, model: string): Promise<string | null> {
  const file = jobFiles(ctx, model)?.training_file;
  if (!file) return null;
  try {
    const first = readFileSync(await materializeFile(ctx, file), 'utf8').replace(/^\uFEFF/, '').split('\n').find((l) => l.trim());
    const messages = first ? (JSON.parse(first) as { messages?: { role: string; content: string }[] }).messages : undefined;
    return messages?.[0]?.role === 'system' ? messages[0].content : null;
  } catch {
    return null; // the training file was deleted: the Modelfile goes without SYSTEM
  }
}

export function jobValidationFile(ctx: Context, model: string): string | null {
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

/** A chat file path, or an uploaded file's local copy (downloaded from object storage when missing). */
async function materializeData(ctx: Context, data: string): Promise<string> {
  return /^file-[0-9a-z]+$/i.test(data) ? materializeFile(ctx, data) : locateData(ctx, data);
}

/** A chat file path, or where an uploaded file's copy is on this host for a `file-…` id (`not_found` for neither). */
export function locateData(ctx: Context, data: string): string {
  if (/^file-[0-9a-z]+$/i.test(data)) return fileContentPath(ctx, data);
  if (existsSync(data)) return path.resolve(data);
  throw new WeitiaoError('not_found', `check data not found: ${data} / 找不到检查数据：${data}`, { param: 'check_data', file: data });
}

