/**
 * The worker's liveness rules: a claimed job's worker is gone when its process is, or when its heartbeat
 * is stale. The process checks themselves are src/engine/process.ts's.
 */
import { isAlive } from '../../engine/process.js';

export { isAlive, isGroupAlive, signalGroup, sleep, stopGroup } from '../../engine/process.js';

/** Seconds without a heartbeat after which a claimed job's worker counts as gone. */
export const STALE_WORKER_SECONDS = 60;

/** Worker ids end in `:<pid>` so another process can tell whether the worker that claimed a job still lives. */
export function workerPid(workerId: string | null): number | null {
  const m = workerId ? /:(\d+)$/.exec(workerId) : null;
  return m ? Number(m[1]) : null;
}

/**
 * True when the worker that claimed a job is gone: its process no longer exists, or it has not
 * written a heartbeat for `staleSeconds` (a hung or unreachable worker).
 */
export function workerGone(workerId: string | null, heartbeatAt: number | null, staleSeconds: number): boolean {
  if (!workerId) return true;
  const pid = workerPid(workerId);
  if (pid !== null && !isAlive(pid)) return true;
  return heartbeatAt !== null && Math.floor(Date.now() / 1000) - heartbeatAt > staleSeconds;
}
