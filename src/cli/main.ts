/**
 * The `weitiao` command: a thin shell over the services. Each command group lives in commands/;
 * every failure is a WeitiaoError printed as one readable line, with the exit code from src/errors.ts.
 */
import { Command, CommanderError } from 'commander';
import { WeitiaoError } from '../errors.js';
import { registerDataCommands } from './commands/data.js';
import { registerModelCommands } from './commands/models.js';
import { registerTrainCommands } from './commands/train.js';
import { registerJobCommands } from './commands/jobs.js';
import { registerEvalCommands } from './commands/eval.js';
import { registerChatCommands } from './commands/chat.js';
import { registerServeCommands } from './commands/serve.js';
import { registerEstimateCommands } from './commands/estimate.js';
import { registerGraderCommands } from './commands/graders.js';
import { registerDoctorCommands } from './commands/doctor.js';
import { registerBackupCommands } from './commands/backup.js';
import { registerExportCommands } from './commands/export.js';
import { registerProjectCommands } from './commands/projects.js';
import { registerTeacherCommands } from './commands/teacher.js';
import { registerWorkerCommands } from './commands/worker.js';

const program = new Command('weitiao')
  .description('微调 weitiao: fine-tune open LLMs on your own data, on your own machines')
  .option('--home <dir>', 'state directory (store, files, models, checkpoints); default $WEITIAO_HOME or ~/.weitiao')
  .option('--project <id>', 'act as admin of this project (default: default) / 以该项目管理员身份操作')
  .showHelpAfterError()
  .exitOverride();

registerDataCommands(program);
// label / synthesize / pairs join the `data` group (src/cli/commands/teacher.ts)
registerTeacherCommands(program.commands.find((c) => c.name() === 'data')!);
registerModelCommands(program);
registerTrainCommands(program);
registerJobCommands(program);
registerEvalCommands(program);
registerChatCommands(program);
registerServeCommands(program);
registerEstimateCommands(program);
registerGraderCommands(program);
registerDoctorCommands(program);
registerBackupCommands(program);
registerExportCommands(program);
registerProjectCommands(program);
registerWorkerCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
  const e = WeitiaoError.from(err);
  process.stderr.write(`\nerror 错误 [${e.code}]: ${e.message}\n`);
  if (e.code === 'internal_error' && process.env.WEITIAO_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  process.exit(e.exitCode);
}
