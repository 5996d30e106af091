/** `weitiao eval`: accuracy, per-class metrics and the confusion matrix of a model on a chat file. */
import type { Command } from 'commander';
import { compareModels, evaluateModel, writeEvalReport, type EvalReport } from '../../eval/index.js';
import { ProgressBar } from '../progress.js';
import { fmt, formatLabelMetrics, printJson } from '../output.js';
import { number, withContext } from './shared.js';

function printReport(r: EvalReport): void {
  console.log(`\n${r.model} on ${r.file} (${r.mode === 'labels' ? 'label scoring 标签打分' : 'generation 生成'}, ${fmt(r.examples_per_second, 1)} examples/s)`);
  if (r.valid_loss !== null) console.log(`valid_loss 验证损失 ${fmt(r.valid_loss)}`);
  if (r.label_metrics) console.log(formatLabelMetrics(r.label_metrics));
  else console.log(`exact-match accuracy 准确率 ${fmt(r.predictions.filter((p) => p.expected === p.predicted).length / Math.max(r.n, 1))} (n=${r.n})`);
}

export function registerEvalCommands(program: Command): void {
  program
    .command('eval')
    .description('evaluate a base or fine-tuned model on a chat JSONL file / 评估模型')
    .requiredOption('--model <model>', 'model id or directory')
    .requiredOption('--data <file>', 'chat JSONL; the last assistant message of each example is the expected answer')
    .option('--compare <model>', 'evaluate a second model (e.g. the base) on the same file')
    .option('--labels <labels>', "'auto' (score the label set when the answers form one), 'none' (generate), or a,b,c", 'auto')
    .option('--batch-size <n>', 'examples per forward pass', number('batch-size', 'int'), 32)
    .option('--max-examples <n>', 'only the first N examples', number('max-examples', 'int'))
    .option('--output <file>', 'write the report as JSON')
    .option('--json', 'print the report as JSON')
    .action(async (o, cmd: Command) => {
      const labels: string[] | 'auto' | null = o.labels === 'auto' ? 'auto' : o.labels === 'none' ? null : String(o.labels).split(',');
      await withContext(cmd, async (ctx) => {
        const bar = new ProgressBar({ label: 'evaluating 评估', total: 0 });
        const common = {
          file: o.data,
          labels,
          batchSize: o.batchSize,
          maxExamples: o.maxExamples ?? null,
          onProgress: (p: { current: number; total: number }) => {
            bar.total = p.total;
            bar.update(p.current);
          },
        };
        if (o.compare) {
          const cmp = await compareModels(ctx, { ...common, models: [o.model, o.compare] });
          bar.done();
          if (o.output) await writeEvalReport(o.output, cmp);
          if (o.json) return printJson(cmp);
          for (const r of cmp.reports) printReport(r);
          console.log(`\n${cmp.disagreements.length} examples where the two models disagree / 两个模型预测不同的样本数`);
          return;
        }
        const report = await evaluateModel(ctx, { ...common, model: o.model });
        bar.done();
        if (o.output) await writeEvalReport(o.output, report);
        if (o.json) return printJson(report);
        printReport(report);
        if (o.output) console.log(`\nreport written to ${o.output}`);
      });
    });
}
