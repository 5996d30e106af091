/**
 * Process checks shared by everything that runs or watches a detached process (jobs' engines, exports,
 * teacher runs): is a pid or a process group alive, and stopping a group (the engine runs detached, as its
 * own group, so one signal reaches every process it started).
 */

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

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
