/**
 * Reinforcement jobs (OpenAI's `method.reinforcement`): the create request's checks, `auto` resolved, and
 * the settings the engine's reinforcement recipe is given.
 */
import type { z } from 'zod';
import { WeitiaoError } from '../errors.js';
import { parseGrader } from '../graders/index.js';
import type { JobSettings } from './internal/records.js';
import type { JobRow } from './repository.js';
import { REINFORCEMENT_GROUP, type CreateJobParams, type FineTuningJob } from './schemas.js';

/** The create request's reinforcement checks: a grader in OpenAI's shapes (400 naming the field, e.g.
 * `method.reinforcement.grader.operation`), no settings of the other methods. */
export function checkReinforcement(p: z.output<typeof CreateJobParams>): void {
  const rl = p.method?.reinforcement;
  if (!rl) {
    throw new WeitiaoError('invalid_request', 'method.reinforcement.grader is required for method reinforcement / 强化微调需要评分器', {
      param: 'method.reinforcement.grader',
    });
  }
  parseGrader(rl.grader, 'method.reinforcement.grader');
  if (p.method?.supervised || p.method?.dpo || p.hyperparameters) {
    const param = p.method?.supervised ? 'method.supervised' : p.method?.dpo ? 'method.dpo' : 'hyperparameters';
    throw new WeitiaoError('invalid_request', `${param} is given but method.type is 'reinforcement' / method.type 与参数不符`, { param });
  }
  if (p.weitiao?.method === 'qlora') {
    throw new WeitiaoError('invalid_request', "reinforcement trains a LoRA adapter or every weight ('full'), not qlora / 强化微调不支持 QLoRA", {
      param: 'weitiao.method',
    });
  }
  if ((p.weitiao?.nproc ?? 1) > 1) {
    throw new WeitiaoError('invalid_request', 'reinforcement trains in one process; leave weitiao.nproc at 1 / 强化微调只支持单进程训练', { param: 'weitiao.nproc' });
  }
}

/** `auto` resolved: answers per prompt, validation every N steps (about ten evaluations a run), validation prompts (≤ 64). */
export function resolveReinforcement(
  rl: NonNullable<JobSettings['reinforcement']>,
  totalSteps: number,
  nValidation: number | null,
): { compute_multiplier: number; samples_per_prompt: number; eval_interval: number; eval_samples: number } {
  const multiplier = rl.compute_multiplier === 'auto' ? 1 : rl.compute_multiplier;
  return {
    compute_multiplier: multiplier,
    samples_per_prompt: Math.max(2, Math.round(REINFORCEMENT_GROUP * multiplier)),
    eval_interval: rl.eval_interval === 'auto' ? Math.max(1, Math.ceil(totalSteps / 10)) : rl.eval_interval,
    eval_samples: rl.eval_samples === 'auto' ? Math.min(64, nValidation ?? 64) : rl.eval_samples,
  };
}

/** The engine's reinforcement settings of a job: its grader and the hyperparameters its method object resolved. */
export function reinforcementRequest(row: JobRow, full: boolean) {
  const method = JSON.parse(row.method) as Extract<FineTuningJob['method'], { type: 'reinforcement' }>;
  const hp = method.reinforcement.hyperparameters;
  const multiplier = typeof hp.compute_multiplier === 'number' ? hp.compute_multiplier : 1;
  const base = process.env.WEITIAO_JUDGE_BASE_URL;
  return {
    policy: full ? ('full' as const) : ('lora' as const),
    grader: method.reinforcement.grader,
    response_format: method.reinforcement.response_format,
    samples_per_prompt: Math.max(2, Math.round(REINFORCEMENT_GROUP * multiplier)),
    ...(typeof hp.eval_samples === 'number' ? { eval_samples: hp.eval_samples } : {}),
    ...(base ? { judge: { base_url: base, api_key: process.env.WEITIAO_JUDGE_API_KEY ?? null } } : {}),
    // Per sample, for python graders (engine defaults: 10 s CPU, 20 s wall clock, 1024 MB).
    python_limits: {
      ...(process.env.WEITIAO_GRADER_CPU_SECONDS ? { cpu_seconds: Number(process.env.WEITIAO_GRADER_CPU_SECONDS) } : {}),
      ...(process.env.WEITIAO_GRADER_WALL_SECONDS ? { wall_seconds: Number(process.env.WEITIAO_GRADER_WALL_SECONDS) } : {}),
    },
    eval_every_steps: typeof hp.eval_interval === 'number' ? hp.eval_interval : 0,
  };
}
