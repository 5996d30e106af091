/**
 * What a fine-tuning job can ask of evaluation: a forgetting check once it has succeeded
 * (`weitiao.forgetting_check`), stored with the job, and general chat data mixed into its training file
 * (`weitiao.mix_general`, the CLI's `--mix-general RATIO`), seeded and recorded.
 *
 * ```ts
 * await runForgettingCheck(ctx, retrieveJob(ctx, 'ftjob-abc'), { request: true });  // stored; jobForgettingCheck(ctx, id)
 * const mix = await mixGeneralData(ctx, { trainingFile: 'train.jsonl', ratio: 0.2, seed: 7 });
 * ```
 */
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../context.js';
import { mulberry32, writeFileAtomic } from '../data/index.js';
import { hideServerPaths, WeitiaoError } from '../errors.js';
import { createFile, fileContentPath, retrieveFile, type FileObject } from '../files/index.js';
import type { CreateJobParams, FineTuningJob } from '../jobs/index.js';
import { checkForgetting, readGeneralSet } from './forgetting.js';
import { buildGeneralSet } from './general/build.js';
import type { EvalJobSettings } from './job-settings.js';
import { saveEvalResult, type StoredEvalResult } from './results.js';

/** Items of the general set a job's check scores by default: a spread over every category and language. */
export const DEFAULT_CHECK_ITEMS = 60;

export { EvalJobSettings } from './job-settings.js';

export interface JobEvent {
  level?: 'info' | 'warn';
  message: string;
  data?: unknown;
}

export interface ForgettingCheckOptions {
  /** The job's `weitiao.forgetting_check` (true = the default size). */
  request?: EvalJobSettings['forgetting_check'];
  /** The job's own events (the worker's `event`), told when the check starts, ends or fails. */
  onEvent?: (event: JobEvent) => void;
  signal?: AbortSignal;
}

/**
 * Scores the job's fine-tuned model against its base on the general set, delta per category and language,
 * and stores the report with the job (jobForgettingCheck reads it). A failed check does not fail the job:
 * it is told as a warning event and null is returned.
 */
