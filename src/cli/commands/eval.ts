/**
 * `weitiao eval`: a model on a chat file (label metrics, or generation metrics with intervals); `--compare`
 * a second model; `--baseline few-shot[:k]` the base zero-shot and few-shot beside the fine-tune, with cost;
 * `--forgetting` the general-ability check; `--report FILE.html` an offline HTML report.
 */
import type { Command } from 'commander';
import { compareWithBaselines, DEFAULT_SHOTS, type BaselineComparison } from '../../eval/baseline.js';
import { checkForgetting, type ForgettingReport } from '../../eval/forgetting.js';
import { compareModels, evaluateModel, writeEvalReport, type EvalReport } from '../../eval/index.js';
import { writeHtmlReport } from '../../eval/report.js';
import { leaderboard, saveEvalResult, type Leaderboard } from '../../eval/results.js';
import path from 'node:path';
import type { MetricValue } from '../../engine/protocol.js';
import { WeitiaoError } from '../../errors.js';
import { ProgressBar } from '../progress.js';
import { fmt, formatLabelMetrics, printJson, table } from '../output.js';
import { number, withContext } from './shared.js';

/** "0.8123 [0.7710, 0.8490]"; BLEU and chrF on their 0–100 scale with two decimals. */
export function formatInterval(m: MetricValue | undefined): string {
  if (!m) return '-';
  const d = m.scale === 100 ? 2 : 4;
  return `${fmt(m.value, d)} [${fmt(m.ci_low, d)}, ${fmt(m.ci_high, d)}]`;
}

function printReport(r: EvalReport): void {
  console.log(`\n${r.model} on ${r.file} (${r.mode === 'labels' ? 'label scoring 标签打分' : 'generation 生成'}, ${fmt(r.examples_per_second, 1)} examples/s)`);
  if (r.valid_loss !== null) console.log(`valid_loss 验证损失 ${fmt(r.valid_loss)}`);
  if (r.label_metrics) console.log(formatLabelMetrics(r.label_metrics));
  if (r.generation_metrics) {
    console.log(`n=${r.n}, 95% bootstrap intervals 置信区间 (tokenizer ${r.generation_metrics.tokenizer})`);
    console.log(table(['metric 指标', 'value [95% CI]'], Object.entries(r.generation_metrics.metrics).map(([k, v]) => [k, formatInterval(v)])));
  }
}

export function formatBaselines(c: BaselineComparison): string {
  const metrics = Object.keys(c.rows[0].metrics);
  const name = (m: string) => (m === 'exact_match' && c.mode === 'labels' ? 'accuracy 准确率' : m);
  const lines = [
    `was fine-tuning worth it? 微调值得吗？ ${c.file} (n=${c.n}, ${c.mode === 'labels' ? 'label scoring 标签打分' : 'generation 生成'}, ${c.shots}-shot from ${c.training_file})`,
    '',
    table(
      ['system 方案', 'model 模型', ...metrics.map(name), 'prompt tokens/req 提示词', 's/req 延迟'],
      c.rows.map((r) => [
        r.system === 'few-shot' ? `few-shot (k=${r.shots})` : r.system,
        r.model,
        ...metrics.map((m) => formatInterval(r.metrics[m])),
        Math.round(r.prompt_tokens),
        fmt(r.seconds_per_example, 3),
      ]),
    ),
    '',
    'fine-tuned minus baseline 微调减基线 (paired bootstrap 95% CI, approximate-randomisation p)',
    table(
      ['baseline 基线', 'metric 指标', 'delta 差值', '95% CI', 'p'],
      c.comparisons.map((t) => [t.baseline, name(t.metric), fmt(t.delta, 4), `[${fmt(t.ci_low, 4)}, ${fmt(t.ci_high, 4)}]`, fmt(t.p_value, 4)]),
    ),
  ];
  return lines.join('\n');
}

export function formatForgetting(r: ForgettingReport): string {
  const sign = (x: number) => (x > 0 ? '+' : '') + fmt(x, 4);
  return [
    `forgetting check 遗忘检查: ${r.model} vs ${r.base_model} on the general-ability set 通用能力集 (n=${r.n})`,
    '',
    table(
      ['', 'base 基础', 'fine-tuned 微调', 'delta 差值'],
      [
        ['contains answer 含正确答案', formatInterval(r.overall.base), formatInterval(r.overall.tuned), `${sign(r.overall.delta)} [${fmt(r.overall.ci_low, 4)}, ${fmt(r.overall.ci_high, 4)}] p=${fmt(r.overall.p_value, 3)}`],
        ['exact match 完全一致', formatInterval(r.exact_match.base), formatInterval(r.exact_match.tuned), sign(r.exact_match.tuned.value - r.exact_match.base.value)],
      ],
    ),
    '',
    table(
      ['category 类别', 'lang 语言', 'n', 'base 基础', 'fine-tuned 微调', 'delta 差值'],
      r.groups.map((g) => [g.category, g.language, g.n, fmt(g.base, 3), fmt(g.tuned, 3), sign(g.delta)]),
    ),
  ].join('\n');
}

/** `few-shot`, `few-shot:8` -> k. */
export function parseBaseline(value: string): number {
  const m = /^few-shot(?::(\d+))?$/.exec(value.trim());
  if (!m || (m[1] !== undefined && Number(m[1]) < 1)) {
    throw new WeitiaoError('invalid_request', `--baseline takes few-shot or few-shot:K (K ≥ 1), not '${value}' / --baseline 应为 few-shot 或 few-shot:K`, { param: 'baseline' });
  }
  return m[1] === undefined ? DEFAULT_SHOTS : Number(m[1]);
}

