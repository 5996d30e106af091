/** `weitiao backup DIR` and `weitiao restore DIR [--force]`: a consistent copy of the whole home, and back. */
import type { Command } from 'commander';
import { backupHome, restoreHome } from '../../store/backup.js';
import { printJson } from '../output.js';
import { withContext } from './shared.js';

export function registerBackupCommands(program: Command): void {
  program
    .command('backup <dir>')
    .description('copy the store (SQLite backup API, safe while the server runs) and its files, models and jobs into DIR / 在线备份')
    .option('--json', 'print the backup manifest as JSON')
    .action(async (dir: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const m = await backupHome(ctx, dir);
        if (o.json) return printJson(m);
        console.log(
          `backed up ${m.counts.files} files, ${m.counts.models} models, ${m.counts.jobs} jobs, ${m.counts.checkpoints} checkpoints ` +
            `(${(m.bytes / 1e6).toFixed(1)} MB) into ${dir} / 备份完成`,
        );
        for (const e of m.external) console.log(`not copied (registered from outside the home): ${e}`);
      });
    });

  program
    .command('restore <dir>')
    .description('restore a backup into the home (stop the server first); refuses a home that is not empty without --force / 从备份恢复')
    .option('--force', "restore over a home that is not empty (its contents are moved to <home>/lost+found/, not deleted)")
    .option('--json', 'print the result as JSON')
    .action((dir: string, o, cmd: Command) => {
      // No context: opening one would create a store in the home before it is checked for emptiness.
      const r = restoreHome(cmd.optsWithGlobals().home, dir, { force: Boolean(o.force) });
      if (o.json) return printJson(r);
      console.log(`restored ${r.manifest.counts.files} files, ${r.manifest.counts.models} models, ${r.manifest.counts.jobs} jobs into ${r.home} / 恢复完成`);
      if (r.previous) console.log(`the home's previous contents are in ${r.previous}`);
    });
}
