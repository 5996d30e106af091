/** Each command's `result` event data (src/engine/protocol.ts is the entry). */
import { z } from 'zod';
import { LabelMetrics, MetricValue } from './events.js';

/** How `precision` was chosen (engine training/precision_probe.py): on a CPU, the probe of the model's own linear
 * shapes (seconds per forward + input-gradient pass over them, GFLOP/s per variant), cached per machine. */
export const PrecisionChoice = z.object({
  precision: z.enum(['bf16', 'bf16-weights', 'fp32']),
  /** `probe` (auto, measured), `bf16: on|off` (the job's), or on a GPU `bf16: … (cuda)`. */
  source: z.string(),
  reason: z.string().optional(),
  threads: z.number().int().optional(),
  figures: z
    .object({
      cpu: z.string(),
      flags: z.array(z.string()),
      torch: z.string(),
      threads: z.number().int(),
      tokens: z.number().int(),
      shapes: z.array(z.array(z.number().int())),
      seconds: z.record(z.string(), z.number()),
      gflops: z.record(z.string(), z.number()),
      native_bf16: z.boolean(),
      /** Relative error of bf16 products against fp32; null when they were not finite. */
      bf16_error: z.number().nullable(),
      bf16_safe: z.boolean(),
      cached: z.boolean().optional(),
      /** One decoder layer's step per variant (what `auto` decides on), at `layer_tokens` rows. */
      layer_seconds: z.record(z.string(), z.number()).optional(),
      layer_tokens: z.number().int().optional(),
      /** Share of the probe's time its threads waited for a CPU; `contended` figures are measured again later. */
      cpu_wait: z.number().optional(),
      contended: z.boolean().optional(),
      attempts: z.number().int().optional(),
    })
    .optional(),
});
export type PrecisionChoice = z.infer<typeof PrecisionChoice>;

export const TrainResult = z.object({
  model_dir: z.string().nullable(),
  interrupted: z.boolean(),
  steps: z.number().int(),
  total_steps: z.number().int(),
  trained_tokens: z.number().int(),
  final_train_loss: z.number().nullable(),
  final_valid_loss: z.number().nullable(),
  last_checkpoint: z.string().nullable(),
  early_stopped: z.boolean().optional(),
  /** Examples cut to `max_seq_length`. */
  truncated_examples: z.object({ training: z.number().int(), validation: z.number().int() }).optional(),
  precision: z.enum(['bf16', 'bf16-weights', 'fp32']).optional(),
  precision_choice: PrecisionChoice.optional(),
  /** What gradient checkpointing became: selective keeps the matmul outputs, full only each layer's input. */
  gradient_checkpointing: z.enum(['off', 'full', 'selective']).optional(),
  /** Padding-free (packed) training batches; false when the model cannot keep packed sequences apart. */
  packed: z.boolean().optional(),
});
export type TrainResult = z.infer<typeof TrainResult>;

export const EvaluateResult = z.object({
  n: z.number().int(),
  valid_loss: z.number().nullable(),
  label_metrics: LabelMetrics.nullable(),
  predictions: z.array(z.object({ index: z.number().int(), expected: z.string(), predicted: z.string() })),
  examples_per_second: z.number(),
  /** Wall time per request and mean prompt tokens per request (few-shot turns included): a baseline's cost. */
  seconds_per_example: z.number(),
  prompt_tokens: z.number(),
  /** Generate mode: each metric the data call for, with its bootstrap interval (engine eval_metrics.py). */
  generation_metrics: z
    .object({
      metrics: z.record(z.string(), MetricValue),
      per_example: z.record(z.string(), z.array(z.number())),
      tokenizer: z.string(),
    })
    .nullable(),
});
export type EvaluateResult = z.infer<typeof EvaluateResult>;

/** What `score-answers` returns: per system and metric a value with its interval, and paired tests. */
export const ScoreAnswersResult = z.object({
  n: z.number().int(),
  metrics: z.record(z.string(), z.record(z.string(), MetricValue)),
  per_example: z.record(z.string(), z.record(z.string(), z.array(z.number()))),
  comparisons: z.array(
    z.object({
      system: z.string(),
      baseline: z.string(),
      metric: z.string(),
      /** system minus baseline, its paired-bootstrap interval, the approximate-randomisation p-value. */
      delta: z.number(),
      ci_low: z.number(),
      ci_high: z.number(),
      p_value: z.number(),
    }),
  ),
  resamples: z.number().int(),
  seed: z.number().int(),
  confidence: z.number(),
  tokenizer: z.string(),
});
export type ScoreAnswersResult = z.infer<typeof ScoreAnswersResult>;

export const ChatResult = z.object({
  text: z.string(),
  finish_reason: z.enum(['stop', 'length']),
  usage: z.object({ prompt_tokens: z.number().int(), completion_tokens: z.number().int(), total_tokens: z.number().int() }),
});
export type ChatResult = z.infer<typeof ChatResult>;

export const CountTokensResult = z.object({
  counts: z.array(z.number().int()),
  /** Tokens with a loss label per example (assistant answers + end-of-turn), as training marks them; null when the template cannot be split into turns. Absent from engines before this field. */
  trained_counts: z.array(z.number().int()).nullable().default(null),
  model_max_length: z.number().int(),
});
export type CountTokensResult = z.infer<typeof CountTokensResult>;

export const CreateTinyResult = z.object({ path: z.string(), parameters: z.number().int(), vocab_size: z.number().int() });
export type CreateTinyResult = z.infer<typeof CreateTinyResult>;

