/**
 * Stored evaluation results and the leaderboard built from them. `weitiao eval`, the console's evaluations
 * and a job's forgetting check save what they produced here; a result is keyed by the sha256 of the data
 * file's bytes, so the same validation file uploaded twice, or read from disk by the CLI, is one dataset.
 *
 * ```ts
 * saveEvalResult(ctx, report, { datasetName: 'file-abc' });
 * const board = await leaderboard(ctx, 'validation.jsonl');
 * board.rows[0]; // { rank: 1, system: 'ft:tiny:waimai:abc', metric: 'accuracy', value: 0.86, … }
 * ```
 */
import path from 'node:path';
import type { Context } from '../context.js';
import type { MetricValue } from '../engine/protocol.js';
import { WeitiaoError } from '../errors.js';
import { hashFile } from '../storage/index.js';
import { newId, now } from '../store/index.js';
import type { BaselineComparison } from './baseline.js';
import type { ForgettingReport } from './forgetting.js';
import { locateFile, type EvalReport } from './index.js';
import type { ReportInput } from './report-parts.js';

/** The forgetting check's dataset key: the shipped general-ability set. */
export const GENERAL_DATASET = 'general';

export type EvalResultKind = 'evaluation' | 'comparison' | 'baseline' | 'forgetting';

export interface StoredEvalResult {
  id: string;
  object: 'weitiao.eval_result';
  kind: EvalResultKind;
  model: string;
  dataset: string;
  dataset_name: string;
  job_id: string | null;
  created_at: number;
  report: ReportInput;
}

interface Row {
  id: string;
  kind: EvalResultKind;
  model: string;
  dataset: string;
  dataset_name: string;
  job_id: string | null;
  report: string;
  created_at: number;
}

/** sha256 of a data file's bytes (a path or a `file-…` id), streamed: evaluation sets can be large. */
export async function datasetKey(ctx: Context, file: string): Promise<string> {
  return (await hashFile(locateFile(ctx, file))).sha256;
}

export function kindOf(r: ReportInput): EvalResultKind {
  if ('object' in r && r.object === 'weitiao.baseline_comparison') return 'baseline';
  if ('object' in r && r.object === 'weitiao.forgetting_check') return 'forgetting';
  return 'reports' in r ? 'comparison' : 'evaluation';
}

/** The model a result is about: the evaluated one, the fine-tune of a baseline or forgetting check. */
function modelOf(r: ReportInput): string {
  if ('reports' in r) return r.reports[0].model;
  if ('rows' in r) return r.rows.find((x) => x.system === 'fine-tuned')!.model;
  return r.model;
}

/** The report with its server paths replaced by the dataset's name (a stored report is shown over HTTP). */
function withoutPaths(r: ReportInput, name: string): ReportInput {
  if ('reports' in r) return { ...r, file: name, reports: r.reports.map((x) => ({ ...x, file: name })) as [EvalReport, EvalReport] };
  if ('rows' in r) return { ...r, file: name, training_file: path.basename(r.training_file) };
  if ('file' in r) return { ...r, file: name };
  return r;
}

/** The id of the uploaded file stored at this path, if it is one (readers know files by id). */
function uploadedId(ctx: Context, file: string): string | null {
  const row = ctx.db.prepare('SELECT id FROM files WHERE path = ?').get(path.resolve(file)) as { id: string } | undefined;
  return row?.id ?? null;
}

export interface SaveOptions {
  /** How the dataset is named to a reader: a file id or a file name (default the file's base name). */
  datasetName?: string;
  /** The job whose forgetting check this is. */
  jobId?: string | null;
}

/** Stores a report (its dataset keyed by content hash); the forgetting check's dataset is the general set. */
export async function saveEvalResult(ctx: Context, report: ReportInput, options: SaveOptions = {}): Promise<StoredEvalResult> {
  const kind = kindOf(report);
  const file = 'file' in report ? report.file : null;
  const dataset = file === null ? GENERAL_DATASET : await datasetKey(ctx, file);
  const name = options.datasetName ?? (file === null ? 'general.jsonl' : uploadedId(ctx, file) ?? path.basename(file));
  const row: Row = {
    id: newId('evres'),
    kind,
    model: modelOf(report),
    dataset,
    dataset_name: name,
    job_id: options.jobId ?? null,
    report: JSON.stringify(withoutPaths(report, name)),
    created_at: now(),
  };
  ctx.db
    .prepare('INSERT INTO eval_results (id, kind, model, dataset, dataset_name, job_id, report, created_at) VALUES (@id, @kind, @model, @dataset, @dataset_name, @job_id, @report, @created_at)')
    .run(row);
  return toWire(row);
}

function toWire(row: Row): StoredEvalResult {
  return { id: row.id, object: 'weitiao.eval_result', kind: row.kind, model: row.model, dataset: row.dataset, dataset_name: row.dataset_name, job_id: row.job_id, created_at: row.created_at, report: JSON.parse(row.report) as ReportInput };
}

export function retrieveEvalResult(ctx: Context, id: string): StoredEvalResult {
  const row = ctx.db.prepare('SELECT * FROM eval_results WHERE id = ? AND weitiao_visible(project)').get(id) as Row | undefined;
  if (!row) throw new WeitiaoError('not_found', `no such evaluation result: '${id}' / 找不到评估结果 '${id}'`, { param: 'result_id' });
  return toWire(row);
}

