/** `weitiao jobs list|show|events|checkpoints|cancel|pause|resume`: fine-tuning jobs, after any restart. */
import type { Command } from 'commander';
import { cancelJob, listJobCheckpoints, listJobEvents, listJobs, pauseJob, resumeJob, retrieveJob, type FineTuningJob } from '../../jobs/index.js';
import { describeTrainingControls } from '../../hyperparameters/index.js';
import { fmt, formatLabelMetrics, formatTime, printJson, table } from '../output.js';
import { number, withContext } from './shared.js';
import { runInForeground } from './train.js';
import { formatForgetting } from './eval.js';
import { jobForgettingCheck } from '../../eval/results.js';

function progressOf(job: FineTuningJob): string {
  const p = job.weitiao.progress;
  return p && p.total_steps ? `${p.step}/${p.total_steps}` : '-';
}

export function registerJobCommands(program: Command): void {
  const jobs = program.command('jobs').description('fine-tuning jobs / 微调任务');

  jobs
    .command('list')
    .option('--limit <n>', 'how many', number('limit', 'int'), 20)
    .option('--after <job>', 'page after this job id')
    .option('--json', 'print as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const page = listJobs(ctx, { limit: o.limit, after: o.after });
        if (o.json) return printJson(page);
        if (page.data.length === 0) return console.log('no jobs yet / 暂无任务');
        console.log(
          table(
            ['id', 'status 状态', 'model 基座', 'progress 进度', 'fine-tuned model 微调模型', 'created 创建时间'],
            page.data.map((j) => [j.id, j.status, j.model, progressOf(j), j.fine_tuned_model ?? '-', formatTime(j.created_at)]),
          ),
        );
        if (page.has_more) console.log(`more: weitiao jobs list --after ${page.last_id}`);
      });
    });

  jobs
    .command('show <job>')
    .option('--json', 'print as JSON')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const job = retrieveJob(ctx, id);
        if (o.json) return printJson(job);
        const h = job.weitiao.hyperparameters;
        console.log(
          [
            `${job.id}  ${job.status}`,
            `model 基座: ${job.model}   fine-tuned 微调模型: ${job.fine_tuned_model ?? '-'}`,
            `training file: ${job.training_file}   validation file: ${job.validation_file ?? '-'}`,
            `progress 进度: ${progressOf(job)}   trained tokens: ${job.trained_tokens ?? '-'}`,
            h
              ? `hyperparameters: epochs ${h.n_epochs}, batch ${h.batch_size}, lr ${h.learning_rate}, weight decay ${h.weight_decay}, max grad norm ${h.max_grad_norm}, ${h.lr_scheduler} schedule${h.auto.length ? ` (auto: ${h.auto.join(', ')})` : ''}`
              : '',
            `controls: ${describeTrainingControls(job.weitiao.controls)}`,
            `created ${formatTime(job.created_at)}   finished ${formatTime(job.finished_at)}`,
            job.error ? `error 错误: [${job.error.code}] ${job.error.message}${job.error.param ? ` (param ${job.error.param})` : ''}` : '',
          ]
            .filter(Boolean)
            .join('\n'),
        );
        if (job.weitiao.label_metrics) console.log('\n' + formatLabelMetrics(job.weitiao.label_metrics));
        const mix = job.metadata?.['weitiao.mix_general'];
        if (mix) console.log(`\ngeneral data mixed in 混入通用数据: ${mix}`);
        const check = jobForgettingCheck(ctx, job.id);
        if (check) console.log('\n' + formatForgetting(check));
      });
    });

  jobs
    .command('events <job>')
    .description('the job\'s events, oldest first')
    .option('--limit <n>', 'how many', number('limit', 'int'), 100)
    .option('--after <event>', 'page after this event id')
    .option('--json', 'print as JSON')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const page = listJobEvents(ctx, id, { limit: o.limit, after: o.after, order: 'asc' });
        if (o.json) return printJson(page);
        for (const e of page.data) {
          const d = e.type === 'metrics' && e.data ? ` ${JSON.stringify(e.data)}` : '';
          console.log(`${formatTime(e.created_at)} ${e.level.padEnd(5)} ${e.message}${d}`);
        }
        if (page.has_more) console.log(`more: weitiao jobs events ${id} --after ${page.last_id}`);
      });
    });

  jobs
    .command('checkpoints <job>')
    .option('--json', 'print as JSON')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const page = listJobCheckpoints(ctx, id, { limit: 100 });
        if (o.json) return printJson(page);
        console.log(
          table(
            ['step', 'train_loss', 'valid_loss', 'model id (usable for chat/eval)'],
            page.data.map((c) => [c.step_number, fmt(c.metrics.train_loss), fmt(c.metrics.valid_loss), c.fine_tuned_model_checkpoint]),
          ),
        );
      });
    });

  jobs.command('cancel <job>').action(async (id: string, _o, cmd: Command) => {
    await withContext(cmd, async (ctx) => console.log(`${id}: ${(await cancelJob(ctx, id)).status}`));
  });
  jobs.command('pause <job>').action(async (id: string, _o, cmd: Command) => {
    await withContext(cmd, (ctx) => console.log(`${id}: ${pauseJob(ctx, id).status}`));
  });
  jobs
    .command('resume <job>')
    .description('queue a paused job again, or a failed one from its last good checkpoint (a running `weitiao serve` picks it up); --run runs it here')
    .option('--run', 'run it in this process now, with a progress bar')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const job = resumeJob(ctx, id);
        if (!o.run) return console.log(`${id}: ${job.status}`);
        const done = await runInForeground(ctx, id, { json: false });
        console.log(`${id}: ${done.status}${done.fine_tuned_model ? ` → ${done.fine_tuned_model}` : ''}`);
      });
    });
}
