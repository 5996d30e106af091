/** The JSON-line events the engine writes on stdout while it works (src/engine/protocol.ts is the entry). */
import { z } from 'zod';

/** Set on the events of one call to a `serve` process: the call's `id`. */
const RequestId = z.string().optional();

/** A metric's value and its bootstrap interval; scale 100 for sacrebleu's BLEU and chrF (percentages). */
export const MetricValue = z.object({ value: z.number(), ci_low: z.number(), ci_high: z.number(), scale: z.number() });
export type MetricValue = z.infer<typeof MetricValue>;

export const LabelMetrics = z.object({
  n: z.number().int(),
  accuracy: z.number(),
  macro_f1: z.number(),
  labels: z.array(z.string()),
  per_class: z.record(
    z.string(),
    z.object({ precision: z.number(), recall: z.number(), f1: z.number(), support: z.number().int() }),
  ),
  /** confusion_matrix[i][j] = examples whose answer is labels[i] and prediction labels[j]. */
  confusion_matrix: z.array(z.array(z.number().int())),
});
export type LabelMetrics = z.infer<typeof LabelMetrics>;

const Hello = z.object({
  type: z.literal('hello'),
  protocol_version: z.number().int(),
  engine_version: z.string(),
  command: z.string(),
  pid: z.number().int(),
  torch_version: z.string(),
  device: z.string(),
  threads: z.number().int(),
  /** The malloc the engine runs on: "tcmalloc" when the machine has it (engine/weitiao_engine/allocator.py), else "glibc". */
  allocator: z.string().optional(),
});
const Log = z.object({ type: z.literal('log'), level: z.enum(['debug', 'info', 'warning', 'error']), message: z.string() });
const Progress = z.object({
  type: z.literal('progress'),
  phase: z.string(),
  current: z.number(),
  total: z.number(),
  message: z.string().optional(),
});
const Metrics = z.object({
  type: z.literal('metrics'),
  step: z.number().int(),
  total_steps: z.number().int(),
  epoch: z.number(),
  train_loss: z.number().optional(),
  valid_loss: z.number().optional(),
  train_mean_token_accuracy: z.number().optional(),
  valid_mean_token_accuracy: z.number().optional(),
  learning_rate: z.number().optional(),
  grad_norm: z.number().optional(),
  tokens_per_second: z.number().optional(),
  examples_per_second: z.number().optional(),
  trained_tokens: z.number().int().optional(),
  elapsed_seconds: z.number(),
  eta_seconds: z.number().optional(),
  /** DPO: the share of pairs whose preferred answer gets the higher implicit reward, and the mean reward margin. */
  'rewards/accuracy': z.number().optional(),
  'rewards/margin': z.number().optional(),
  /** Reinforcement: mean grader reward of the step's sampled answers, per grader (a multi grader's sub-graders), answer
   * length in tokens, KL to the reference, grader failures (scored 0); `valid_*` at evaluation steps (greedy answers). */
  train_mean_reward: z.number().optional(),
  train_reward_per_grader: z.record(z.string(), z.number()).optional(),
  train_mean_answer_tokens: z.number().optional(),
  kl: z.number().optional(),
  grader_errors: z.number().int().optional(),
  /** With a response_format: answers that were not JSON matching its schema (scored 0, not graded). */
  train_malformed_answers: z.number().int().optional(),
  valid_malformed_answers: z.number().int().optional(),
  valid_mean_reward: z.number().optional(),
  valid_reward_per_grader: z.record(z.string(), z.number()).optional(),
  valid_mean_answer_tokens: z.number().optional(),
});
const Eval = z.object({
  type: z.literal('eval'),
  step: z.number().int(),
  epoch: z.number(),
  valid_loss: z.number().optional(),
  label_metrics: LabelMetrics.optional(),
  /** DPO, on the validation pairs. */
  'rewards/accuracy': z.number().optional(),
  'rewards/margin': z.number().optional(),
});
const Checkpoint = z.object({
  type: z.literal('checkpoint'),
  step: z.number().int(),
  epoch: z.number(),
  path: z.string(),
  train_loss: z.number().optional(),
  valid_loss: z.number().optional(),
});
const Token = z.object({ type: z.literal('token'), text: z.string(), request_id: RequestId });
const Result = z.object({ type: z.literal('result'), data: z.record(z.string(), z.unknown()), request_id: RequestId });
const EngineErrorEvent = z.object({
  type: z.literal('error'),
  code: z.string(),
  message: z.string(),
  param: z.string().nullable().optional(),
  request_id: RequestId,
});

export const EngineEvent = z.discriminatedUnion('type', [Hello, Log, Progress, Metrics, Eval, Checkpoint, Token, Result, EngineErrorEvent]);
export type EngineEvent = z.infer<typeof EngineEvent>;
export type HelloEvent = z.infer<typeof Hello>;
export type MetricsEvent = z.infer<typeof Metrics>;
export type EvalEvent = z.infer<typeof Eval>;
export type CheckpointEvent = z.infer<typeof Checkpoint>;
