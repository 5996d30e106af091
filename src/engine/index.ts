/**
 * Runs the Python engine as a subprocess and speaks the JSON-lines protocol with it.
 *
 * ```ts
 * const result = await runEngine('count-tokens', { model, examples }, { onEvent: (e) => console.log(e) });
 * ```
 * Every stdout line is validated with the protocol schema; stderr is kept (last 64 KiB) for error
 * messages. Aborting the signal sends SIGTERM to the engine's whole process group (training saves a
 * checkpoint and exits), then SIGKILL after a grace period.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { fromZodError, parseOrThrow, WeitiaoError, type ErrorCode, ERROR_CODES } from '../errors.js';
import { COMMANDS, EngineEvent, PROTOCOL_VERSION, type EngineCommand } from './protocol.js';

export * from './protocol.js';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ENGINE_DIR = path.join(REPO_ROOT, 'engine');

/** The Python that runs the engine: `WEITIAO_PYTHON`, else the repo's `.venv`, else `python3`. */
export function enginePython(): string {
  if (process.env.WEITIAO_PYTHON) return process.env.WEITIAO_PYTHON;
  const venv = path.join(REPO_ROOT, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

/**
 * Starts `python -m weitiao_engine <command>` in its own process group (so a stop reaches every child
 * it starts), with stdin/stdout/stderr piped. Shared by `runEngine` and the warm process (warm.ts).
 */
export function spawnEngine(command: string, env?: NodeJS.ProcessEnv): ChildProcess {
  return spawn(enginePython(), ['-m', 'weitiao_engine', command], {
    cwd: ENGINE_DIR,
    env: {
      // OMP_WAIT_POLICY: see engine/weitiao_engine/__init__.py (spinning OpenMP threads stall on shared cores).
      OMP_WAIT_POLICY: 'PASSIVE',
      ...process.env,
      PYTHONPATH: ENGINE_DIR,
      PYTHONUNBUFFERED: '1',
      TOKENIZERS_PARALLELISM: 'false',
      ...env,
    },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
}

export interface RunEngineOptions {
  /** Every event but `result`, in order, already validated. */
  onEvent?: (event: EngineEvent) => void;
  /** Abort = graceful stop (SIGTERM to the process group), then SIGKILL after `killAfterMs`. */
  signal?: AbortSignal;
  killAfterMs?: number;
  /** Called once the process has started, e.g. to record its pid. */
  onSpawn?: (child: ChildProcess) => void;
  env?: NodeJS.ProcessEnv;
}

type ResultOf<C extends EngineCommand> = z.infer<(typeof COMMANDS)[C]['result']>;
type RequestOf<C extends EngineCommand> = z.input<(typeof COMMANDS)[C]['request']>;

/** Runs one engine command to completion and returns its validated result. */
export function runEngine<C extends EngineCommand>(
  command: C,
  request: RequestOf<C>,
  options: RunEngineOptions = {},
): Promise<ResultOf<C>> {
  const spec = COMMANDS[command];
  // Validate (and fill defaults) before starting a Python process for nothing.
  const parsedRequest = parseOrThrow(spec.request, request, { where: { en: `${command} request`, zh: `引擎 ${command} 请求` } });

  return new Promise((resolve, reject) => {
    const child = spawnEngine(command, options.env);
    options.onSpawn?.(child);

    let stderrTail = '';
    let result: unknown;
    let engineError: WeitiaoError | undefined;
    let protocolError: WeitiaoError | undefined;
    let sawHello = false;

    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      stderrTail = (stderrTail + chunk).slice(-65536);
      if (process.env.WEITIAO_ENGINE_STDERR === '1') process.stderr.write(chunk);
    });

    const lines = readline.createInterface({ input: child.stdout!, crlfDelay: Infinity });
    lines.on('line', (line) => {
      if (!line.trim()) return;
      let event: EngineEvent;
      try {
        event = EngineEvent.parse(JSON.parse(line));
      } catch (err) {
        protocolError ??= new WeitiaoError('engine_error', `engine sent an invalid event: ${line.slice(0, 300)}`, { cause: err });
        return;
      }
      if (event.type === 'hello') {
        sawHello = true;
        if (event.protocol_version !== PROTOCOL_VERSION) {
          protocolError = new WeitiaoError(
            'engine_error',
            `engine speaks protocol ${event.protocol_version}, this control plane ${PROTOCOL_VERSION}: reinstall with \`make setup\``,
          );
          stop();
        }
      } else if (event.type === 'result') {
        result = event.data;
        return;
      } else if (event.type === 'error') {
        const code = (event.code in ERROR_CODES ? event.code : 'engine_error') as ErrorCode;
        engineError = new WeitiaoError(code, event.message, { param: event.param ?? undefined });
      }
      options.onEvent?.(event);
    });

    let killTimer: NodeJS.Timeout | undefined;
    const stop = () => {
      signalGroup(child, 'SIGTERM');
      killTimer = setTimeout(() => signalGroup(child, 'SIGKILL'), options.killAfterMs ?? 4000);
      killTimer.unref();
    };
    if (options.signal?.aborted) stop();
    options.signal?.addEventListener('abort', stop, { once: true });

    child.stdin!.on('error', () => {}); // the engine may exit before reading (e.g. bad python)
    child.stdin!.end(JSON.stringify(parsedRequest) + '\n');

    child.on('error', (err) => {
      reject(
        new WeitiaoError('engine_unavailable', `cannot start the engine with ${enginePython()}: ${err.message}. Run \`make setup\`.`, {
          cause: err,
        }),
      );
    });
    child.on('close', (code, sig) => {
      // `close` fires after stdout has ended, but readline may still hold the last line.
      setImmediate(() => {
        clearTimeout(killTimer);
        options.signal?.removeEventListener('abort', stop);
        if (protocolError) return reject(protocolError);
        if (engineError) return reject(engineError);
        if (result !== undefined && code === 0) {
          const parsed = spec.result.safeParse(result);
          if (parsed.success) return resolve(parsed.data as ResultOf<C>);
          return reject(fromZodError(parsed.error, { code: 'engine_error', where: { en: `engine ${command} result (it does not match the protocol)`, zh: `引擎 ${command} 结果` } }));
        }
        if (options.signal?.aborted) return reject(new WeitiaoError('cancelled', `engine ${command} was stopped`));
        const why = sawHello ? `exited with ${sig ?? code}` : `did not start (${sig ?? code})`;
        const hint = /ModuleNotFoundError|No module named/.test(stderrTail) ? ' Run `make setup` to install the engine.' : '';
        reject(new WeitiaoError('engine_error', `engine ${command} ${why}.${hint}\n${stderrTail.trim().split('\n').slice(-15).join('\n')}`));
      });
    });
  });
}

/** Signals the engine's whole process group (it may have children of its own), else the process alone. */
export function signalGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* already gone */
    }
  }
}
