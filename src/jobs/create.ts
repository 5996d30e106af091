/**
 * Creating a job: every check a create request gets before anything is written (createJob), the dry run
 * that also validates the files, resolves `auto` as the worker will and estimates (planJob), and submitJob,
 * the one path of the CLI and the API, which prepares the training file first (`weitiao.mix_general`).
 */
import type { Context } from '../context.js';
import { parseOrThrow, WeitiaoError } from '../errors.js';
import { applyMixGeneral } from '../eval/job-checks.js';
import { deleteFile, retrieveFile } from '../files/index.js';
import { resolveModelParam } from '../models/index.js';
import { newId, now } from '../store/index.js';
import { estimateRun, type JobEstimate } from '../hyperparameters/estimate.js';
import { pickTrainingControls, RequestedHyperparameters, resolveTrainingControls, type Method } from '../hyperparameters/index.js';
import { fileError, jobErrorToThrow, jobFile, resolveJob, validateJobFile, type CheckedFile } from './internal/plan.js';
import { addEvent, type JobExtension, type JobSettings } from './internal/records.js';
import { retrieveJob } from './lifecycle.js';
import { checkReinforcement, resolveReinforcement } from './reinforcement.js';
import { insertJob } from './repository.js';
import { CreateJobParams, DEFAULT_DPO_BETA, parseParams, type FineTuningJob, type JobPlan } from './schemas.js';
import { reinforcementWire } from './wire.js';

/** Creates a job in `validating_files`; `not_found` (param model/training_file/validation_file) for unknown names. */
export function createJob(ctx: Context, params: CreateJobParams): FineTuningJob {
  const { p, model, settings, requested, isDpo, dpoHp, rlHp } = checkCreate(ctx, params);
  if (p.weitiao?.dry_run) {
    throw new WeitiaoError('invalid_request', 'weitiao.dry_run creates nothing: call planJob / 试运行不会创建任务', { param: 'weitiao.dry_run' });
  }
  const hyper = { n_epochs: requested.n_epochs, batch_size: requested.batch_size, learning_rate_multiplier: requested.learning_rate_multiplier };
  const extension: JobExtension = {
    settings,
    requested,
    resolved: null,
    n_examples: null,
    n_validation_examples: null,
    label_set: null,
    progress: null,
    label_metrics: null,
    last_metrics: null,
    last_eval: null,
  };
  const row = {
    id: newId('ftjob'),
    model: model.id,
    training_file: p.training_file,
    validation_file: p.validation_file ?? null,
    status: 'validating_files' as const,
    method: JSON.stringify(
      rlHp
        ? reinforcementWire(settings, { n_epochs: hyper.n_epochs ?? 'auto', batch_size: hyper.batch_size ?? 'auto', learning_rate_multiplier: hyper.learning_rate_multiplier ?? 'auto', ...rlHp })
        : isDpo
          ? { type: 'dpo', dpo: { hyperparameters: { ...hyper, beta: dpoHp?.beta ?? 'auto' } } }
          : { type: 'supervised', supervised: { hyperparameters: hyper } },
    ),
    extension: JSON.stringify(extension),
    suffix: p.suffix ?? null,
    seed: p.seed ?? Math.floor(Math.random() * 2147483647),
    metadata: p.metadata ? JSON.stringify(p.metadata) : null,
    created_at: now(),
  };
  ctx.db.transaction(() => {
    insertJob(ctx.db, row);
    addEvent(ctx.db, row.id, { message: `Created fine-tuning job: ${row.id} / 已创建微调任务` });
  })();
  return retrieveJob(ctx, row.id);
}

/**
 * What `weitiao train` and `POST /v1/fine_tuning/jobs` call: `weitiao.mix_general` applied first (the mixed
 * copy of the training file stored and named by the job, the mix in its metadata), then createJob — or, with
 * `weitiao.dry_run`, planJob on the mixed copy, which is removed again.
 */
export async function submitJob(ctx: Context, params: CreateJobParams, options: { signal?: AbortSignal } = {}): Promise<FineTuningJob | JobPlan> {
  const { params: prepared, file } = await applyMixGeneral(ctx, params);
  const dryRun = Boolean((params.weitiao as { dry_run?: boolean } | undefined)?.dry_run);
  try {
    if (!dryRun) return createJob(ctx, prepared);
    const plan = await planJob(ctx, prepared, options);
    if (file) await deleteFile(ctx, file.id);
    return plan;
  } catch (err) {
    if (file) await deleteFile(ctx, file.id).catch(() => {});
    throw err;
  }
}

