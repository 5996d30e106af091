/**
 * Request state for components: every request shows a loading state that ends, on success or on error.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import { messageOf } from './api';

export interface Async<T> {
  data: T | undefined;
  error: string | undefined;
  loading: boolean;
  /** Runs the loader again (keeps the old data on screen meanwhile). */
  reload: () => void;
  setData: (data: T) => void;
}

/** Loads `loader()` now and whenever `deps` change; aborts the previous request. */
export function useAsync<T>(loader: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Async<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string>();
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    setLoading(true);
    setError(undefined);
    loader(controller.signal)
      .then((d) => !controller.signal.aborted && setData(d))
      .catch((err) => {
        const message = messageOf(err);
        if (!controller.signal.aborted && message) setError(message);
      })
      .finally(() => !controller.signal.aborted && setLoading(false));
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload, setData };
}

export interface Action<A extends unknown[], T> {
  run: (...args: A) => Promise<T | undefined>;
  running: boolean;
  error: string | undefined;
  clearError: () => void;
}

/** A user-triggered request (a button): `running` while it runs, `error` when it fails. */
export function useAction<A extends unknown[], T>(fn: (...args: A) => Promise<T>): Action<A, T> {
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<string>();
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const run = useCallback(async (...args: A) => {
    setRunning(true);
    setError(undefined);
    try {
      return await fnRef.current(...args);
    } catch (err) {
      setError(messageOf(err));
      return undefined;
    } finally {
      setRunning(false);
    }
  }, []);
  return { run, running, error, clearError: useCallback(() => setError(undefined), []) };
}

/** Calls `fn` every `ms` milliseconds while `active`. */
export function useInterval(fn: () => void, ms: number, active = true): void {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  useEffect(() => {
    if (!active) return;
    const id = setInterval(() => fnRef.current(), ms);
    return () => clearInterval(id);
  }, [ms, active]);
}
