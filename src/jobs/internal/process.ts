/**
 * Process checks for the worker: is a worker or engine still alive, and stopping an engine's process
 * group (the engine runs detached, as its own group, so one signal reaches every process it started).
 */

/** Seconds without a heartbeat after which a claimed job's worker counts as gone. */
export const STALE_WORKER_SECONDS = 60;

/** True when a process with this pid exists (signal 0 checks without sending anything). */
export function isAlive(pid: number | null | undefined): boolean {
  if (!pid || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True while any process of the group led by `pgid` exists. */
export function isGroupAlive(pgid: number | null | undefined): boolean {
  if (!pgid || pgid <= 0) return false;
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function signalGroup(pgid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pgid, sig);
  } catch {
    /* already gone */
  }
}

/** SIGTERM to the group, SIGKILL after `graceMs` if anything is left; resolves once the group is gone. */
export async function stopGroup(pgid: number, graceMs: number): Promise<void> {
  if (!isGroupAlive(pgid)) return;
  signalGroup(pgid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isGroupAlive(pgid) && Date.now() < deadline) await sleep(100);
  if (isGroupAlive(pgid)) signalGroup(pgid, 'SIGKILL');
  const hard = Date.now() + 5000;
  while (isGroupAlive(pgid) && Date.now() < hard) await sleep(50);
}

/** Worker ids end in `:<pid>` so another process can tell whether the worker that claimed a job still lives. */
export function workerPid(workerId: string | null): number | null {
  const m = workerId ? /:(\d+)$/.exec(workerId) : null;
  return m ? Number(m[1]) : null;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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