export async function runForgettingCheck(ctx: Context, job: FineTuningJob, options: ForgettingCheckOptions = {}): Promise<StoredEvalResult | null> {
  const request = options.request ?? true;
  if (request === false) return null;
  if (job.status !== 'succeeded' || !job.fine_tuned_model) {
    throw new WeitiaoError('conflict', `job ${job.id} is ${job.status}: the forgetting check needs a fine-tuned model / 任务尚未成功，无法做遗忘检查`, { param: 'job_id' });
  }
  const maxExamples = request === true ? DEFAULT_CHECK_ITEMS : request.max_examples;
  options.onEvent?.({ message: `Forgetting check: ${job.fine_tuned_model} vs ${job.model} on ${maxExamples} general-ability items / 遗忘检查开始` });
  try {
    const report = await checkForgetting(ctx, { model: job.fine_tuned_model, compareWith: job.model, maxExamples, batchSize: Math.min(32, maxExamples), seed: job.seed, signal: options.signal });
    const stored = await saveEvalResult(ctx, report, { jobId: job.id });
    const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} pt`;
    options.onEvent?.({
      message: `Forgetting check: general ability ${(report.overall.base.value * 100).toFixed(1)}% → ${(report.overall.tuned.value * 100).toFixed(1)}% (${pct(report.overall.delta)}) / 遗忘检查完成`,
      data: { forgetting_check: stored.id, delta: report.overall.delta, ci_low: report.overall.ci_low, ci_high: report.overall.ci_high, groups: report.groups },
    });
    return stored;
  } catch (err) {
    const e = WeitiaoError.from(err);
    options.onEvent?.({ level: 'warn', message: `Forgetting check failed: ${hideServerPaths(e.message)} / 遗忘检查失败`, data: { code: e.code } });
    return null;
  }
}

// ------------------------------------------------------------------------------------------ mix general

export interface MixGeneralOptions {
  /** The training chat JSONL (a path). */
  trainingFile: string;
  /** General examples added per training example, 0 < ratio ≤ 1 (0.2: 100 examples gain 20). */
  ratio: number;
  seed: number;
  /** Where the mixed file goes; default beside the home's cache. */
  outputDir?: string;
}

export interface MixGeneralResult {
  file: string;
  ratio: number;
  seed: number;
  training_examples: number;
  added: number;
  /** What was mixed in, for the job's record. */
  source: string;
}

export const MIX_SOURCE = 'weitiao general set generator (arithmetic + instruction following, zh/en; other seeds than the forgetting check, none of its items)';

/**
 * General chat examples disjoint from the forgetting check: the same generator under other seeds, only
 * the categories it generates (arithmetic, instructions; the facts are a fixed list, so all are test
 * items), without any question the shipped set asks. Seeded: the same seed gives the same pool.
 */
export async function generalMixPool(needed: number, seed: number): Promise<{ messages: { role: string; content: string }[] }[]> {
  const tested = new Set((await readGeneralSet()).map((x) => x.messages[0].content));
  const seen = new Set<string>();
  const pool: { messages: { role: string; content: string }[] }[] = [];
  // 1e5 + seed·97 + k: far from the shipped set's seed 16, different per job seed.
  for (let k = 0; pool.length < needed && k < 200; k++) {
    for (const x of buildGeneralSet(100_000 + seed * 97 + k)) {
      const q = x.messages[0].content;
      if (x.category === 'facts' || tested.has(q) || seen.has(q)) continue;
      seen.add(q);
      pool.push({ messages: x.messages });
    }
  }
  return pool;
}

/** Writes the training file with round(ratio·n) general examples inserted at seeded positions. */
export async function mixGeneralData(ctx: Context, options: MixGeneralOptions): Promise<MixGeneralResult> {
  const { ratio, seed } = options;
  if (!(ratio > 0 && ratio <= 1)) {
    throw new WeitiaoError('invalid_request', `--mix-general takes a ratio in (0, 1], not ${ratio} / 混合比例须在 (0, 1] 之间`, { param: 'mix_general' });
  }
  const lines = (await readFile(options.trainingFile, 'utf8')).replace(/^\uFEFF/, '').split('\n').filter((l) => l.trim());
  const added = Math.max(1, Math.round(ratio * lines.length));
  const pool = await generalMixPool(added, seed);
  if (pool.length < added) {
    throw new WeitiaoError('invalid_request', `only ${pool.length} general examples are available for ${added} / 通用样本不足`, { param: 'mix_general' });
  }
  const random = mulberry32(seed);
  // A seeded Fisher–Yates pick of the pool, then each one inserted at a seeded position.
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  const mixed = [...lines];
  for (const x of pool.slice(0, added)) mixed.splice(Math.floor(random() * (mixed.length + 1)), 0, JSON.stringify(x));
  const dir = options.outputDir ?? path.join(ctx.home.cache, 'mix-general');
  await mkdir(dir, { recursive: true });
  const stem = path.basename(options.trainingFile).replace(/\.jsonl?$/i, '');
  const file = path.join(dir, `${stem}+general-${ratio}-s${seed}.jsonl`);
  await writeFileAtomic(file, mixed.join('\n') + '\n');
  return { file, ratio, seed, training_examples: lines.length, added, source: MIX_SOURCE };
}

/** How a mix is recorded in the job's metadata (OpenAI's string pairs); `source_file`: the file it was mixed from. */
export function mixGeneralMetadata(m: MixGeneralResult, sourceFile?: string): Record<string, string> {
  return {
    'weitiao.mix_general': JSON.stringify({ ratio: m.ratio, seed: m.seed, added: m.added, training_examples: m.training_examples, ...(sourceFile && { source_file: sourceFile }) }),
  };
}

/**
 * A create request's `weitiao.mix_general` applied (src/jobs' submitJob, so the CLI and the API alike): the
 * training file's content mixed with general examples, seeded by the request's seed (0 when none), stored as
 * a new fine-tune file that the returned request names, the mix recorded in its metadata. A request without
 * it comes back unchanged (`file` null).
 */
export async function applyMixGeneral(ctx: Context, params: CreateJobParams): Promise<{ params: CreateJobParams; file: FileObject | null; mix: MixGeneralResult | null }> {
  const ratio = params.weitiao?.mix_general;
  if (ratio === undefined) return { params, file: null, mix: null };
  if (typeof ratio !== 'number' || !(ratio > 0 && ratio <= 1)) {
    throw new WeitiaoError('invalid_request', `weitiao.mix_general takes a ratio in (0, 1], not ${JSON.stringify(ratio)} / 混合比例须在 (0, 1] 之间`, { param: 'weitiao.mix_general' });
  }
  let source: FileObject;
  try {
    source = retrieveFile(ctx, params.training_file);
  } catch (err) {
    const e = WeitiaoError.from(err);
    throw e.code === 'not_found' ? new WeitiaoError('not_found', `training_file '${params.training_file}' not found / 找不到训练文件`, { param: 'training_file' }) : e;
  }
  if (source.purpose !== 'fine-tune') {
    throw new WeitiaoError('invalid_request', `training_file '${source.id}' has purpose '${source.purpose}'; upload it with purpose 'fine-tune' / 文件用途须为 fine-tune`, { param: 'training_file' });
  }
  const seed = params.seed ?? 0;
  const dir = await mkdtemp(path.join(ctx.home.cache, 'mix-general-'));
  try {
    const mix = await mixGeneralData(ctx, { trainingFile: fileContentPath(ctx, source.id), ratio, seed, outputDir: dir });
    const filename = `${source.filename.replace(/\.jsonl?$/i, '')}+general-${ratio}-s${seed}.jsonl`;
    const file = await createFile(ctx, { source: mix.file, filename, purpose: 'fine-tune', move: true });
    const metadata = { ...params.metadata, ...mixGeneralMetadata(mix, source.id) };
    return { params: { ...params, training_file: file.id, seed, metadata }, file, mix: { ...mix, file: fileContentPath(ctx, file.id) } };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
