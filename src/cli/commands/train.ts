/**
 * `weitiao train`: upload the files, create a fine-tuning job and run it in this process with a live
 * progress bar. Ctrl-C pauses the job (the engine saves a checkpoint); `weitiao train --resume <job>`
 * continues it where it stopped.
 */
import type { Command } from 'commander';
import type { Context } from '../../context.js';
import type { EngineEvent } from '../../engine/index.js';
import { WeitiaoError } from '../../errors.js';
import { createFile, deleteFile } from '../../files/index.js';
import { pauseJob, resumeJob, retrieveJob, submitJob, Worker, type CreateJobParams, type FineTuningJob, type JobPlan } from '../../jobs/index.js';
import { LoraConfig, TrainHyperparameters } from '../../engine/protocol.js';
import { DEFAULT_DPO_BETA, describeTrainingControls, OptimizerSettings, resolveTrainingControls } from '../../hyperparameters/index.js';
import { ProgressBar } from '../progress.js';
import { fmt, formatLabelMetrics, printJson } from '../output.js';
import { printEstimate } from './estimate.js';
import { autoOr, number, onOff, withContext } from './shared.js';
import path from 'node:path';
import { runForgettingCheck } from '../../eval/job-checks.js';
import { formatForgetting } from './eval.js';

// The defaults shown in --help are the engine protocol's, the ones a job gets for a flag left out.
const OPTIMIZER = OptimizerSettings.parse({});
const LORA = LoraConfig.parse({});
const CONTROLS = resolveTrainingControls();
const MAX_SEQ_LENGTH = TrainHyperparameters.shape.max_seq_length.parse(undefined);
const SCHEDULERS = OptimizerSettings.shape.lr_scheduler.unwrap().options.join(' | ');
const byDefault = (value: unknown) => ` (default ${String(value)})`;