export function formatLeaderboard(b: Leaderboard): string {
  if (b.rows.length === 0) return `no stored evaluations of this file yet: run weitiao eval --data FILE / 该文件还没有评估结果`;
  const metrics = [...new Set(b.rows.flatMap((r) => Object.keys(r.metrics)))].filter((m) => m !== b.metric);
  return [
    `leaderboard 排行榜: ${b.dataset_name ?? ''} (sha256 ${b.dataset.slice(0, 12)}…), ranked by ${b.metric}`,
    '',
    table(
      ['#', 'system 方案', `${b.metric} [95% CI]`, ...metrics, 'evaluated 评估时间'],
      b.rows.map((r) => [
        r.rank,
        r.system,
        r.ci_low === null ? fmt(r.value, 4) : `${fmt(r.value, 4)} [${fmt(r.ci_low, 4)}, ${fmt(r.ci_high ?? r.value, 4)}]`,
        ...metrics.map((m) => (r.metrics[m] === undefined ? '-' : fmt(r.metrics[m], 4))),
        new Date(r.evaluated_at * 1000).toISOString().slice(0, 16).replace('T', ' '),
      ]),
    ),
  ].join('\n');
}

export function registerEvalCommands(program: Command): void {
  const evalCommand = program
    .command('eval')
    .description('evaluate a base or fine-tuned model on a chat JSONL file / 评估模型')
    // Not required by commander: `weitiao eval leaderboard` has no model.
    .option('--model <model>', 'model id or directory')
    .option('--data <file>', 'chat JSONL; the last assistant message of each example is the expected answer')
    .option('--compare <model>', 'evaluate a second model (e.g. the base) on the same file')
    .option('--baseline <few-shot[:k]>', `the base model zero-shot and with k training examples in its prompt (default k=${DEFAULT_SHOTS}) beside the fine-tune`)
    .option('--training-file <file>', 'where the few-shot examples come from (default: the model job’s training file)')
    .option('--forgetting', 'score the model and its base on the general-ability set and show the delta / 遗忘检查')
    .option('--labels <labels>', "'auto' (score the label set when the answers form one), 'none' (generate), or a,b,c", 'auto')
    .option('--batch-size <n>', 'examples per forward pass', number('batch-size', 'int'), 32)
    .option('--max-examples <n>', 'only the first N examples (the forgetting check: a spread subset of N)', number('max-examples', 'int'))
    .option('--seed <n>', 'few-shot choice and bootstrap seed', number('seed', 'int'), 0)
    .option('--output <file>', 'write the report as JSON')
    .option('--report <file>', 'write an HTML report (offline, inline SVG charts)')
    .option('--json', 'print the report as JSON')
    .action(async (o, cmd: Command) => {
      const labels: string[] | 'auto' | null = o.labels === 'auto' ? 'auto' : o.labels === 'none' ? null : String(o.labels).split(',');
      const shots = o.baseline !== undefined ? parseBaseline(String(o.baseline)) : null;
      if (!o.model) throw new WeitiaoError('invalid_request', 'give --model / 请指定 --model', { param: 'model' });
      if (!o.data && !o.forgetting) {
        throw new WeitiaoError('invalid_request', 'give --data FILE (or --forgetting) / 请指定 --data 文件（或 --forgetting）', { param: 'data' });
      }
      await withContext(cmd, async (ctx) => {
        const bar = new ProgressBar({ label: 'evaluating 评估', total: 0 });
        const onProgress = (p: { current: number; total: number }) => {
          bar.total = p.total;
          bar.update(p.current);
        };
        const common = { file: o.data, labels, batchSize: o.batchSize, maxExamples: o.maxExamples ?? null, onProgress, seed: o.seed };
        const finish = async (value: Parameters<typeof writeHtmlReport>[1], text: () => string) => {
          bar.done();
          // Every result is kept for the leaderboard (weitiao eval leaderboard) and the console.
          await saveEvalResult(ctx, value, o.data ? { datasetName: path.basename(String(o.data)) } : {});
          if (o.output) await writeEvalReport(o.output, value);
          if (o.report) await writeHtmlReport(o.report, value);
          if (o.json) return printJson(value);
          console.log(text());
          if (o.report) console.log(`\nHTML report written to ${o.report} / 报告已写入`);
        };
        if (o.forgetting) {
          const r = await checkForgetting(ctx, { model: o.model, compareWith: o.compare, maxExamples: o.maxExamples ?? null, batchSize: o.batchSize, seed: o.seed, onProgress });
          return finish(r, () => formatForgetting(r));
        }
        if (shots !== null) {
          const c = await compareWithBaselines(ctx, { ...common, model: o.model, shots, trainingFile: o.trainingFile });
          return finish(c, () => formatBaselines(c));
        }
        if (o.compare) {
          const cmp = await compareModels(ctx, { ...common, models: [o.model, o.compare] });
          return finish(cmp, () => {
            for (const r of cmp.reports) printReport(r);
            return `\n${cmp.disagreements.length} examples where the two models disagree / 两个模型预测不同的样本数`;
          });
        }
        const report = await evaluateModel(ctx, { ...common, model: o.model });
        return finish(report, () => {
          printReport(report);
          return o.output ? `\nreport written to ${o.output}` : '';
        });
      });
    });
  evalCommand
    .command('leaderboard')
    .description('every model evaluated on one file, ranked (from stored results) / 同一数据集上所有已评估模型的排行榜')
    .requiredOption('--file <file>', 'the evaluation data: a path or an uploaded file id')
    .option('--json', 'print the leaderboard as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const board = await leaderboard(ctx, o.file);
        // `--json` after the subcommand is taken by `eval`'s own --json (options are not positional).
        if (o.json || cmd.parent?.opts().json) return printJson(board);
        console.log(formatLeaderboard(board));
      });
    });
}
