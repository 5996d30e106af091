/** `weitiao export`: a model as a Hugging Face folder, a GGUF file or an Ollama bundle, checked afterwards. */
import path from 'node:path';
import type { Command } from 'commander';
import { GgufQuantization } from '../../engine/index.js';
import { ERROR_CODES, WeitiaoError, type ErrorCode } from '../../errors.js';
import { createExport, ExportFormat, waitForExport, type ExportObject } from '../../export/index.js';
import { ProgressBar } from '../progress.js';
import { printJson, table } from '../output.js';
import { number, withContext } from './shared.js';

const pct = (x: number | null) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`);

/** The check as a table, then its first difference. */
export function formatCheck(check: NonNullable<ExportObject['check']>): string {
  const lines = [`post-export check 导出检查: ${check.status.toUpperCase()} — ${check.reason}`];
  if (check.status === 'skipped') return lines.join('\n');
  const label = check.mode === 'labels' ? 'label agreement 标签一致率' : 'exact-match agreement 完全一致率';
  lines.push(
    table(
      ['', 'trained model 训练模型 (engine)', `export 导出 (${check.artifact.backend})`],
      [
        ['examples 样本', check.n, check.n],
        ['accuracy 准确率', pct(check.engine.accuracy), pct(check.artifact.accuracy)],
        [label, pct(check.agreement), `threshold 阈值 ${pct(check.threshold)}`],
      ],
    ),
  );
  const d = check.first_difference;
  if (d) {
    lines.push(`first difference 第一处不同 (#${d.index}): ${JSON.stringify(d.prompt)}`);
    lines.push(`  expected 期望: ${JSON.stringify(d.expected)}`, `  engine   引擎: ${JSON.stringify(d.engine)}`, `  export   导出: ${JSON.stringify(d.artifact)}`);
  }
  if (check.template) {
    lines.push(`Modelfile TEMPLATE vs chat template 模板对比: ${check.template.status}`);
    const t = check.template.first_difference;
    if (t) lines.push(`  jinja:  ${JSON.stringify(t.jinja)}`, `  ollama: ${JSON.stringify(t.ollama)}`);
  }
  return lines.join('\n');
}

export function registerExportCommands(program: Command): void {
  program
    .command('export <model>')
    .description('export a model (hf folder, gguf file or ollama bundle) and check it against the trained model / 导出模型并检查')
    .requiredOption('--format <format>', 'hf | gguf | ollama')
    .option('--quantize <type>', `gguf/ollama type: ${GgufQuantization.options.join(', ')} (default f16)`)
    .option('--adapter-only', 'only the LoRA adapter (hf: the PEFT folder; gguf: a LoRA GGUF for llama.cpp --lora)')
    .option('-o, --output <dir>', 'write the export here (default <home>/exports/<export id>)')
    .option('--check-data <file>', 'chat JSONL (or file id) for the check; default the training job’s validation file')
    .option('--check-max-examples <n>', 'at most N examples in the check', number('check-max-examples', 'int'), 200)
    .option('--check-threshold <x>', 'agreement below this fails the export (default 0.99 for f16/bf16/q8_0/hf)', number('check-threshold'))
    .option('--no-check', 'skip the post-export check')
    .option('--json', 'print the export object as JSON')
    .action(async (model: string, o, cmd: Command) => {
      const format = ExportFormat.safeParse(o.format);
      if (!format.success) throw new WeitiaoError('invalid_request', `--format must be hf, gguf or ollama, got '${o.format}' / 格式须为 hf、gguf 或 ollama`, { param: 'format' });
      const quantize = o.quantize === undefined ? undefined : GgufQuantization.safeParse(o.quantize);
      if (quantize && !quantize.success) {
        throw new WeitiaoError('invalid_request', `unknown --quantize '${o.quantize}'; one of ${GgufQuantization.options.join(', ')} / 不支持的量化类型`, { param: 'quantize' });
      }
      await withContext(cmd, async (ctx) => {
        const created = createExport(ctx, {
          model,
          format: format.data,
          quantize: quantize?.data,
          adapterOnly: o.adapterOnly ?? false,
          outputDir: o.output ? path.resolve(o.output) : undefined,
          check: o.check,
          checkData: o.checkData,
          checkMaxExamples: o.checkMaxExamples,
          checkThreshold: o.checkThreshold,
        });
        const bar = new ProgressBar({ label: 'exporting 导出', total: 1 });
        const done = await waitForExport(ctx, created.id, (e) => {
          if (!e.progress) return;
          bar.label = e.progress.phase;
          bar.total = Math.max(e.progress.total, 1);
          bar.update(e.progress.current);
        });
        bar.done();
        if (o.json) printJson(done);
        else {
          const where = o.output ? path.resolve(o.output) : path.join(ctx.home.root, done.path ?? '');
          console.log(`${done.id}: ${done.status} — ${model} → ${done.format}${done.quantize ? ` (${done.quantize})` : ''} in ${where}`);
          for (const f of done.files ?? []) console.log(`  ${f.name}  ${(f.bytes / 1e6).toFixed(1)} MB`);
          if (done.ollama) console.log(`import into Ollama 导入 Ollama: cd ${where} && ${done.ollama.command}`);
          if (done.check) console.log(formatCheck(done.check));
        }
        if (done.status !== 'succeeded') {
          const e = done.error;
          const code: ErrorCode = done.status === 'cancelled' ? 'cancelled' : e && e.code in ERROR_CODES ? (e.code as ErrorCode) : 'engine_error';
          throw new WeitiaoError(code, e?.message ?? `export ${done.status} / 导出${done.status}`);
        }
      });
    });
}
