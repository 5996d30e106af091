/**
 * `weitiao data label|synthesize|pairs`: data made with a teacher model (src/data/teacher). Each run
 * prints its cost estimate first, shows a progress bar with ETA, stops cleanly on Ctrl-C, and resumes
 * when the same command is run again (nothing is requested twice).
 */
import type { Command } from 'commander';
import {
  DEFAULT_API_KEY_ENV,
  labelFile,
  labelReport,
  pairsFile,
  provenanceLines,
  rejectedUnits,
  synthesizeFile,
  type Estimate,
  type RunControls,
  type RunSummary,
} from '../../data/teacher/index.js';
import { WeitiaoError } from '../../errors.js';
import { printJson } from '../output.js';
import { ProgressBar } from '../progress.js';
import { number } from './shared.js';

const list = (s: string) => s.split(/[,，]/u).map((x) => x.trim()).filter(Boolean);

function teacherOptions(c: Command): Command {
  return c
    .requiredOption('--teacher <url>', 'OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (weitiao serve) / 教师模型地址')
    .requiredOption('--model <name>', 'the teacher model at that endpoint / 教师模型名')
    .option('--api-key-env <var>', `environment variable holding the endpoint's API key (never stored) / 存放密钥的环境变量`, DEFAULT_API_KEY_ENV)
    .requiredOption('-o, --output <file>', 'output JSONL (beside it: .provenance.jsonl and .state.jsonl) / 输出文件')
    .option('--concurrency <n>', 'requests in flight at once / 并发请求数', number('concurrency', 'int'), 4)
    .option('--rps <n>', 'requests started per second, 0 = no limit / 每秒请求数上限', number('rps'), 0)
    .option('--retries <n>', 'retries on 429/5xx/network errors (honouring retry-after) / 重试次数', number('retries', 'int'), 6)
    .option('--dry-run', 'print the cost estimate and stop / 只显示成本估算')
    .option('--json', 'print the summary as JSON');
}

function estimateLine(e: Estimate): string {
  return (
    `plan 计划: ${e.requests} request(s) to send 个请求 (${e.units_done}/${e.units} already done 已完成), ` +
    `~${e.prompt_tokens_estimated} prompt tokens (estimated 估算), ≤ ${e.completion_tokens_max} completion tokens (max 上限)`
  );
}

/** Runs a teacher job with the estimate, a progress bar and Ctrl-C → clean stop; prints the summary. */
async function runWithTerminal(label: string, o: Record<string, unknown>, start: (c: RunControls) => Promise<RunSummary>, extra?: (s: RunSummary) => Record<string, unknown>): Promise<void> {
  // First Ctrl-C: take no new work, let the requests in flight finish and be journaled (nothing is asked
  // twice on resume). Second Ctrl-C: abandon them too.
  const stop = new AbortController();
  const controller = new AbortController();
  const cancelled = () => new WeitiaoError('cancelled', 'stopped by Ctrl-C; run the same command again to resume / 已中断，重新运行同一命令即可续跑');
  const onSigint = () => {
    if (!stop.signal.aborted) {
      process.stderr.write('\nstopping after the requests in flight (Ctrl-C again to abandon them) / 正在等待进行中的请求完成，再按 Ctrl-C 立即停止\n');
      stop.abort(cancelled());
    } else controller.abort(cancelled());
  };
  process.on('SIGINT', onSigint);
  let bar: ProgressBar | null = null;
  try {
    const summary = await start({
      output: String(o.output),
      teacher: {
        base_url: String(o.teacher),
        model: String(o.model),
        api_key_env: String(o.apiKeyEnv),
        concurrency: o.concurrency as number,
        rps: o.rps as number,
        retries: o.retries as number,
      },
      signal: controller.signal,
      stop: stop.signal,
      onEstimate: (e) => {
        if (!o.json) process.stderr.write(estimateLine(e) + '\n');
        return !o.dryRun;
      },
      onProgress: (p) => {
        if (o.json) return;
        bar ??= new ProgressBar({ label, total: p.total });
        bar.total = p.total;
        bar.update(p.done, `kept ${p.written} rejected ${p.rejected}`);
      },
    });
    (bar as ProgressBar | null)?.done();
    const rejected = summary.started ? rejectedUnits(summary.files) : [];
    const more = summary.started && extra ? extra(summary) : {};
    if (o.json) return printJson({ ...summary, rejected, ...more });
    if (!summary.started) return;
    const p = summary.progress!;
    console.log(`wrote 写入 ${summary.files.output}: ${p.written} line(s) 行; provenance 来源记录: ${summary.files.provenance}`);
    console.log(`rejected 已剔除: ${p.rejected}; requests sent this run 本次请求: ${summary.requests_sent}, retries 重试: ${summary.retries}`);
    for (const r of rejected.slice(0, 20)) process.stderr.write(`  rejected ${r.key}: ${r.reason}\n`);
    if (rejected.length > 20) process.stderr.write(`  … and ${rejected.length - 20} more (--json)\n`);
    for (const [k, v] of Object.entries(more)) console.log(`${k}: ${JSON.stringify(v)}`);
  } finally {
    (bar as ProgressBar | null)?.done();
    process.off('SIGINT', onSigint);
  }
}

