/** `weitiao doctor [--repair]`: does the store agree with the home directory? Exit 0 when it does, 1 when problems remain. */
import type { Command } from 'commander';
import { checkIntegrity, integritySummary, repairIntegrity } from '../../store/integrity.js';
import { printJson, table } from '../output.js';
import { withContext } from './shared.js';

export function registerDoctorCommands(program: Command): void {
  program
    .command('doctor')
    .description('check that every row has its files and every folder its row; --repair fixes what is safe / 检查存储与数据目录是否一致')
    .option('--repair', 'delete rows whose files are gone (unless an unfinished job needs them); move folders without rows to <home>/lost+found/')
    .option('--json', 'print as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const report = o.repair ? repairIntegrity(ctx) : checkIntegrity(ctx);
        if (o.json) printJson(report);
        else if (!report.findings.length) console.log(integritySummary(report));
        else {
          console.log(
            table(
              ['problem 问题', 'object 对象', 'path 位置', o.repair ? 'done 处理' : '--repair would 修复方式'],
              report.findings.map((f) => [f.kind, f.id ?? '-', f.path, o.repair && f.repaired ? `done: ${f.repair}` : f.repair]),
            ),
          );
          console.log('');
          for (const f of report.findings) console.log(`- ${f.message}`);
          if (!o.repair && report.findings.some((f) => f.repairable)) console.log('\nrun `weitiao doctor --repair` to fix what is safe / 运行 weitiao doctor --repair 修复');
        }
        if (!report.ok) process.exitCode = 1;
      });
    });
}