/** Every check `createJob` makes before it writes anything; what it learned, for createJob and planJob. */
function checkCreate(ctx: Context, params: CreateJobParams) {
  const p = parseParams(CreateJobParams, params);

  const isRl = p.method?.type === 'reinforcement';
  if (isRl) checkReinforcement(p);
  const isDpo = p.method?.type === 'dpo';
  if (isDpo && p.weitiao?.method === 'full') {
    throw new WeitiaoError('invalid_request', "DPO trains a LoRA adapter; weitiao.method 'full' applies to supervised jobs / DPO 只支持 LoRA", {
      param: 'weitiao.method',
    });
  }
  const nproc = p.weitiao?.nproc ?? 1;
  const nodes = p.weitiao?.nodes ?? 1;
  if (isDpo && nproc > 1) {
    throw new WeitiaoError('invalid_request', 'DPO trains in one process; leave weitiao.nproc at 1 / DPO 只支持单进程训练', { param: 'weitiao.nproc' });
  }
  if ((isDpo || isRl) && nodes > 1) {
    throw new WeitiaoError('invalid_request', `${isDpo ? 'DPO' : 'reinforcement'} trains in one process; leave weitiao.nodes at 1 / ${isDpo ? 'DPO' : '强化微调'} 只支持单节点单进程训练`, {
      param: 'weitiao.nodes',
    });
  }
  const explicitBatch = (p.method?.dpo?.hyperparameters ?? p.method?.reinforcement?.hyperparameters ?? p.method?.supervised?.hyperparameters ?? p.hyperparameters)?.batch_size;
  const ranks = nproc * nodes;
  if (ranks > 1 && typeof explicitBatch === 'number' && explicitBatch % ranks !== 0) {
    const what = nodes > 1 ? `weitiao.nodes × weitiao.nproc (${nodes} × ${nproc})` : `weitiao.nproc ${nproc}`;
    throw new WeitiaoError(
      'invalid_request',
      `batch_size ${explicitBatch} is not a multiple of ${what}: each process takes an equal share of every batch / batch_size 必须是进程总数的整数倍`,
      { param: 'hyperparameters.batch_size' },
    );
  }
  if (p.method?.type === 'supervised' && p.method.dpo) {
    throw new WeitiaoError('invalid_request', "method.dpo is given but method.type is 'supervised' / method.type 与参数不符", { param: 'method.dpo' });
  }
  if (p.integrations?.length) {
    throw new WeitiaoError('invalid_request', 'integrations are not supported / 不支持 integrations', { param: 'integrations' });
  }
  const dpoHp = isDpo ? (p.method?.dpo?.hyperparameters ?? {}) : null;
  const rlGiven = isRl ? (p.method?.reinforcement?.hyperparameters ?? {}) : null;
  const ownHp = dpoHp ?? rlGiven;
  const fromMethod = ownHp ? { n_epochs: ownHp.n_epochs, batch_size: ownHp.batch_size, learning_rate_multiplier: ownHp.learning_rate_multiplier } : p.method?.supervised?.hyperparameters;
  if (fromMethod && p.hyperparameters) {
    throw new WeitiaoError(
      'invalid_request',
      'give hyperparameters in method.supervised.hyperparameters or the legacy top-level hyperparameters, not both / 超参数只能在一处指定',
      { param: 'hyperparameters' },
    );
  }
  const openaiHp = fromMethod ?? p.hyperparameters ?? {};
  const { dry_run: _dryRun, ...given } = p.weitiao ?? { label_set: 'auto' as const };
  const settings: JobSettings = given;
  if (isDpo) settings.dpo = { beta: dpoHp?.beta === undefined || dpoHp.beta === 'auto' ? DEFAULT_DPO_BETA : dpoHp.beta };
  const rlHp = rlGiven
    ? {
        compute_multiplier: rlGiven.compute_multiplier ?? ('auto' as const),
        eval_interval: rlGiven.eval_interval ?? ('auto' as const),
        eval_samples: rlGiven.eval_samples ?? ('auto' as const),
        reasoning_effort: rlGiven.reasoning_effort ?? 'default',
      }
    : null;
  if (rlHp) settings.reinforcement = { grader: p.method!.reinforcement!.grader, response_format: p.method!.reinforcement!.response_format ?? null, ...rlHp };
  const requested = {
    n_epochs: openaiHp.n_epochs ?? 'auto',
    batch_size: openaiHp.batch_size ?? 'auto',
    learning_rate_multiplier: openaiHp.learning_rate_multiplier ?? 'auto',
    learning_rate: settings.learning_rate,
    weight_decay: settings.weight_decay,
    max_grad_norm: settings.max_grad_norm,
    warmup_ratio: settings.warmup_ratio,
    lr_scheduler: settings.lr_scheduler,
  };
  // The same checks the worker's rules will make, now, so a bad combination fails the request, not the job.
  const checkedHp = parseOrThrow(RequestedHyperparameters, requested, { where: { en: 'hyperparameters', zh: '超参数' }, param: 'hyperparameters' });
  if (requested.learning_rate !== undefined && requested.learning_rate_multiplier !== 'auto') {
    throw new WeitiaoError(
      'invalid_request',
      'give either learning_rate_multiplier or weitiao.learning_rate, not both / 学习率倍数与学习率只能指定一个',
      { param: 'weitiao.learning_rate' },
    );
  }

  const model = resolveModelParam(ctx, p.model);
  // A fine-tuned model or checkpoint is a fine base too (continued fine-tuning): the worker merges its adapter first.
  requireTrainingFile(ctx, p.training_file, 'training_file');
  if (p.validation_file) requireTrainingFile(ctx, p.validation_file, 'validation_file');

  return { p, model, settings, requested: checkedHp, isDpo, dpoHp, rlHp };
}