export const EstimateResult = z.object({
  method: z.enum(['lora', 'qlora']),
  /** Predicted peak resident memory of the `train` process: runtime + max(loading, training). */
  peak_memory_bytes: z.number().int(),
  memory: z.object({
    /** Python, torch, transformers, the tokenizer and the data: measured in the estimating process. */
    runtime_bytes: z.number().int(),
    /** The base read in fp32 (QLoRA quantizes after loading). */
    load_bytes: z.number().int(),
    /** The base while training: fp32, or NF4 codes + absmax for the linears under QLoRA. */
    base_weights_bytes: z.number().int(),
    trainable_bytes: z.number().int(),
    gradient_bytes: z.number().int(),
    /** AdamW's two fp32 moments per trainable parameter. */
    optimizer_bytes: z.number().int(),
    /** What autograd saves for the widest batch (measured per token on a one-layer copy of the model). */
    activation_bytes: z.number().int(),
    /** Logits, log-softmax and their gradient on the trained positions. */
    lm_head_bytes: z.number().int(),
  }),
  time_per_epoch_seconds: z.number(),
  steps_per_epoch: z.number().int(),
  n_examples: z.number().int(),
  n_truncated: z.number().int(),
  tokens_per_epoch: z.number().int(),
  padded_tokens_per_epoch: z.number().int(),
  max_tokens: z.number().int(),
  mean_tokens: z.number(),
  base_parameters: z.number().int(),
  trainable_parameters: z.number().int(),
  flops_per_epoch: z.number(),
  /** This machine's matmul rate in the run's precision: the precision probe's figure on a CPU (under a second, cached). */
  matmul_flops_per_second: z.number(),
  /** The share of that rate whole training steps achieve. */
  efficiency: z.number(),
  threads: z.number().int(),
  /** As `train` will resolve it: off, full, or selective (when the kept matmul outputs fit in the base's bytes). */
  precision: z.enum(['bf16', 'bf16-weights', 'fp32']).optional(),
  precision_choice: PrecisionChoice.optional(),
  gradient_checkpointing: z.enum(['off', 'full', 'selective']).optional(),
});
export type EstimateResult = z.infer<typeof EstimateResult>;

/** What `export` wrote. */
export const ExportResult = z.object({
  format: z.enum(['hf', 'gguf']),
  /** The folder (hf) or the .gguf file (gguf). */
  path: z.string(),
  files: z.array(z.object({ name: z.string(), bytes: z.number().int(), sha256: z.string() })),
  architecture: z.string(),
  quantize: z.string().nullable(),
  adapter_only: z.boolean(),
  /** The Jinja chat template written with the model (tokenizer_config.json / tokenizer.chat_template). */
  chat_template: z.string().nullable(),
  bos_token: z.string().nullable(),
  eos_token: z.string().nullable(),
  /** Every token that ends a turn: generation_config's eos ids, the GGUF's eos/eot ids, Ollama's `PARAMETER stop`. */
  stop_tokens: z.array(z.string()),
  context_length: z.number().int(),
  parameters: z.number().int(),
});
export type ExportResult = z.infer<typeof ExportResult>;

/** OpenAI's graders/run error flags (all false when the grader ran cleanly) and their details. */
export const GraderRunErrors = z.object({
  formula_parse_error: z.boolean(),
  invalid_variable_error: z.boolean(),
  model_grader_parse_error: z.boolean(),
  model_grader_refusal_error: z.boolean(),
  model_grader_server_error: z.boolean(),
  model_grader_server_error_details: z.string().nullable(),
  other_error: z.boolean(),
  python_grader_runtime_error: z.boolean(),
  python_grader_runtime_error_details: z.string().nullable(),
  python_grader_server_error: z.boolean(),
  python_grader_server_error_type: z.string().nullable(),
  sample_parse_error: z.boolean(),
  truncated_observation_error: z.boolean(),
  unresponsive_reward_error: z.boolean(),
});

/** One sample's grade in the shape of OpenAI's `POST /fine_tuning/alpha/graders/run` response, plus `weitiao`. */
export const GraderRunResult = z.object({
  reward: z.number(),
  metadata: z.object({
    name: z.string(),
    type: z.string(),
    errors: GraderRunErrors,
    execution_time: z.number(),
    /** multi: each named grader's score. */
    scores: z.record(z.string(), z.number()),
    /** The judge's total tokens (score_model), else null. */
    token_usage: z.number().int().nullable(),
    sampled_model_name: z.string().nullable(),
  }),
  sub_rewards: z.record(z.string(), z.number()),
  model_grader_token_usage_per_model: z.record(z.string(), z.record(z.string(), z.unknown())),
  weitiao: z.object({
    /** e.g. `tokenization: character` for CJK text, the judge's answer, the sandbox's walls; per named grader for multi. */
    notes: z.record(z.string(), z.unknown()),
    /** Why the reward is 0, when it is for a failure (also logged). */
    error_messages: z.array(z.string()),
  }),
});
export type GraderRunResult = z.infer<typeof GraderRunResult>;

export const GradeResult = z.object({
  grader: z.record(z.string(), z.unknown()),
  results: z.array(GraderRunResult),
});
export type GradeResult = z.infer<typeof GradeResult>;

/** What `serve` returns when it shuts down: how many answers it gave. */
export const ServeResult = z.object({ served: z.number().int() });
export type ServeResult = z.infer<typeof ServeResult>;
