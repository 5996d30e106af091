/**
 * The idle wait of a polling loop (the job worker, the eval queue, a remote worker): sleeps `ms`, and `wake()`
 * ends the sleep at once, so `stop()` and new work need not wait for the next poll.
 *
 * ```ts
 * const idle = new IdleWait();
 * while (!stopping) { if (await work()) continue; await idle.sleep(pollMs); }
 * // elsewhere: stopping = true; idle.wake();
 * ```
 */
export class IdleWait {
  private wakeUp: (() => void) | null = null;

  sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(timer);
        self.wakeUp = null;
        resolve();
      }
      this.wakeUp = done;
    });
  }

  /** Ends the current sleep, if any. */
  wake(): void {
    this.wakeUp?.();
  }
}
