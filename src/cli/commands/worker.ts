/**
 * `weitiao worker --server URL --token T`: a remote worker on this machine (src/workers/remote.ts). It reaches
 * the API only over HTTP; its own state (work dirs, the base-model cache) lives under `<home>/worker`, so it may
 * share a home with nothing else. SIGTERM or Ctrl-C: the running job saves a checkpoint, uploads it and is
 * queued again; a second Ctrl-C kills the engine at once.
 */
import type { Command } from 'commander';
import path from 'node:path';
import { WeitiaoError } from '../../errors.js';
import { resolveHome } from '../../home.js';
import { RemoteWorker } from '../../workers/remote.js';
import { WorkerMethod, WorkerName } from '../../workers/protocol.js';
import { number } from './shared.js';

export function registerWorkerCommands(program: Command): void {
  program
    .command('worker')
    .description('run jobs for a weitiao API on this machine (a remote worker) / 作为远程 worker 为 API 运行训练任务')
    .option('--server <url>', 'the API, e.g. http://10.0.0.5:8000 (env WEITIAO_SERVER)', process.env.WEITIAO_SERVER)
    .option('--token <key>', 'an API key (env WEITIAO_TOKEN)', process.env.WEITIAO_TOKEN)
    .option('--name <name>', 'this worker\'s name in job records (default: the host name)')
    .option('--methods <list>', 'methods it runs, comma-separated: supervised,dpo,reinforcement (or lora,qlora,full)', 'supervised,dpo,reinforcement')
    .option('--advertise-host <host>', 'the address other workers reach this host at for multi-node runs (torchrun\'s rendezvous; default: the host name)')
    .option('--threads <n>', 'torch threads per engine (default: the engine\'s)', number('threads', 'int'))
    .option('--poll-ms <ms>', 'how often an idle worker asks for work', number('poll-ms', 'int'), 2000)
    .action(async (o, cmd: Command) => {
      if (!o.server) throw new WeitiaoError('invalid_request', '--server (or WEITIAO_SERVER) is required / 需要 --server', { param: 'server' });
      if (!o.token) throw new WeitiaoError('invalid_request', '--token (or WEITIAO_TOKEN) is required / 需要 --token', { param: 'token' });
      const name = o.name === undefined ? undefined : parseWith(WorkerName, o.name, 'name');
      const methods = String(o.methods)
        .split(',')
        .map((m) => m.trim())
        .filter(Boolean)
        .map((m) => parseWith(WorkerMethod, m, 'methods', WorkerMethod.options.join(', ')));
      const home = resolveHome(cmd.optsWithGlobals().home);
      const worker = new RemoteWorker({
        server: o.server,
        token: o.token,
        name,
        home: path.join(home.root, 'worker'),
        methods,
        threads: o.threads ?? null,
        ...(o.advertiseHost ? { advertiseHost: String(o.advertiseHost) } : {}),
        pollMs: o.pollMs,
        log: (line) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${line}\n`),
      });
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signals++;
        if (signals === 1) {
          process.stderr.write(`${sig}: stopping; a running job saves a checkpoint and is queued again (Ctrl-C again: stop at once) / 正在停止\n`);
          void worker.stop();
        } else {
          worker.kill();
          process.exit(130);
        }
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      process.stderr.write(`weitiao worker ${worker.name} → ${o.server} (${methods.join(', ')}; home ${home.root}) / worker 已启动\n`);
      await worker.start();
      process.stderr.write('worker stopped / worker 已停止\n');
    });
}

function parseWith<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false } }, value: string, param: string, allowed?: string): T {
  const parsed = schema.safeParse(value);
  const hint = allowed ? ` (one of ${allowed})` : '';
  if (!parsed.success) throw new WeitiaoError('invalid_request', `--${param}: '${value}' is not valid${hint} / --${param} 的值无效`, { param });
  return parsed.data;
}
