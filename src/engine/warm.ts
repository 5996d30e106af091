/**
 * A long-lived engine process (`python -m weitiao_engine serve`) that keeps models loaded between requests.
 *
 * ```ts
 * const engine = new WarmEngine();
 * const result = await engine.request('chat', { model, adapter, messages }, { onEvent: (e) => e.type === 'token' && write(e.text) });
 * await engine.close(); // on server shutdown
 * ```
 * The process starts on the first request. Requests are written at once and answered by the engine one
 * at a time in arrival order (so two answers never interleave); every event carries its request's id and
 * is routed to that request's callbacks. Aborting a request's signal rejects it at once and tells the
 * engine to drop it (queued) or stop it between two tokens (running). If the process dies, its pending
 * requests fail with `engine_error` and the next request starts a new one. After `idleTimeoutMs` without
 * a request the process is shut down to give its memory back. While idle it does not keep Node alive,
 * and it exits by itself when its stdin closes (the control plane is gone).
 */
import type { ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { z } from 'zod';
import { ERROR_CODES, fromZodError, WeitiaoError, type ErrorCode } from '../errors.js';
import { enginePython, signalGroup, spawnEngine } from './index.js';
import { EngineEvent, PROTOCOL_VERSION, SERVE_COMMANDS, ServeRequest, type HelloEvent, type ServeCall, type ServeCommand } from './protocol.js';

export interface WarmEngineOptions {
  /** Shut the process down after this long without a request, freeing the models' memory. Default 10 minutes. */
  idleTimeoutMs?: number;
  /** Passed to the engine: base models and adapters kept loaded, torch threads. */
  serve?: ServeRequest;
  /** How long `close()` waits for the engine to exit before killing it. Default 5 s. */
  killAfterMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface WarmRequestOptions {
  /** This request's events but its result and error (tokens, logs), already validated. */
  onEvent?: (event: EngineEvent) => void;
  /** Abort = reject now with `cancelled`; the engine drops the request or stops it before its next token. */
  signal?: AbortSignal;
}

type RequestOf<C extends ServeCommand> = z.input<(typeof SERVE_COMMANDS)[C]['request']>;
type ResultOf<C extends ServeCommand> = z.infer<(typeof SERVE_COMMANDS)[C]['result']>;

interface Pending {
  command: ServeCommand;
  onEvent?: (event: EngineEvent) => void;
  resolve: (result: unknown) => void;
  reject: (error: WeitiaoError) => void;
}

/** One running serve process and the requests it owes an answer. */
interface Proc {
  child: ChildProcess;
  pending: Map<string, Pending>;
  hello?: HelloEvent;
  /** Set when the process cannot go on (bad event, wrong protocol): what its pending requests fail with. */
  fatal?: WeitiaoError;
  stderrTail: string;
  exited: Promise<void>;
}

const DEFAULT_IDLE_MS = 10 * 60_000;

/** A warm `serve` engine process, started on demand, restarted after a crash, stopped when idle. */
export class WarmEngine {
  readonly #options: WarmEngineOptions;
  #proc: Proc | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  #nextId = 0;
  #starts = 0;

  constructor(options: WarmEngineOptions = {}) {
    this.#options = options;
  }

  /** The pid of the running engine process (from its `hello`), if one is running. */
  get pid(): number | undefined {
    return this.#proc?.hello?.pid;
  }

  /** How many engine processes this instance has started so far. */
  get starts(): number {
    return this.#starts;
  }

  /** Sends one request to the engine (starting it if needed) and resolves with its validated result. */
  request<C extends ServeCommand>(command: C, request: RequestOf<C>, options: WarmRequestOptions = {}): Promise<ResultOf<C>> {
    const spec = SERVE_COMMANDS[command];
    const parsed = spec.request.safeParse(request);
    if (!parsed.success) return Promise.reject(fromZodError(parsed.error, { where: { en: `${command} request`, zh: `引擎 ${command} 请求` } }));
    const { signal, onEvent } = options;
    if (signal?.aborted) return Promise.reject(cancelled());

    const proc = this.#proc ?? this.#start();
    const id = `r${++this.#nextId}`;
    return new Promise<ResultOf<C>>((resolve, reject) => {
      const settle = () => {
        signal?.removeEventListener('abort', onAbort);
        proc.pending.delete(id);
        this.#idleIfDone(proc);
      };
      const onAbort = () => {
        if (!proc.pending.has(id)) return;
        settle();
        send(proc, { id: `cancel-${id}`, command: 'cancel', target: id });
        reject(cancelled());
      };
      proc.pending.set(id, {
        command,
        onEvent,
        resolve: (result) => {
          settle();
          const checked = spec.result.safeParse(result);
          if (checked.success) resolve(checked.data as ResultOf<C>);
          else reject(fromZodError(checked.error, { code: 'engine_error', where: { en: `engine ${command} result (it does not match the protocol)`, zh: `引擎 ${command} 结果` } }));
        },
        reject: (error) => {
          settle();
          reject(error);
        },
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#busy(proc);
      send(proc, { id, command, request: parsed.data });
    });
  }

  /** Shuts the engine process down (pending requests fail); a later request starts a new one. */
  async close(): Promise<void> {
    clearTimeout(this.#idleTimer);
    const proc = this.#proc;
    if (proc) await this.#stop(proc);
  }

  #start(): Proc {
    this.#starts++;
    const child = spawnEngine('serve', this.#options.env);
    let onExit!: () => void;
    const proc: Proc = { child, pending: new Map(), stderrTail: '', exited: new Promise((r) => (onExit = r)) };
    this.#proc = proc;

    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      proc.stderrTail = (proc.stderrTail + chunk).slice(-65536);
      if (process.env.WEITIAO_ENGINE_STDERR === '1') process.stderr.write(chunk);
    });
    readline.createInterface({ input: child.stdout!, crlfDelay: Infinity }).on('line', (line) => this.#onLine(proc, line));
    child.stdin!.on('error', () => {}); // writes to a dead process: its exit fails the pending requests
    child.on('error', (err) => {
      proc.fatal ??= new WeitiaoError('engine_unavailable', `cannot start the engine with ${enginePython()}: ${err.message}. Run \`make setup\`.`, {
        cause: err,
      });
      this.#exited(proc, null, null);
      onExit();
    });
    child.on('close', (code, sig) => {
      // `close` fires after stdout has ended, but readline may still hold the last line.
      setImmediate(() => {
        this.#exited(proc, code, sig);
        onExit();
      });
    });
    child.stdin!.write(JSON.stringify(ServeRequest.parse(this.#options.serve ?? {})) + '\n');
    return proc;
  }

  #onLine(proc: Proc, line: string): void {
    if (!line.trim()) return;
    let event: EngineEvent;
    try {
      event = EngineEvent.parse(JSON.parse(line));
    } catch (err) {
      this.#fail(proc, new WeitiaoError('engine_error', `engine sent an invalid event: ${line.slice(0, 300)}`, { cause: err }));
      return;
    }
    if (event.type === 'hello') {
      proc.hello = event;
      if (event.protocol_version !== PROTOCOL_VERSION) {
        this.#fail(
          proc,
          new WeitiaoError('engine_error', `engine speaks protocol ${event.protocol_version}, this control plane ${PROTOCOL_VERSION}: reinstall with \`make setup\``),
        );
      }
      return;
    }
    const requestId = 'request_id' in event ? event.request_id : undefined;
    if (requestId === undefined) {
      // Not about one request: logs, the final result, or an error that ends the process.
      if (event.type === 'error') proc.fatal ??= engineError(event.code, event.message, event.param);
      return;
    }
    const pending = proc.pending.get(requestId);
    if (!pending) return; // a cancelled request's last words
    if (event.type === 'result') pending.resolve(event.data);
    else if (event.type === 'error') pending.reject(engineError(event.code, event.message, event.param));
    else pending.onEvent?.(event);
  }

  /** The process cannot be trusted any more: fail what it owes and kill it. */
  #fail(proc: Proc, error: WeitiaoError): void {
    proc.fatal ??= error;
    if (this.#proc === proc) this.#proc = undefined;
    for (const pending of [...proc.pending.values()]) pending.reject(error);
    signalGroup(proc.child, 'SIGKILL');
  }

  #exited(proc: Proc, code: number | null, sig: NodeJS.Signals | null): void {
    if (this.#proc === proc) this.#proc = undefined;
    if (proc.pending.size === 0) return;
    const tail = proc.stderrTail.trim().split('\n').slice(-15).join('\n');
    const error =
      proc.fatal ??
      new WeitiaoError(
        'engine_error',
        `the inference engine exited (${sig ?? code}) before answering; the next request starts a new one / 推理引擎进程意外退出，下一个请求会重新启动它${tail ? `\n${tail}` : ''}`,
      );
    for (const pending of [...proc.pending.values()]) pending.reject(error);
  }

  /** A request is under way: no idle shutdown, and the process keeps Node alive until it is answered. */
  #busy(proc: Proc): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    setRef(proc.child, true);
  }

  #idleIfDone(proc: Proc): void {
    if (proc.pending.size > 0 || this.#proc !== proc) return;
    setRef(proc.child, false);
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => void this.#stop(proc), this.#options.idleTimeoutMs ?? DEFAULT_IDLE_MS);
    this.#idleTimer.unref();
  }

  /** Asks the engine to shut down (it cancels what is left), then kills it if it does not exit in time. */
  async #stop(proc: Proc): Promise<void> {
    if (this.#proc === proc) this.#proc = undefined;
    if (proc.child.exitCode === null && proc.child.signalCode === null) {
      // An idle process was unref'd; without this, Node could exit while `close()` still awaits its exit.
      setRef(proc.child, true);
      send(proc, { id: 'shutdown', command: 'shutdown' });
      proc.child.stdin!.end();
      const kill = setTimeout(() => signalGroup(proc.child, 'SIGKILL'), this.#options.killAfterMs ?? 5000);
      await proc.exited;
      clearTimeout(kill);
    } else {
      await proc.exited;
    }
  }
}

function send(proc: Proc, call: ServeCall): void {
  if (proc.child.stdin!.writable) proc.child.stdin!.write(JSON.stringify(call) + '\n');
}

function engineError(code: string, message: string, param?: string | null): WeitiaoError {
  return new WeitiaoError((code in ERROR_CODES ? code : 'engine_error') as ErrorCode, message, { param: param ?? undefined });
}

function cancelled(): WeitiaoError {
  return new WeitiaoError('cancelled', 'the chat request was cancelled / 对话请求已取消');
}

/** Whether the child and its pipes keep Node's event loop alive. */
function setRef(child: ChildProcess, ref: boolean): void {
  for (const handle of [child, child.stdin, child.stdout, child.stderr] as unknown as ({ ref?(): void; unref?(): void } | null)[]) {
    if (ref) handle?.ref?.();
    else handle?.unref?.();
  }
}