export function registerTrainCommands(program: Command): void {
  program
    .command('train')
    .description('fine-tune a base (or fine-tuned) model on a chat JSONL file, or on preference pairs with --method dpo / 微调模型')
    .option('--model <model>', 'base model id or directory')
    .option('--train <file>', 'training file (chat JSONL)')
    .option('--validation <file>', 'validation file (chat JSONL)')
    .option('--suffix <suffix>', 'part of the fine-tuned model name: ft:<base>:<suffix>:<id>')
    .option('--method <method>', 'lora | qlora (4-bit NF4 base) | full | dpo (preference pairs)', 'lora')
    .option('--beta <x>', `DPO's beta or 'auto' (= ${DEFAULT_DPO_BETA})`, autoOr('float', 'beta'))
    .option('--freeze-embeddings', 'full fine-tuning: keep the embeddings (and a tied LM head) frozen')
    .option('--freeze-layers <n>', 'full fine-tuning: keep the first N layers frozen', number('full.freeze_layers', 'int'))
    .option('--epochs <n>', "number of epochs or 'auto'", autoOr('int', 'n_epochs'), 'auto')
    .option('--batch-size <n>', "batch size or 'auto'", autoOr('int', 'batch_size'), 'auto')
    .option('--lr-multiplier <x>', "learning-rate multiplier (× the method's base rate) or 'auto'", autoOr('float', 'learning_rate_multiplier'), 'auto')
    .option('--learning-rate <lr>', 'absolute learning rate (overrides the multiplier)', number('learning_rate'))
    .option('--weight-decay <x>', `AdamW weight decay${byDefault(OPTIMIZER.weight_decay)}`, number('weight_decay'))
    .option('--max-grad-norm <x>', `gradient clipping norm${byDefault(OPTIMIZER.max_grad_norm)}`, number('max_grad_norm'))
    .option('--warmup-ratio <x>', `share of steps for learning-rate warmup${byDefault(OPTIMIZER.warmup_ratio)}`, number('warmup_ratio'))
    .option('--scheduler <name>', `${SCHEDULERS}${byDefault(OPTIMIZER.lr_scheduler)}`)
    .option('--lora-r <n>', `LoRA rank${byDefault(LORA.r)}`, number('lora.r', 'int'))
    .option('--lora-alpha <x>', `LoRA alpha${byDefault(LORA.alpha)}`, number('lora.alpha'))
    .option('--lora-dropout <x>', `LoRA dropout${byDefault(LORA.dropout)}`, number('lora.dropout'))
    .option('--target-modules <list>', `'all-linear' or comma-separated module names${byDefault(LORA.target_modules)}`)
    .option('--modules-to-save <list>', 'modules trained in full beside LoRA, comma-separated (e.g. embed_tokens)')
    .option('--seed <n>', 'seed (data order, initialisation)', number('seed', 'int'))
    .option('--eval-every <steps>', 'validation loss every N steps (besides each epoch end)', number('eval_every_steps', 'int'))
    .option('--save-every <steps>', 'checkpoint every N steps (besides each epoch end)', number('save_every_steps', 'int'))
    .option('--max-steps <n>', 'stop after N optimizer steps', number('max_steps', 'int'))
    .option('--max-seq-length <n>', `truncate examples to N tokens${byDefault(MAX_SEQ_LENGTH)}`, number('max_seq_length', 'int'))
    .option('--no-label-metrics', 'no accuracy/precision/recall even when the answers form a label set')
    .option('--grad-accum <n>', `gradient accumulation: micro-batches per optimizer step (batch size stays the examples per step)${byDefault(CONTROLS.gradient_accumulation_steps)}`, number('gradient_accumulation_steps', 'int'))
    .option('--gradient-checkpointing [mode]', `recompute activations in backward (less memory, ~1/3 more compute): on | off | auto${byDefault(CONTROLS.gradient_checkpointing)}`, onOff('gradient_checkpointing'))
    .option('--early-stopping <patience>', 'stop after N validations without improvement of the validation loss', number('early_stopping_patience', 'int'))
    .option('--early-stopping-min-delta <x>', `the smallest fall of the validation loss that counts as improvement${byDefault(CONTROLS.early_stopping_min_delta)}`, number('early_stopping_min_delta'))
    .option('--bf16 <mode>', `bf16 autocast: auto (where the CPU/GPU supports it) | on | off${byDefault(CONTROLS.bf16)}`)
    .option('--group-by-length', 'batches of similar length (less padding)')
    .option('--long-examples <mode>', `examples longer than max_seq_length: truncate (keep the answer, cut the earliest prompt tokens) | skip | error${byDefault(CONTROLS.long_examples)}`)
    .option('--nproc <n>', 'training processes: above 1 the engine runs under torchrun (DDP; FSDP for full)', number('nproc', 'int'))
    .option('--nodes <n>', 'hosts: above 1 the job is trained by that many remote workers together (torchrun; see docs/DEPLOY.md) / 多节点训练的节点数', number('nodes', 'int'))
    .option('--mix-general <ratio>', 'mix general chat data into the training file: RATIO general examples per training example (seeded by --seed; recorded in the job metadata) / 混入通用对话数据', number('mix_general'))
    .option('--forgetting-check [items]', 'once trained, score the base and the fine-tune on the general-ability set (default 60 of its 300 items) and store it with the job / 训练后做遗忘检查', number('forgetting_check', 'int'))
    .option('--dry-run', 'validate the files, resolve auto and print the memory and time estimate; create nothing')
    .option('--resume <job>', 'continue a paused or interrupted job from its last checkpoint')
    .option('--json', 'print the engine events as JSON lines on stdout')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        let jobId: string;
        if (o.resume) {
          const job = retrieveJob(ctx, o.resume);
          if (job.status === 'paused') resumeJob(ctx, job.id);
          else if (job.status !== 'queued') {
            throw new WeitiaoError('conflict', `job ${job.id} is ${job.status}; only paused or queued jobs can be resumed / 只能继续已暂停或排队中的任务`, {
              param: 'resume',
            });
          }
          jobId = job.id;
        } else {
          if (!o.model || !o.train) throw new WeitiaoError('invalid_request', '--model and --train are required / 需要 --model 和 --train', { param: o.model ? 'train' : 'model' });
          const training = await createFile(ctx, { source: o.train, filename: path.basename(o.train), purpose: 'fine-tune' });
          const validation = o.validation
            ? await createFile(ctx, { source: o.validation, filename: path.basename(o.validation), purpose: 'fine-tune' })
            : null;
          const lora = {
            ...(o.loraR !== undefined && { r: o.loraR }),
            ...(o.loraAlpha !== undefined && { alpha: o.loraAlpha }),
            ...(o.loraDropout !== undefined && { dropout: o.loraDropout }),
            ...(o.targetModules && { target_modules: o.targetModules === 'all-linear' ? 'all-linear' : String(o.targetModules).split(',') }),
            ...(o.modulesToSave && { modules_to_save: String(o.modulesToSave).split(',') }),
          };
          const hyperparameters = { n_epochs: o.epochs, batch_size: o.batchSize, learning_rate_multiplier: o.lrMultiplier };
          const params: CreateJobParams = {
            model: o.model,
            training_file: training.id,
            validation_file: validation?.id ?? null,
            suffix: o.suffix ?? null,
            seed: o.seed ?? null,
            method:
              o.method === 'dpo'
                ? { type: 'dpo', dpo: { hyperparameters: { ...hyperparameters, ...(o.beta !== undefined && { beta: o.beta }) } } }
                : { type: 'supervised', supervised: { hyperparameters } },
            weitiao: {
              ...(o.method !== 'dpo' && { method: o.method }),
              ...(o.method === 'full' && { full: { freeze_embeddings: Boolean(o.freezeEmbeddings), freeze_layers: o.freezeLayers ?? 0 } }),
              ...(Object.keys(lora).length > 0 && { lora }),
              ...(o.learningRate !== undefined && { learning_rate: o.learningRate }),
              ...(o.weightDecay !== undefined && { weight_decay: o.weightDecay }),
              ...(o.maxGradNorm !== undefined && { max_grad_norm: o.maxGradNorm }),
              ...(o.warmupRatio !== undefined && { warmup_ratio: o.warmupRatio }),
              ...(o.scheduler && { lr_scheduler: o.scheduler }),
              ...(o.evalEvery !== undefined && { eval_every_steps: o.evalEvery }),
              ...(o.saveEvery !== undefined && { save_every_steps: o.saveEvery }),
              ...(o.maxSteps !== undefined && { max_steps: o.maxSteps }),
              ...(o.maxSeqLength !== undefined && { max_seq_length: o.maxSeqLength }),
              ...(o.gradAccum !== undefined && { gradient_accumulation_steps: o.gradAccum }),
              ...(o.gradientCheckpointing !== undefined && { gradient_checkpointing: o.gradientCheckpointing }),
              ...(o.earlyStopping !== undefined && { early_stopping_patience: o.earlyStopping }),
              ...(o.earlyStoppingMinDelta !== undefined && { early_stopping_min_delta: o.earlyStoppingMinDelta }),
              ...(o.bf16 !== undefined && { bf16: o.bf16 }),
              ...(o.groupByLength && { group_by_length: true }),
              ...(o.longExamples !== undefined && { long_examples: o.longExamples }),
              ...(o.nproc !== undefined && { nproc: o.nproc }),
              ...(o.nodes !== undefined && { nodes: o.nodes }),
              label_set: o.labelMetrics ? 'auto' : null,
              // Mixed by submitJob, as for the API: the job names (and trains on) the mixed copy.
              ...(o.mixGeneral !== undefined && { mix_general: o.mixGeneral }),
            },
          };
          if (o.dryRun) {
            // The plan reads stored files: these uploads are scratch copies, removed again.
            try {
              const plan = (await submitJob(ctx, { ...params, weitiao: { ...params.weitiao!, dry_run: true } })) as JobPlan;
              if (o.json) printJson(plan);
              else printPlan(plan);
            } finally {
              for (const f of [training, validation]) if (f) await deleteFile(ctx, f.id);
            }
            return;
          }
          const job = (await submitJob(ctx, params)) as FineTuningJob;
          jobId = job.id;
          const mixed = job.metadata?.['weitiao.mix_general'];
          if (mixed) {
            const m = JSON.parse(mixed) as { added: number; training_examples: number };
            process.stderr.write(`mixed ${m.added} general examples into ${m.training_examples} / 已混入通用样本\n`);
          }
          process.stderr.write(`created job 已创建任务 ${job.id}\n`);
        }
        const job = await runInForeground(ctx, jobId, { json: Boolean(o.json) });
        reportOutcome(job);
        if (o.forgettingCheck !== undefined && job.status === 'succeeded') {
          const request = o.forgettingCheck === true ? true : { max_examples: o.forgettingCheck as number };
          const stored = await runForgettingCheck(ctx, job, { request, onEvent: (e) => process.stderr.write(`${e.message}\n`) });
          if (stored && !o.json) console.log('\n' + formatForgetting(stored.report as Parameters<typeof formatForgetting>[0]));
        }
      });
    });
}

