/** `weitiao projects create|list` and `weitiao audit` (src/projects): the CLI acts as admin of `--project`. */
import type { Command } from 'commander';
import { listAudit } from '../../projects/audit.js';
import { createProject, listProjects } from '../../projects/index.js';
import { formatTime, printJson, table } from '../output.js';
import { number, withContext } from './shared.js';

export function registerProjectCommands(program: Command): void {
  const projects = program.command('projects').description('projects: each has its own files, jobs, models and keys / 项目');
  projects
    .command('create <id>')
    .description('create a project (then: weitiao --project <id> keys create <name> --role admin)')
    .option('--description <text>', 'what the project is for')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const p = createProject(ctx, { id, description: o.description });
        console.log(`created project ${p.id} / 已创建项目`);
      });
    });
  projects
    .command('list')
    .option('--json', 'print as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const list = listProjects(ctx).data;
        if (o.json) return printJson(list);
        console.log(table(['id', 'created', 'description'], list.map((p) => [p.id, formatTime(p.created_at), p.description])));
      });
    });

  program
    .command('audit')
    .description("the project's audit log: every mutating API request, newest first / 审计日志")
    .option('--limit <n>', 'entries to show', number('limit', 'int'), 50)
    .option('--json', 'print as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const list = listAudit(ctx, { limit: o.limit }).data;
        if (o.json) return printJson(list);
        console.log(
          table(
            ['when', 'key', 'method', 'route', 'object', 'from', 'status'],
            list.map((e) => [formatTime(e.created_at), e.key_name ?? '(local)', e.method, e.route, e.object_id ?? '', e.remote_addr ?? '', String(e.status)]),
          ),
        );
      });
    });
}
