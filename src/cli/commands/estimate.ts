/** `weitiao estimate`: peak memory and time per epoch of a training run, before starting it. */
import type { Command } from 'commander';
import { WeitiaoError } from '../../errors.js';
import { estimateJob, type JobEstimate } from '../../hyperparameters/estimate.js';
import { printJson, table } from '../output.js';
import { autoOr, number, onOff, withContext } from './shared.js';

const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(0)} MB`;

function duration(seconds: number): string {
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** The estimate as a person reads it (also `weitiao train --dry-run`). */
export function printEstimate(e: JobEstimate): void {
  const m = e.memory;
  console.log(`${e.model}, ${e.method}: ${e.n_examples} examples, batch ${e.batch_size}, ${e.n_epochs} epochs (${e.steps_per_epoch} steps each)`);
  console.log(`peak memory 峰值内存  ${mb(e.peak_memory_bytes)}`);
  console.log(`time per epoch 每轮时间  ${duration(e.time_per_epoch_seconds)}; all epochs 总计 ${duration(e.total_seconds)}\n`);
  console.log(
    table(
      ['memory 内存', 'MB'],
      [
        ['runtime (Python, torch, data) 运行时', Math.round(m.runtime_bytes / 2 ** 20)],
        ['loading the base (fp32) 加载基础模型', Math.round(m.load_bytes / 2 ** 20)],
        [`base weights while training 训练时基础权重${e.method === 'qlora' ? ' (NF4)' : ''}`, Math.round(m.base_weights_bytes / 2 ** 20)],
        ['trainable + gradients 可训练参数与梯度', Math.round((m.trainable_bytes + m.gradient_bytes) / 2 ** 20)],
        ['AdamW state 优化器状态', Math.round(m.optimizer_bytes / 2 ** 20)],
        ['activations 激活', Math.round(m.activation_bytes / 2 ** 20)],
        ['LM head logits 输出层', Math.round(m.lm_head_bytes / 2 ** 20)],
      ],
    ),
  );
  console.log(
    `\n${e.tokens_per_epoch} tokens per epoch (packed: no padding; ${e.padded_tokens_per_epoch} in padded batches), longest ${e.max_tokens};` +
      `${e.gradient_checkpointing ? ` gradient checkpointing ${e.gradient_checkpointing};` : ''}` +
      ` ${(e.flops_per_epoch / 1e12).toFixed(2)} TFLOP per epoch at ${(e.matmul_flops_per_second / 1e9).toFixed(1)} GFLOP/s × ${e.efficiency} (${e.threads} threads)`,
  );
  const choice = e.precision_choice;
  if (choice) {
    // How `bf16` was resolved here and the probe's figures that also set the GFLOP/s above. 精度选择与实测
    const rates = choice.figures ? `; GFLOP/s ${Object.entries(choice.figures.gflops).map(([v, g]) => `${v} ${g.toFixed(1)}`).join(', ')}` : '';
    console.log(`precision 精度 ${choice.precision} (${choice.source}${choice.reason ? `: ${choice.reason}` : ''})${rates}`);
  }
  if (e.n_truncated) console.log(`${e.n_truncated} examples will be truncated to max_seq_length / ${e.n_truncated} 条样本将被截断`);
}

export function registerEstimateCommands(program: Command): void {
  program
    .command('estimate')
    .description('predict peak memory and time per epoch of a training run / 预估训练的内存与时间')
    .requiredOption('--model <model>', 'base model id or directory')
    .requiredOption('--train <file>', 'training file (chat JSONL path or file id)')
    .option('--method <method>', 'lora | qlora', 'lora')
    .option('--batch-size <n>', "batch size or 'auto'", autoOr('int', 'batch_size'), 'auto')
    .option('--epochs <n>', "number of epochs or 'auto'", autoOr('int', 'n_epochs'), 'auto')
    .option('--max-seq-length <n>', 'truncate examples to N tokens', number('max_seq_length', 'int'))
    .option('--lora-r <n>', 'LoRA rank', number('lora.r', 'int'))
    .option('--threads <n>', 'torch threads (default: one per physical core)', number('threads', 'int'))
    .option('--gradient-checkpointing [mode]', 'recompute activations in backward: on | off | auto', onOff('gradient_checkpointing'))
    .option('--bf16 <mode>', 'bf16 autocast: auto | on | off')
    .option('--grad-accum <n>', 'gradient accumulation: micro-batches per optimizer step', number('gradient_accumulation_steps', 'int'))
    .option('--json', 'print the estimate as JSON')
    .action(async (o, cmd: Command) => {
      if (o.method !== 'lora' && o.method !== 'qlora') {
        throw new WeitiaoError('invalid_request', `--method must be lora or qlora, got '${o.method}' / 方法须为 lora 或 qlora`, { param: 'method' });
      }
      await withContext(cmd, async (ctx) => {
        const e = await estimateJob(ctx, {
          model: o.model,
          training_file: o.train,
          method: o.method,
          hyperparameters: {
            batch_size: o.batchSize,
            n_epochs: o.epochs,
            ...(o.maxSeqLength !== undefined ? { max_seq_length: o.maxSeqLength } : {}),
          },
          ...(o.loraR !== undefined ? { lora: { r: o.loraR } } : {}),
          ...(o.threads !== undefined ? { threads: o.threads } : {}),
          ...(o.gradientCheckpointing !== undefined ? { gradient_checkpointing: o.gradientCheckpointing } : {}),
          ...(o.bf16 !== undefined ? { bf16: o.bf16 } : {}),
          ...(o.gradAccum !== undefined ? { gradient_accumulation_steps: o.gradAccum } : {}),
        });
        if (o.json) return printJson(e);
        printEstimate(e);
      });
    });
}