/** Runs one job in this process, drawing progress; Ctrl-C pauses it (checkpoint), a second Ctrl-C kills. */
export async function runInForeground(ctx: Context, jobId: string, options: { json: boolean }): Promise<FineTuningJob> {
  const worker = new Worker(ctx, { pollMs: 250 });
  let bar = null as ProgressBar | null;

  worker.on('engine', (_id, event: EngineEvent) => {
    if (options.json) {
      process.stdout.write(JSON.stringify(event) + '\n');
      return;
    }
    const out = bar ?? { log: (m: string) => process.stderr.write(m + '\n') };
    switch (event.type) {
      case 'metrics': {
        bar ??= new ProgressBar({ label: 'training 训练', total: event.total_steps });
        bar.total = event.total_steps;
        if (event.valid_loss !== undefined && event.train_loss === undefined) {
          bar.log(`step ${event.step}: valid_loss 验证损失 ${fmt(event.valid_loss)}`);
          break;
        }
        const parts = [
          `epoch ${event.epoch.toFixed(2)}`,
          event.train_loss !== undefined ? `loss ${fmt(event.train_loss, 3)}` : '',
          event.tokens_per_second !== undefined ? `${Math.round(event.tokens_per_second)} tok/s` : '',
        ];
        bar.update(event.step, parts.filter(Boolean).join(' '), event.eta_seconds);
        break;
      }
      case 'eval':
        out.log(`\n— epoch ${event.epoch.toFixed(0)} (step ${event.step}) — valid_loss 验证损失 ${fmt(event.valid_loss)}`);
        if (event.label_metrics) out.log(formatLabelMetrics(event.label_metrics) + '\n');
        break;
      case 'checkpoint':
        out.log(`checkpoint 检查点: step ${event.step} → ${event.path}`);
        break;
      case 'log':
        if (event.level === 'warning' || event.level === 'error') out.log(`${event.level}: ${event.message}`);
        break;
      default:
        break;
    }
  });
  worker.on('event', (_id, event) => {
    if (!options.json && event.type === 'message' && event.level !== 'info') {
      (bar ?? { log: (m: string) => process.stderr.write(m + '\n') }).log(`${event.level}: ${event.message}`);
    }
  });

  let interrupts = 0;
  const onSigint = () => {
    interrupts += 1;
    if (interrupts === 1) {
      bar?.log('\nstopping: saving a checkpoint (Ctrl-C again to kill) / 正在保存检查点后停止…');
      try {
        pauseJob(ctx, jobId);
      } catch {
        /* not running yet: the worker stops before starting it */
      }
      void worker.stop();
    } else {
      worker.kill(); // the engine runs in its own process group: it would outlive us otherwise
      process.exit(130);
    }
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  try {
    const job = await worker.runJob(jobId);
    bar?.done();
    return job;
  } finally {
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}

/** A dry run: the resolved settings, the controls, warnings and the estimate, on stdout. */
function printPlan(plan: JobPlan): void {
  const w = plan.weitiao;
  const h = w.hyperparameters!;
  console.log(`dry run 试运行 (nothing created 未创建任务): ${plan.model}, ${w.method}`);
  console.log(`${w.n_examples} training examples${w.n_validation_examples !== null ? `, ${w.n_validation_examples} validation` : ''}${Array.isArray(w.label_set) ? `; labels: ${w.label_set.join(', ')}` : ''}`);
  console.log(
    `hyperparameters: epochs ${h.n_epochs}, batch ${h.batch_size}, lr ${h.learning_rate}, ${h.lr_scheduler} schedule, ` +
      `${h.estimated_total_steps} steps${h.auto.length ? ` (auto: ${h.auto.join(', ')})` : ''}`,
  );
  console.log(`controls: ${describeTrainingControls(w.controls)}`);
  for (const x of plan.warnings.slice(0, 10)) console.log(`warning: ${x.file}${x.line ? `:${x.line}` : ''}: ${x.field ? `${x.field}: ` : ''}${x.message}`);
  if (plan.warnings.length > 10) console.log(`… and ${plan.warnings.length - 10} more warnings`);
  console.log('');
  if (plan.estimate) printEstimate(plan.estimate);
  for (const n of plan.notes) console.log(n);
}

function reportOutcome(job: FineTuningJob): void {
  const lines: string[] = [];
  switch (job.status) {
    case 'succeeded':
      lines.push(`\njob ${job.id} succeeded 训练完成. fine-tuned model 微调模型: ${job.fine_tuned_model}`);
      lines.push(`trained tokens: ${job.trained_tokens ?? '-'}`);
      lines.push(`next 下一步: weitiao eval --model ${job.fine_tuned_model} --data <validation.jsonl>`);
      lines.push(`            weitiao chat --model ${job.fine_tuned_model}`);
      process.stderr.write(lines.join('\n') + '\n');
      return;
    case 'paused':
    case 'queued':
      process.stderr.write(`\njob ${job.id} is ${job.status} at its last checkpoint. Continue with 继续训练: weitiao train --resume ${job.id}\n`);
      process.exitCode = 130;
      return;
    default:
      throw new WeitiaoError(job.error?.code === 'invalid_training_file' ? 'invalid_file' : 'engine_error', `job ${job.id} ${job.status}: ${job.error?.message ?? ''}`, {
        param: job.error?.param ?? undefined,
      });
  }
}
