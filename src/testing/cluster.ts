/**
 * The scale-out end-to-end tests' processes (src/workers/*.e2e.test.ts): the API as its own process with no
 * local worker, and `weitiao worker` processes that reach it only over HTTP, each in its own process group (so a
 * test can SIGKILL one with everything it started) with its output lines kept for failure messages.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import type { Context } from '../context.js';
import { signalGroup } from '../engine/process.js';
import { createKey } from '../keys/index.js';
import { createTinyModel } from '../models/index.js';
import { openTestContext, testStoreEnv } from './postgres.js';
import { REPO_ROOT, TINY_WAIMAI } from './waimai.js';

export interface Proc {
  child: ChildProcess;
  lines: string[];
}

export class Cluster {
  private readonly children: ChildProcess[] = [];
  private readonly outputs: { name: string; lines: string[] }[] = [];

  /**
   * A temp dir with the API's home (`ctx`, on the test store) holding the tiny model, an admin key for the
   * openai client and a `worker` key (which may call nothing but /v1/weitiao/workers) for the workers.
   * `deadlineMs`: how long `waitFor` waits by default.
   */
  static async setUp(name: string, deadlineMs: number): Promise<Cluster> {
    const dir = mkdtempSync(path.join(os.tmpdir(), `weitiao-${name}-`));
    const ctx = openTestContext(path.join(dir, 'api'));
    const key = createKey(ctx, { name: `${name}-e2e` }).key;
    const workerKey = createKey(ctx, { name: `${name}-e2e-workers`, role: 'worker' }).key;
    const model = (await createTinyModel(ctx, { name: 'tiny', ...TINY_WAIMAI })).id;
    return new Cluster(dir, ctx, key, workerKey, model, deadlineMs);
  }

  private constructor(
    readonly dir: string,
    readonly ctx: Context,
    readonly key: string,
    readonly workerKey: string,
    readonly model: string,
    private readonly deadlineMs: number,
  ) {}

  /** Stops every process, closes the store, removes the temp dir. */
  async close(): Promise<void> {
    await this.stop();
    this.ctx.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** `node --import tsx <args>` in its own process group. */
  start(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Proc {
    const child = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env }, detached: true });
    this.children.push(child);
    const lines: string[] = [];
    this.outputs.push({ name, lines });
    for (const stream of [child.stdout!, child.stderr!]) readline.createInterface({ input: stream }).on('line', (l) => lines.push(l));
    return { child, lines };
  }

  /** `weitiao serve --no-worker` on the test home's store (its SQLite file or PostgreSQL database); its URL once it listens. */
  async startApi(home: string, env: NodeJS.ProcessEnv = {}): Promise<{ api: Proc; url: string }> {
    const api = this.start('api', [path.join(REPO_ROOT, 'src', 'api', 'serve-main.ts'), '--home', home, '--port', '0', '--no-worker'], { ...env, ...testStoreEnv(home) });
    const { url } = await this.waitFor('the API to listen', () => {
      const line = api.lines.find((l) => l.startsWith('{"url"'));
      return line ? (JSON.parse(line) as { url: string }) : api.child.exitCode !== null ? assert.fail(`API exited:\n${api.lines.join('\n')}`) : undefined;
    }, 120_000);
    return { api, url };
  }

  /** `weitiao worker --server url` with its own home (never the API's), one torch thread, quick polls. */
  startWorker(url: string, name: string, extra: string[] = []): Proc {
    const home = path.join(this.dir, `worker-${name}`);
    const args = ['--home', home, 'worker', '--server', url, '--token', this.workerKey, '--name', name, '--threads', '1', '--poll-ms', '200', ...extra];
    return this.start(name, [path.join(REPO_ROOT, 'src', 'cli', 'main.ts'), ...args]);
  }

  /** Every process's last output lines, for a failure message. */
  logs(): string {
    return this.outputs.map((o) => `--- ${o.name}\n${o.lines.slice(-60).join('\n')}`).join('\n');
  }

  /** Polls `check` until it returns a value (not undefined/false); past the deadline, fails with every process's output. */
  async waitFor<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, deadlineMs = this.deadlineMs): Promise<T> {
    const deadline = Date.now() + deadlineMs;
    for (;;) {
      const v = await check();
      if (v !== undefined && v !== false) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${this.logs()}`);
      await new Promise((r) => setTimeout(r, 150));
    }
  }

  /** SIGKILLs a process's group and an engine's (whose own group the worker made), and waits for the process to end. */
  async kill(proc: Proc, enginePid: number | null): Promise<void> {
    signalGroup(proc.child.pid!, 'SIGKILL');
    if (enginePid) signalGroup(enginePid, 'SIGKILL');
    await exited(proc.child);
  }

  /** SIGTERM to every process still running (SIGKILL to its group after 30 s). */
  async stop(): Promise<void> {
    for (const child of this.children) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const killed = setTimeout(() => child.pid && signalGroup(child.pid, 'SIGKILL'), 30_000);
        await exited(child);
        clearTimeout(killed);
      }
    }
  }
}

const exited = (child: ChildProcess) =>
  child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => child.once('exit', () => r()));