/**
 * A dry run of `createJob`: the same checks, then the files validated and `auto` resolved as the worker
 * would, and the estimate; nothing is stored. Bad files are `invalid_file` naming `file:line` and field.
 */
export async function planJob(ctx: Context, params: CreateJobParams, options: { signal?: AbortSignal } = {}): Promise<JobPlan> {
  const { p, model, settings, requested, isDpo, rlHp } = checkCreate(ctx, params);
  const method: Method = rlHp ? 'reinforcement' : isDpo ? 'dpo' : (settings.method ?? 'lora');
  const checked: CheckedFile[] = [];
  for (const param of ['training_file', 'validation_file'] as const) {
    const fileId = p[param];
    if (!fileId) continue;
    const file = jobFile(ctx, param, fileId);
    if ('code' in file) throw jobErrorToThrow(file);
    const result = await validateJobFile(file, param, { method, modelDir: model.basePath, settings });
    const error = fileError(result);
    if (error) throw jobErrorToThrow(error);
    checked.push(result);
  }
  const train = checked[0].report;
  const valid = checked.find((c) => c.param === 'validation_file')?.report ?? null;
  const { resolved, labelSet } = resolveJob({ method, settings, requested, train });
  const hyper = { n_epochs: resolved.n_epochs, batch_size: resolved.batch_size, learning_rate_multiplier: resolved.learning_rate_multiplier };
  const beta = settings.dpo?.beta ?? DEFAULT_DPO_BETA;
  const notes: string[] = [];
  let estimate: JobEstimate | null = null;
  if (method === 'lora' || method === 'qlora') {
    estimate = await estimateRun(
      ctx,
      {
        model: model.id,
        training_file: p.training_file,
        method,
        hyperparameters: { n_epochs: resolved.n_epochs, batch_size: resolved.batch_size, ...(settings.max_seq_length ? { max_seq_length: settings.max_seq_length } : {}) },
        ...(settings.lora ? { lora: settings.lora } : {}),
        ...(settings.gradient_checkpointing !== undefined ? { gradient_checkpointing: settings.gradient_checkpointing } : {}),
        ...(settings.bf16 !== undefined ? { bf16: settings.bf16 } : {}),
        ...(settings.gradient_accumulation_steps !== undefined ? { gradient_accumulation_steps: settings.gradient_accumulation_steps } : {}),
      },
      options,
    );
  } else {
    notes.push(`the memory and time estimate covers lora and qlora, not ${method} yet / 内存与时间预估暂只支持 LoRA 与 QLoRA`);
  }
  return {
    object: 'weitiao.job_plan',
    dry_run: true,
    model: model.id,
    training_file: p.training_file,
    validation_file: p.validation_file ?? null,
    method: rlHp
      ? reinforcementWire(settings, { ...hyper, ...rlHp, ...resolveReinforcement(settings.reinforcement!, resolved.estimated_total_steps, valid?.valid_examples ?? null), reasoning_effort: rlHp.reasoning_effort })
      : isDpo
        ? { type: 'dpo', dpo: { hyperparameters: { ...hyper, beta } } }
        : { type: 'supervised', supervised: { hyperparameters: hyper } },
    seed: p.seed ?? null,
    weitiao: {
      method,
      hyperparameters: resolved,
      controls: resolveTrainingControls(pickTrainingControls(settings)),
      lora: { ...settings.lora },
      full: { ...settings.full },
      label_set: labelSet,
      n_examples: train.valid_examples,
      n_validation_examples: valid ? valid.valid_examples : null,
    },
    warnings: checked.flatMap((c) => c.report.warnings.map((w) => ({ ...w, file: c.file.filename }))),
    estimate,
    notes,
  };
}


function requireTrainingFile(ctx: Context, id: string, param: 'training_file' | 'validation_file'): void {
  let file;
  try {
    file = retrieveFile(ctx, id);
  } catch (err) {
    const e = WeitiaoError.from(err);
    if (e.code !== 'not_found') throw e;
    throw new WeitiaoError('not_found', `${param} '${id}' not found; upload it first (\`weitiao files upload\`) / 找不到文件 ${id}`, {
      param,
    });
  }
  if (file.purpose !== 'fine-tune') {
    throw new WeitiaoError(
      'invalid_request',
      `${param} '${id}' has purpose '${file.purpose}'; upload it with purpose 'fine-tune' / 文件用途须为 fine-tune`,
      { param },
    );
  }
}
