/** `weitiao data prepare|validate|stats`: CSV/TSV/JSONL/XLSX → validated chat examples, split reproducibly. */
import type { Command } from 'commander';
import { datasetStats, formatIssue, prepareDataset, reportError, validateChatFile, type Issue } from '../../data/index.js';
import { WeitiaoError } from '../../errors.js';
import { materializeModel } from '../../models/index.js';
import { fmt, printJson, table } from '../output.js';
import { number, withContext } from './shared.js';

const MAX_PRINTED_ISSUES = 50;

function printIssues(errors: Issue[], warnings: Issue[]): void {
  const all = [...errors, ...warnings];
  for (const issue of all.slice(0, MAX_PRINTED_ISSUES)) process.stderr.write(formatIssue(issue) + '\n');
  if (all.length > MAX_PRINTED_ISSUES) {
    process.stderr.write(`… and ${all.length - MAX_PRINTED_ISSUES} more (use --json for all) / 其余 ${all.length - MAX_PRINTED_ISSUES} 条请用 --json 查看\n`);
  }
}

export function registerDataCommands(program: Command): void {
  const data = program.command('data').description('prepare, validate and describe training data / 数据准备');

  data
    .command('prepare <input>')
    .description('turn CSV/TSV/JSONL rows into chat examples and split them into train.jsonl and validation.jsonl')
    .requiredOption('-o, --output <dir>', 'output directory')
    .option('--system <template>', 'system message, may use {column}')
    .option('--user <template>', 'user message template, e.g. "{review}"')
    .option('--assistant <template>', 'assistant message template, e.g. "{label}"')
    .option('--label-map <map>', 'e.g. 1=好评,0=差评')
    .option('--label-column <column>', 'column the label map applies to (default: the assistant template\'s column)')
    .option('--validation <fraction>', 'share of examples for validation', number('validation'), 0)
    .option('--seed <n>', 'split seed', number('seed', 'int'), 42)
    .option('--format <format>', 'csv | tsv | jsonl | xlsx | parquet | arrow (a Hugging Face datasets folder or .arrow file; default: from the name)')
    .option('--sheet <sheet>', 'xlsx: sheet name or 1-based number (default: the first)')
    .option('--header-row <n>', 'xlsx: the row with the column names', number('header_row', 'int'), 1)
    .option('--encoding <encoding>', 'auto | utf8 | gb18030 | gbk', 'auto')
    .option('--no-stratify', 'do not stratify the split by answer')
    .option('--conflicts <severity>', 'same prompt, different answers: warning | error', 'warning')
    .option('--on-invalid <mode>', 'bad rows: error (write nothing) | skip (leave them out, listed in the report)', 'error')
    .option('--dedupe', 'leave out examples whose prompt nearly repeats a kept one (listed with the line kept)')
    .option('--model <model>', 'check lengths with this base model\'s tokenizer')
    .option('--long-examples <mode>', 'examples longer than the model\'s max length: truncate (warn; training keeps the answer) | skip | error', 'truncate')
    .option('--json', 'print the report as JSON')
    .action(async (input: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const result = await prepareDataset({
          long_examples: o.longExamples,
          input,
          output_dir: o.output,
          system: o.system,
          user: o.user,
          assistant: o.assistant,
          label_map: o.labelMap,
          label_column: o.labelColumn,
          validation: o.validation,
          seed: o.seed,
          format: o.format,
          ...(o.sheet !== undefined && { sheet: /^\d+$/.test(o.sheet) ? Number(o.sheet) : o.sheet }),
          header_row: o.headerRow,
          encoding: o.encoding,
          stratify: o.stratify ? 'auto' : false,
          conflicts: o.conflicts,
          on_invalid: o.onInvalid,
          dedupe: o.dedupe === true,
          model_dir: o.model ? (await materializeModel(ctx, o.model)).basePath : undefined,
        });
        if (o.json) printJson(result);
        else {
          printIssues(result.errors, result.warnings);
          for (const issue of result.skipped.slice(0, MAX_PRINTED_ISSUES)) process.stderr.write(`skipped 已跳过: ${formatIssue(issue)}\n`);
          if (result.skipped.length > MAX_PRINTED_ISSUES) process.stderr.write(`… and ${result.skipped.length - MAX_PRINTED_ISSUES} more (use --json for all) / 其余请用 --json 查看\n`);
          console.log(`read ${result.rows} rows (${result.format}, ${result.encoding}) → ${result.examples} examples 条样本`);
          const deduped = result.skipped.filter((s) => s.code === 'near_duplicate').length;
          if (result.skipped_rows - deduped) console.log(`skipped ${result.skipped_rows - deduped} invalid row(s) / 跳过 ${result.skipped_rows - deduped} 行无效数据`);
          if (deduped) console.log(`left out ${deduped} near duplicate(s) / 去除 ${deduped} 条近似重复样本`);
          if (result.label_set) console.log(`answers form a label set 标签集: ${result.label_set.join(', ')}${result.stratified ? ' (stratified split 分层划分)' : ''}`);
          for (const part of [result.train, result.validation]) {
            if (!part) continue;
            const counts = part.label_counts ? '  ' + Object.entries(part.label_counts).map(([k, v]) => `${k}=${v}`).join(' ') : '';
            console.log(`wrote ${part.file}: ${part.examples} examples${counts}`);
          }
        }
        const err = reportError(result);
        if (err) throw new WeitiaoError('invalid_file', `nothing was written: ${result.errors.length} error(s) / 有错误，未写入任何文件。${err.message}`, err);
      });
    });

  data
    .command('validate <file>')
    .description('check a chat JSONL file: every problem with its line and field (errors exit non-zero)')
    .option('--model <model>', 'count tokens with this base model\'s tokenizer and check the max length')
    .option('--max-length <n>', 'max tokens per example (default: the model\'s)', number('max-length', 'int'))
    .option('--conflicts <severity>', 'same prompt, different answers: warning | error', 'warning')
    .option('--json', 'print the report as JSON')
    .action(async (file: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const report = await validateChatFile(file, {
          model_dir: o.model ? (await materializeModel(ctx, o.model)).basePath : undefined,
          max_length: o.maxLength,
          conflicts: o.conflicts,
        });
        if (o.json) printJson(report);
        else {
          printIssues(report.errors, report.warnings);
          console.log(`${report.file}: ${report.examples} examples, ${report.errors.length} errors 错误, ${report.warnings.length} warnings 警告`);
        }
        const err = reportError(report);
        if (err) throw err;
      });
    });

  data
    .command('stats <file>')
    .description('example count, tokens per example, answer distribution, estimated trained tokens')
    .option('--model <model>', 'count with this base model\'s tokenizer (else characters)')
    .option('--epochs <n>', 'epochs for the trained-token estimate', number('epochs', 'int'), 1)
    .option('--json', 'print as JSON')
    .action(async (file: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const s = await datasetStats(file, { model_dir: o.model ? (await materializeModel(ctx, o.model)).basePath : undefined, epochs: o.epochs });
        if (o.json) return printJson(s);
        console.log(`${s.file}: ${s.examples} examples 条样本${s.invalid_examples ? ` (${s.invalid_examples} invalid skipped)` : ''}`);
        if (s.tokens_per_example) {
          const t = s.tokens_per_example;
          console.log(`${s.token_unit} per example 每条${s.token_unit === 'tokens' ? ' token 数' : '字符数'}: min ${t.min}  mean ${fmt(t.mean, 1)}  p50 ${t.p50}  p95 ${t.p95}  max ${t.max}`);
        }
        if (s.over_max_length) console.log(`over the max length ${s.max_length}: ${s.over_max_length}`);
        console.log(`total ${s.token_unit}: ${s.total_tokens} (assistant 回答: ${s.total_assistant_tokens}); × ${s.epochs} epoch(s) ≈ ${s.estimated_trained_tokens} trained 训练 ${s.token_unit}`);
        if (s.answer_distribution) {
          console.log('\nanswer distribution 答案分布');
          console.log(table(['answer', 'count', 'share'], s.answer_distribution.map((a) => [a.answer, a.count, fmt(a.share, 3)])));
        } else {
          console.log(`${s.distinct_answers} distinct answers (not a label set) / 答案不构成标签集`);
        }
      });
    });
}
