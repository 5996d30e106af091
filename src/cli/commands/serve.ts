/** `weitiao serve` (the OpenAI-compatible API with its worker) and `weitiao keys` (API keys). */
import type { Command } from 'commander';
import { startServer } from '../../api/index.js';
import { openContext } from '../../context.js';
import { createKey, listKeys, revokeKey } from '../../keys/index.js';
import { parseRole } from '../../projects/index.js';
import { formatTime, printJson, table } from '../output.js';
import { number, withContext } from './shared.js';

export function registerServeCommands(program: Command): void {
  program
    .command('serve')
    .description('serve the OpenAI-compatible API (and the web console) with an in-process job worker / 启动 API 服务')
    .option('--host <host>', 'address to listen on (env WEITIAO_HOST)', process.env.WEITIAO_HOST ?? '127.0.0.1')
    .option('--port <port>', 'port (env WEITIAO_PORT)', number('port', 'int'), Number(process.env.WEITIAO_PORT ?? 8000))
    .option('--no-auth', 'accept requests without an API key (local use only!)')
    .option('--no-worker', 'do not run jobs in this process')
    .option('--max-upload-mb <n>', 'largest file upload in MB', number('max-upload-mb', 'int'), 512)
    .action(async (o, cmd: Command) => {
      // The context stays open for the server's lifetime; startServer closes down on SIGTERM/SIGINT.
      const ctx = openContext({ home: cmd.optsWithGlobals().home });
      const server = await startServer(ctx, {
        host: o.host,
        port: o.port,
        auth: o.auth,
        worker: o.worker,
        maxUploadBytes: o.maxUploadMb * 1024 * 1024,
      });
      process.stderr.write(`weitiao API at ${server.url}/v1 (home ${ctx.home.root})\n`);
      if (o.auth && listKeys(ctx, { activeOnly: true }).length === 0) {
        process.stderr.write('no API key yet: create one with `weitiao keys create <name>` / 尚无 API 密钥，请先创建\n');
      }
    });

  const keys = program.command('keys').description('API keys / API 密钥');
  keys
    .command('create <name>')
    .description('create an API key in --project (default: default); it is shown once')
    .option('--role <role>', 'admin | member | read-only | worker (a remote worker: only /v1/weitiao/workers/*)', 'admin')
    .action(async (name: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const key = createKey(ctx, { name, role: parseRole(o.role) });
        process.stderr.write(`created ${key.id} (${key.name}, ${key.role} of ${key.project}). Store the key now, it is not shown again / 请立即保存，之后不再显示:\n`);
        console.log(key.key);
      });
    });
  keys
    .command('list')
    .option('--json', 'print as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const list = listKeys(ctx);
        if (o.json) return printJson(list);
        console.log(
          table(
            ['id', 'name', 'project', 'role', 'prefix', 'created', 'last used', 'revoked'],
            list.map((k) => [k.id, k.name, k.project, k.role, k.prefix + '…', formatTime(k.created_at), formatTime(k.last_used_at), formatTime(k.revoked_at)]),
          ),
        );
      });
    });
  keys
    .command('revoke <key>')
    .description('revoke a key by id or prefix')
    .action(async (id: string, _o, cmd: Command) => {
      await withContext(cmd, (ctx) => console.log(`revoked ${revokeKey(ctx, id).id}`));
    });
}
