/**
 * What the worker needs to recover a run: which checkpoints to resume from, a resumed run's repeated steps
 * kept once in the history, and the one message a crash loop ends with. Not for use outside src/jobs.
 */
import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Context } from '../../context.js';
import type { DB } from '../../store/index.js';
import { now } from '../../store/index.js';
import { eventToWire, type WireJobEvent } from './records.js';
import { findMetricsEvent, lastCheckpointStep, updateEvent } from '../repository.js';

/**
 * Removes the `checkpoints/step-N` directories newer than every checkpoint the database recorded for the job:
 * an engine that outlived its control plane (killed server) trained and saved them while its events went
 * nowhere (or sat unread in a dead pipe). Resuming from them would leave those steps out of the job's history;
 * resuming from the last recorded one trains them again, reported. Returns the names removed.
 */
export async function discardUnrecordedCheckpoints(ctx: Context, jobId: string, outputDir: string): Promise<string[]> {
  const dir = path.join(outputDir, 'checkpoints');
  if (!existsSync(dir)) return [];
  const last = lastCheckpointStep(ctx.db, jobId);
  const unrecorded = readdirSync(dir).filter((n) => /^step-\d+$/.test(n) && Number(n.slice(5)) > (last ?? 0));
  for (const name of unrecorded) await rm(path.join(dir, name), { recursive: true, force: true });
  return unrecorded;
}

/** The newest `checkpoints/step-N` directory name in a job's directory, or null. */
export function newestCheckpoint(outputDir: string): string | null {
  const dir = path.join(outputDir, 'checkpoints');
  if (!existsSync(dir)) return null;
  const steps = readdirSync(dir)
    .filter((n) => /^step-\d+$/.test(n))
    .sort((a, b) => Number(a.slice(5)) - Number(b.slice(5)));
  return steps.at(-1) ?? null;
}

/** `WEITIAO_MAX_ENGINE_CRASHES` when it is a whole number ≥ 1, else 3. */
export function defaultMaxCrashes(): number {
  const n = Number(process.env.WEITIAO_MAX_ENGINE_CRASHES);
  return Number.isInteger(n) && n >= 1 ? n : 3;
}

/** The last `n` non-empty lines of `text`. */
function lastLines(text: string, n: number): string {
  return text
    .split('\n')
    .map((l) => l.trimEnd())
    .filter(Boolean)
    .slice(-n)
    .join('\n');
}

/**
 * Replaces the metrics event already recorded for `step` (same kind: training or validation figures) with a
 * resumed run's figures for it, keeping its id and place: the history holds every step once, the newest
 * figures win. The wire event, or null when the step has none.
 */
export function replaceMetricsEvent(db: DB, jobId: string, step: number, message: string, data: Record<string, unknown>): WireJobEvent | null {
  const old = findMetricsEvent(db, jobId, step, data.train_loss !== undefined);
  if (!old) return null;
  const updated = { ...old, message, data: JSON.stringify(data), created_at: now() };
  updateEvent(db, old.seq, updated);
  return eventToWire(updated);
}

/**
 * The error a crash loop ends with, its cause said once: the last failure's first line, the engine's last
 * output lines (paths already hidden), and what to do — resume when a checkpoint exists, else create again.
 */
export function crashLoopMessage(o: { jobId: string; streak: number; cause: string; output: string; resumable: boolean }): string {
  const tail = lastLines(o.output, 6);
  const next = o.resumable
    ? `fix the cause, then resume it from its last checkpoint: \`weitiao jobs resume ${o.jobId}\` / 排除原因后可用 weitiao jobs resume 从最后的检查点继续`
    : 'it saved no checkpoint, so fix the cause and create it again / 尚无检查点，排除原因后请重新创建任务';
  return (
    `the engine stopped unexpectedly ${o.streak} times in a row; last cause: ${o.cause}${tail ? `\n${tail}` : ''}\n` +
    `The job is not retried again: ${next} / 训练引擎连续 ${o.streak} 次意外退出`
  );
}