/** Newest first; `job_id` narrows to one job's checks, `dataset` to one dataset key. */
export function listEvalResults(ctx: Context, filter: { job_id?: string; dataset?: string; limit?: number } = {}): StoredEvalResult[] {
  const where = ['weitiao_visible(project)'];
  const params: unknown[] = [];
  if (filter.job_id) (where.push('job_id = ?'), params.push(filter.job_id));
  if (filter.dataset) (where.push('dataset = ?'), params.push(filter.dataset));
  const rows = ctx.db.prepare(`SELECT * FROM eval_results WHERE ${where.join(' AND ')} ORDER BY rowid DESC LIMIT ?`).all(...params, filter.limit ?? 100) as Row[];
  return rows.map(toWire);
}

/** The newest forgetting check stored with a job, or null. */
export function jobForgettingCheck(ctx: Context, jobId: string): ForgettingReport | null {
  const r = listEvalResults(ctx, { job_id: jobId, limit: 1 }).find((x) => x.kind === 'forgetting');
  return r ? (r.report as ForgettingReport) : null;
}

// ------------------------------------------------------------------------------------------ leaderboard

/** One system's figures in one stored result: a model, or the base model prompted with k shots. */
interface Entry {
  system: string;
  model: string;
  shots: number;
  mode: 'labels' | 'generation';
  metrics: Record<string, MetricValue | number>;
}

/** exact_match on label data is the accuracy; the value with its interval where the engine gave one. */
function reportEntry(r: EvalReport): Entry {
  const metrics: Entry['metrics'] = { ...(r.generation_metrics?.metrics ?? {}) };
  if (r.label_metrics) Object.assign(metrics, { accuracy: r.label_metrics.accuracy, macro_f1: r.label_metrics.macro_f1 });
  else if (!metrics.exact_match) metrics.exact_match = r.predictions.filter((p) => p.predicted === p.expected).length / Math.max(1, r.n);
  return { system: r.model, model: r.model, shots: 0, mode: r.mode, metrics };
}

function entriesOf(r: ReportInput): Entry[] {
  if ('reports' in r) return r.reports.map(reportEntry);
  if ('rows' in r) {
    const c = r as BaselineComparison;
    return c.rows.map((x) => {
      const metrics: Entry['metrics'] = { ...x.metrics };
      if (c.mode === 'labels' && x.label_metrics) Object.assign(metrics, { accuracy: x.label_metrics.accuracy, macro_f1: x.label_metrics.macro_f1 });
      return { system: x.system === 'few-shot' ? `${x.model} (few-shot k=${x.shots})` : x.model, model: x.model, shots: x.shots, mode: c.mode, metrics };
    });
  }
  if ('object' in r && r.object === 'weitiao.forgetting_check') {
    return [
      { system: r.base_model, model: r.base_model, shots: 0, mode: 'generation', metrics: { contains_answer: r.overall.base, exact_match: r.exact_match.base } },
      { system: r.model, model: r.model, shots: 0, mode: 'generation', metrics: { contains_answer: r.overall.tuned, exact_match: r.exact_match.tuned } },
    ];
  }
  return [reportEntry(r as EvalReport)];
}

/** The metric a board ranks by: accuracy for labels, chrF, char F1 or the forgetting check's contains_answer for text. */
const RANKING = ['accuracy', 'contains_answer', 'chrf', 'char_f1', 'exact_match'];

export interface LeaderboardRow {
  rank: number;
  /** The model, or `<base> (few-shot k=4)` for a prompted base model. */
  system: string;
  model: string;
  shots: number;
  metric: string;
  value: number;
  ci_low: number | null;
  ci_high: number | null;
  /** Every figure stored for it (0–1, BLEU/chrF 0–100). */
  metrics: Record<string, number>;
  result_id: string;
  evaluated_at: number;
}

export interface Leaderboard {
  object: 'weitiao.leaderboard';
  dataset: string;
  dataset_name: string | null;
  metric: string | null;
  rows: LeaderboardRow[];
}

/** Every system evaluated on the dataset (its newest result each), ranked by the dataset's ranking metric. */
export function leaderboardOf(ctx: Context, dataset: string): Leaderboard {
  const results = listEvalResults(ctx, { dataset, limit: 1000 });
  const newest = new Map<string, { entry: Entry; result: StoredEvalResult }>();
  for (const result of results) for (const entry of entriesOf(result.report)) if (!newest.has(entry.system)) newest.set(entry.system, { entry, result });
  const all = [...newest.values()];
  const metric = RANKING.find((m) => all.length > 0 && all.every(({ entry }) => entry.metrics[m] !== undefined)) ?? RANKING.find((m) => all.some(({ entry }) => entry.metrics[m] !== undefined)) ?? null;
  const value = (x: MetricValue | number | undefined) => (x === undefined ? null : typeof x === 'number' ? { value: x, ci_low: null, ci_high: null } : x);
  const rows = all
    .map(({ entry, result }) => {
      const v = metric ? value(entry.metrics[metric]) : null;
      return {
        rank: 0,
        system: entry.system,
        model: entry.model,
        shots: entry.shots,
        metric: metric ?? '',
        value: v?.value ?? Number.NaN,
        ci_low: v?.ci_low ?? null,
        ci_high: v?.ci_high ?? null,
        metrics: Object.fromEntries(Object.entries(entry.metrics).map(([k, m]) => [k, typeof m === 'number' ? m : m.value])),
        result_id: result.id,
        evaluated_at: result.created_at,
      };
    })
    .sort((a, b) => (Number.isNaN(b.value) ? -1 : Number.isNaN(a.value) ? 1 : b.value - a.value));
  rows.forEach((r, i) => (r.rank = i + 1));
  return { object: 'weitiao.leaderboard', dataset, dataset_name: results[0]?.dataset_name ?? null, metric, rows };
}

/** The leaderboard of a data file (a path or a `file-…` id). */
export async function leaderboard(ctx: Context, file: string): Promise<Leaderboard> {
  return leaderboardOf(ctx, await datasetKey(ctx, file));
}