/** Registers the teacher commands in the `data` group. */
export function registerTeacherCommands(data: Command): void {
  teacherOptions(
    data
      .command('label <file>')
      .description('fill a missing answer column with a teacher model, constrained to a label set / 用教师模型补全标签列')
      .requiredOption('--column <name>', 'column with the text to label / 待标注文本所在列')
      .requiredOption('--labels <list>', 'the label set, e.g. 好评,差评 / 标签集')
      .option('--answer-column <name>', 'column to fill (rows that have it keep it) / 要补全的列', 'label')
      .option('--instruction <text>', 'extra instruction before the label list / 额外说明')
      .option('--no-logprobs', 'do not ask for logprobs (no confidence) / 不请求 logprobs')
      .option('--on-unknown <mode>', 'answers matching no label: drop | keep (closest label, flagged) / 无法匹配标签的回答', 'drop')
      .option('--prompt <mode>', "auto: a weitiao fine-tune trained on these labels is asked in its training prompt's shape | instruction: always the generic label prompt / 提示方式", 'auto'),
  ).action(async (file: string, o) => {
    if (!['auto', 'instruction'].includes(o.prompt)) throw new WeitiaoError('invalid_request', `--prompt must be auto or instruction / 须为 auto 或 instruction`, { param: 'prompt' });
    if (!['drop', 'keep'].includes(o.onUnknown)) throw new WeitiaoError('invalid_request', `--on-unknown must be drop or keep / 须为 drop 或 keep`, { param: 'on_unknown' });
    await runWithTerminal(
      'label 标注',
      o,
      (c) => labelFile({ input: file, column: o.column, labels: list(o.labels), answer_column: o.answerColumn, instruction: o.instruction, logprobs: o.logprobs, on_unknown: o.onUnknown, ...(o.prompt === 'auto' ? {} : { prompt: o.prompt }) }, c), // auto left out: the run settings of earlier runs stay equal
      (s) => ({ labels: labelReport(provenanceLines(s.files)) }),
    );
  });

  teacherOptions(
    data
      .command('synthesize')
      .description('write new chat examples from a task description and a few seeds / 由任务描述和种子样本生成新样本')
      .requiredOption('--task <text>', 'what the examples are for / 任务描述')
      .requiredOption('--seeds <file>', 'a few chat examples (JSONL) / 种子样本')
      .requiredOption('-n, --count <n>', 'examples to keep / 生成数量', number('n', 'int'))
      .option('--topics <list>', 'topics to rotate through, comma-separated / 轮换的主题')
      .option('--personas <list>', 'personas to rotate through (default: six built in) / 轮换的角色')
      .option('--system <text>', "system message of each example (default: the seeds' shared one)")
      .option('--max-tokens <n>', 'completion tokens per request', number('max-tokens', 'int'), 512)
      .option('--temperature <t>', 'sampling temperature', number('temperature'), 0.9)
      .option('--seed <n>', 'base of the per-request sampling seed', number('seed', 'int'), 42)
      .option('--near-dup <jaccard>', 'drop a new example this similar to a kept one (character 3-shingles)', number('near-dup'), 0.7)
      .option('--max-requests <n>', 'stop after this many requests (default 2n+10)', number('max-requests', 'int')),
  ).action(async (o) => {
    await runWithTerminal('synthesize 生成', o, (c) =>
      synthesizeFile(
        {
          task: o.task,
          seeds_file: o.seeds,
          n: o.count,
          topics: o.topics ? list(o.topics) : undefined,
          personas: o.personas ? list(o.personas) : undefined,
          system: o.system,
          max_tokens: o.maxTokens,
          temperature: o.temperature,
          seed: o.seed,
          near_dup_threshold: o.nearDup,
          max_requests: o.maxRequests,
        },
        c,
      ),
    );
  });

  teacherOptions(
    data
      .command('pairs <file>')
      .description("DPO preference pairs: the teacher's answer preferred over the student's (OpenAI preference JSONL) / 生成偏好数据对")
      .requiredOption('--student <model>', 'the student model (the one being fine-tuned) / 学生模型')
      .option('--student-url <url>', "the student's base URL (default: the teacher's) / 学生模型地址")
      .option('--max-tokens <n>', 'completion tokens per answer', number('max-tokens', 'int'), 256)
      .option('--temperature <t>', 'sampling temperature of both answers', number('temperature'), 0),
  ).action(async (file: string, o) => {
    await runWithTerminal('pairs 偏好对', o, (c) =>
      pairsFile({ input: file, student: { model: o.student, base_url: o.studentUrl }, max_tokens: o.maxTokens, temperature: o.temperature }, c),
    );
  });
}
