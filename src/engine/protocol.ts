/**
 * The TypeScript ↔ engine protocol, version 1. Mirrors engine/weitiao_engine/protocol.py; a test runs
 * each command through the real engine so the two cannot drift apart silently.
 *
 * One request per process: the control plane runs `python -m weitiao_engine <command>`, writes the
 * request as one JSON line on stdin and reads JSON-line events from stdout (logs go to stderr).
 * The first event is `hello` with `protocol_version`; the last is `result` or `error`.
 *
 * The exception is `serve`, the warm inference process (src/engine/warm.ts): after its request line it
 * reads `ServeCall` lines until shutdown, and the `token`, `result` and `error` events of each call
 * carry its `request_id`.
 */
import { z } from 'zod';

export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------------------------------------- requests

export const ChatMessage = z.object({
  role: z.enum(['system', 'user', 'assistant', 'tool', 'developer']),
  content: z.string(),
  /** OpenAI's per-message training weight: 0 means "do not train on this assistant turn". */
  weight: z.union([z.literal(0), z.literal(1)]).optional(),
  /** OpenAI allows it; chat templates ignore it. */
  name: z.string().optional(),
});
export type ChatMessage = z.infer<typeof ChatMessage>;

export const ChatExample = z.object({ messages: z.array(ChatMessage) });
export type ChatExample = z.infer<typeof ChatExample>;

export const CreateTinyRequest = z.object({
  output_dir: z.string(),
  architecture: z.enum(['qwen2', 'llama']).default('qwen2'),
  hidden_size: z.number().int().positive().default(128),
  num_hidden_layers: z.number().int().positive().default(2),
  num_attention_heads: z.number().int().positive().default(4),
  num_key_value_heads: z.number().int().positive().default(2),
  intermediate_size: z.number().int().positive().default(512),
  vocab_size: z.number().int().positive().default(4096),
  max_position_embeddings: z.number().int().positive().default(1024),
  /** Text files whose lines train the byte-level BPE tokenizer (CSV is fine: it is just text). */
  corpus_files: z.array(z.string()).min(1),
  /** `chatml` (Qwen) or `llama3`. */
  chat_template: z.enum(['chatml', 'llama3', 'glm4']).default('chatml'),
  /** A real model's config.json whose shapes to copy (e.g. Qwen2.5-0.5B), overriding the sizes above. */
  config_from: z.string().nullable().default(null),
  seed: z.number().int().default(0),
});
export type CreateTinyRequest = z.input<typeof CreateTinyRequest>;

export const CountTokensRequest = z.object({
  model: z.string(),
  examples: z.array(ChatExample),
});
export type CountTokensRequest = z.input<typeof CountTokensRequest>;

export const LoraConfig = z.object({
  r: z.number().int().positive().default(8),
  alpha: z.number().positive().default(16),
  dropout: z.number().min(0).max(1).default(0.05),
  /** `all-linear` (every linear layer but the LM head) or explicit module names. */
  target_modules: z.union([z.literal('all-linear'), z.array(z.string()).min(1)]).default('all-linear'),
  /**
   * Modules trained in full and saved with the adapter (PEFT's `modules_to_save`), e.g. `['embed_tokens']`
   * for a random-weight base, whose tiny random embeddings LoRA alone cannot make use of.
   */
  modules_to_save: z.array(z.string()).min(1).nullable().default(null),
});

/** Full fine-tuning: every weight trains except what is frozen here. */
export const FullConfig = z.object({
  /** Keep the input embedding (and an LM head tied to it) as it is. */
  freeze_embeddings: z.boolean().default(false),
  /** Keep the first N decoder layers as they are. */
  freeze_layers: z.number().int().min(0).default(0),
});

/** Preference training: a LoRA policy (`lora`) against the same base with the adapter disabled. */
export const DpoConfig = z.object({
  /** How far the policy may move from the reference (the DPO paper uses 0.1 … 0.5). */
  beta: z.number().positive().default(0.1),
  reference: z.literal('base').default('base'),
});

/** Where score_model graders' judges are served (a grader's own `weitiao.base_url` wins). */
export const JudgeConfig = z.object({
  /** An OpenAI-compatible `/v1`, e.g. `weitiao serve`'s own. */
  base_url: z.string().nullable().default(null),
  api_key: z.string().nullable().default(null),
  timeout_seconds: z.number().positive().default(120),
});

/** Per sample, for `python` graders (engine/weitiao_engine/graders/python_sandbox.py). */
export const PythonGraderLimits = z.object({
  cpu_seconds: z.number().positive().default(10),
  wall_seconds: z.number().positive().default(20),
  memory_mb: z.number().int().min(64).default(1024),
});

/** Reinforcement fine-tuning (engine recipes/grpo.py): sampled answers rewarded by the job's grader. */
export const ReinforcementConfig = z.object({
  /** `lora`: an adapter, the reference is the base with it disabled; `full`: every weight, the reference a frozen copy. */
  policy: z.enum(['lora', 'full']).default('lora'),
  /** OpenAI's grader JSON (src/graders/schema.ts, the engine's graders/schema.py); required by `reinforcement`. */
  grader: z.record(z.string(), z.unknown()).nullable().default(null),
  /** GRPO's group, OpenAI's `compute_multiplier`: advantages are relative within it. */
  samples_per_prompt: z.number().int().min(2).default(4),
  max_new_tokens: z.number().int().positive().default(64),
  /** Of the training answers; validation answers are greedy. */
  temperature: z.number().positive().max(2).default(1),
  /** Weight of the KL to the reference; 0 = no reference pass. */
  kl_beta: z.number().min(0).default(0),
  clip_epsilon: z.number().positive().lt(1).default(0.2),
  /** Validation prompts per evaluation; null = the whole validation file. */
  eval_samples: z.number().int().positive().nullable().default(null),
  /** OpenAI's response_format: JSON answers, read by graders as `{{sample.output_json.x}}`. */
  response_format: z.record(z.string(), z.unknown()).nullable().default(null),
  /** Samples graded at once, so a slow judge or python grader does not serialise the batch. */
  grading_threads: z.number().int().positive().default(8),
  judge: JudgeConfig.default(JudgeConfig.parse({})),
  python_limits: PythonGraderLimits.default(PythonGraderLimits.parse({})),
});

/** One line of OpenAI's preference fine-tuning format. */
export const PreferenceExample = z.object({
  input: ChatExample,
  preferred_output: z.array(ChatMessage).min(1),
  non_preferred_output: z.array(ChatMessage).min(1),
});
export type PreferenceExample = z.infer<typeof PreferenceExample>;

export const TrainHyperparameters = z.object({
  n_epochs: z.number().int().positive(),
  batch_size: z.number().int().positive(),
  learning_rate: z.number().positive(),
  weight_decay: z.number().min(0).default(0),
  max_grad_norm: z.number().positive().default(1),
  warmup_ratio: z.number().min(0).max(1).default(0),
  lr_scheduler: z.enum(['linear', 'cosine', 'constant']).default('linear'),
  seed: z.number().int().default(42),
  max_seq_length: z.number().int().positive().default(1024),
  /** Examples longer than `max_seq_length`: `truncate` cuts the earliest non-system prompt tokens so the answer stays whole; `skip` leaves them out; `error` fails. */
  long_examples: z.enum(['truncate', 'skip', 'error']).default('truncate'),
  /** `batch_size` stays the examples per optimizer step; accumulation splits it into this many micro-batches. */
  gradient_accumulation_steps: z.number().int().positive().default(1),
  /** Recompute activations in backward: less memory, about a third more compute. `auto`: on for bases of 100M+ parameters. */
  gradient_checkpointing: z.union([z.boolean(), z.literal('auto')]).default('auto'),
  /** Stop after this many validations without improvement (null: never). */
  early_stopping_patience: z.number().int().positive().nullable().default(null),
  early_stopping_min_delta: z.number().min(0).default(0),
  /** `auto`: bf16 compute on GPUs that support it; on a CPU (LoRA/QLoRA) where a probe of the model's linear shapes finds it faster (PrecisionChoice). */
  bf16: z.enum(['auto', 'on', 'off']).default('auto'),
  /** Batches of similar length (less padding); the order still depends only on the seed and epoch. */
  group_by_length: z.boolean().default(false),
});

export const TrainRequest = z.object({
  base_model: z.string(),
  /** The job's directory: checkpoints go to `<output_dir>/checkpoints/step-N`, the result to `<output_dir>/model`. */
  output_dir: z.string(),
  training_file: z.string(),
  validation_file: z.string().nullable().default(null),
  /** `qlora`: LoRA on a base whose linear layers are held in 4-bit NF4 (engine/weitiao_engine/quantize.py). */
  method: z.enum(['lora', 'qlora', 'full', 'dpo', 'reinforcement']).default('lora'),
  /** LoRA settings; also the policy adapter of `dpo`. */
  lora: LoraConfig.default(LoraConfig.parse({})),
  full: FullConfig.default(FullConfig.parse({})),
  dpo: DpoConfig.default(DpoConfig.parse({})),
  reinforcement: ReinforcementConfig.default(ReinforcementConfig.parse({})),
  /** Continued fine-tuning: a LoRA adapter trained on `base_model`, merged into it (`<output_dir>/base`) before training. */
  base_adapter: z.string().nullable().default(null),
  hyperparameters: TrainHyperparameters,
  /** Validation loss every N steps (besides every epoch end); 0 = only at epoch ends. */
  eval_every_steps: z.number().int().min(0).default(0),
  /** A checkpoint every N steps (besides every epoch end); 0 = only at epoch ends. */
  save_every_steps: z.number().int().min(0).default(0),
  /** When the answers form a small label set: accuracy/precision/recall/F1 at each epoch end. */
  label_set: z.array(z.string()).nullable().default(null),
  /** Continue from the newest checkpoint in `<output_dir>/checkpoints` when there is one. */
  resume: z.boolean().default(false),
  /** Stop after this many optimizer steps (tests, smoke runs). */
  max_steps: z.number().int().positive().nullable().default(null),
  threads: z.number().int().positive().nullable().default(null),
  /** Training processes: above 1 the engine launches itself under torchrun (DDP; FSDP for full fine-tuning). */
  nproc: z.number().int().min(1).default(1),
});
export type TrainRequest = z.input<typeof TrainRequest>;

/** `estimate`: the peak memory and time per epoch `train` would take with these settings (engine/weitiao_engine/estimate.py). */
export const EstimateRequest = z.object({
  base_model: z.string(),
  /** Tokenized as `train` would: lengths after truncation, trained tokens per example. */
  training_file: z.string(),
  method: z.enum(['lora', 'qlora']).default('lora'),
  lora: LoraConfig.default(LoraConfig.parse({})),
  batch_size: z.number().int().positive(),
  max_seq_length: z.number().int().positive().default(1024),
  /** null = one per physical core, as `train`. */
  threads: z.number().int().positive().nullable().default(null),
  /** As `train`'s hyperparameters of the same names. */
  gradient_checkpointing: z.union([z.boolean(), z.literal('auto')]).default('auto'),
  bf16: z.enum(['auto', 'on', 'off']).default('auto'),
  /** Activations are held for one micro-batch: ⌈batch_size / gradient_accumulation_steps⌉ rows. */
  gradient_accumulation_steps: z.number().int().positive().default(1),
});
export type EstimateRequest = z.input<typeof EstimateRequest>;

export const EvaluateRequest = z.object({
  model: z.string(),
  adapter: z.string().nullable().default(null),
  data_file: z.string(),
  /** Score these answers directly (one forward pass per batch); null = generate and compare text. */
  labels: z.array(z.string()).nullable().default(null),
  batch_size: z.number().int().positive().default(32),
  max_examples: z.number().int().positive().nullable().default(null),
  /** Few-shot turns put before every prompt (after its system messages): the baseline a fine-tune must beat. */
  prefix_messages: z.array(ChatMessage).default([]),
  /** Of the bootstrap intervals of generation metrics. */
  seed: z.number().int().default(0),
});
export type EvaluateRequest = z.input<typeof EvaluateRequest>;

export const ChatRequest = z.object({
  model: z.string(),
  adapter: z.string().nullable().default(null),
  messages: z.array(ChatMessage).min(1),
  max_tokens: z.number().int().positive().default(256),
  temperature: z.number().min(0).max(2).default(1),
  top_p: z.number().gt(0).max(1).default(1),
  stop: z.array(z.string()).default([]),
  seed: z.number().int().nullable().default(null),
  stream: z.boolean().default(true),
});
export type ChatRequest = z.input<typeof ChatRequest>;

/**
 * Quantization types of an exported GGUF. The gguf package's own quantizers write f32 … q5_1; the k-quants
 * need llama.cpp's quantizer (libllama's `llama_model_quantize`), used only where `llama_library` names one.
 */
export const GgufQuantization = z.enum([
  'f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1',
  'q2_k', 'q3_k_s', 'q3_k_m', 'q3_k_l', 'q4_k_s', 'q4_k_m', 'q5_k_s', 'q5_k_m', 'q6_k',
]);
export type GgufQuantization = z.infer<typeof GgufQuantization>;

/** `export`: a model (a base, or a base with a LoRA adapter merged in) written for use outside weitiao. */
export const ExportRequest = z.object({
  /** The base model's Hugging Face folder. */
  model: z.string(),
  /** A LoRA adapter folder trained on `model`; merged into it unless `adapter_only`. */
  adapter: z.string().nullable().default(null),
  format: z.enum(['hf', 'gguf']),
  /** Created. hf: the folder itself; gguf: holds `model.gguf` (or `adapter.gguf`). */
  output_dir: z.string(),
  /** gguf only. */
  quantize: GgufQuantization.default('f16'),
  /** hf: the PEFT adapter as is (vLLM/LoRAX multi-LoRA); gguf: a LoRA GGUF for llama.cpp's `--lora`. */
  adapter_only: z.boolean().default(false),
  /** libllama shared library for the k-quants (node-llama-cpp ships one). */
  llama_library: z.string().nullable().default(null),
  /** `general.name` in GGUF metadata: the model's registered name. */
  name: z.string().nullable().default(null),
});
export type ExportRequest = z.input<typeof ExportRequest>;

/** One answer to grade: the model's text (`{{sample.output_text}}`; JSON also as `output_json`) and its data item (`{{item.x}}`). */
export const GradeSample = z.object({
  model_sample: z.string(),
  item: z.record(z.string(), z.unknown()).default({}),
});

/** `grade`: validate a grader; with samples, grade each (one OpenAI graders/run result per sample). */
export const GradeRequest = z.object({
  /** Validated by the engine's graders/schema.py (and src/graders/schema.ts before it), which name the field at fault. */
  grader: z.record(z.string(), z.unknown()),
  /** None: validate only. */
  samples: z.array(GradeSample).default([]),
  /** A JSONL file whose every line must fill the grader's `{{item.x}}` templates (errors name file:line and field). */
  items_file: z.string().nullable().default(null),
  judge: JudgeConfig.default(JudgeConfig.parse({})),
  /** A sentence-embedding model folder, for text_similarity's `cosine`. */
  embedding_model: z.string().nullable().default(null),
  python_limits: PythonGraderLimits.default(PythonGraderLimits.parse({})),
});
export type GradeRequest = z.input<typeof GradeRequest>;

/** `serve`'s one request line; after it, stdin carries `ServeCall` lines until `shutdown` or end of input. */
export const ServeRequest = z.object({
  /** Base models kept loaded (least recently used out); a 0.5B model is ~2 GB in fp32. */
  max_models: z.number().int().positive().default(2),
  /** Adapters kept per base model (an adapter with `modules_to_save` holds its own copy of those modules). */
  max_adapters: z.number().int().positive().default(8),
  threads: z.number().int().positive().nullable().default(null),
});
export type ServeRequest = z.input<typeof ServeRequest>;

/**
 * One line to a running `serve` process; every event a call causes carries its `id` as `request_id`.
 * `chat` queues an answer (answered strictly one at a time, in arrival order); `cancel` drops `target`
 * from the queue or stops it between two tokens; `shutdown` cancels everything and ends the process.
 */
export const ServeCall = z.discriminatedUnion('command', [
  z.object({ id: z.string().min(1), command: z.literal('chat'), request: ChatRequest }),
  z.object({ id: z.string().min(1), command: z.literal('cancel'), target: z.string() }),
  z.object({ id: z.string().min(1), command: z.literal('shutdown') }),
]);
export type ServeCall = z.input<typeof ServeCall>;

// ------------------------------------------------------------------------------------------------ events

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

// ------------------------------------------------------------------------------------------------ results

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

export const ScoreAnswersRequest = z.object({
  expected: z.array(z.string()),
  /** name -> one answer per expected answer, in order (e.g. base, few-shot, fine-tuned). */
  systems: z.record(z.string(), z.array(z.string())),
  /** `{{item.x}}` for graders; default {reference_answer: expected}. */
  items: z.array(z.record(z.string(), z.unknown())).nullable().default(null),
  /** Graders in OpenAI's shapes, each scored as the metric `grader:<name>`. */
  graders: z.array(z.record(z.string(), z.unknown())).default([]),
  /** These built-in metrics (engine eval_metrics.METRICS); null = chosen by the data. */
  metrics: z.array(z.string()).nullable().default(null),
  resamples: z.number().int().min(10).default(1000),
  seed: z.number().int().default(0),
  /** The system the others are tested against; default the last. */
  compare_to: z.string().nullable().default(null),
  judge: JudgeConfig.default(JudgeConfig.parse({})),
  python_limits: PythonGraderLimits.default(PythonGraderLimits.parse({})),
});
export type ScoreAnswersRequest = z.input<typeof ScoreAnswersRequest>;

/** What `serve` returns when it shuts down: how many answers it gave. */
export const ServeResult = z.object({ served: z.number().int() });
export type ServeResult = z.infer<typeof ServeResult>;

/** Each command's request and result schemas, so `runEngine` is typed end to end. */
export const COMMANDS = {
  'create-tiny': { request: CreateTinyRequest, result: CreateTinyResult },
  'count-tokens': { request: CountTokensRequest, result: CountTokensResult },
  train: { request: TrainRequest, result: TrainResult },
  evaluate: { request: EvaluateRequest, result: EvaluateResult },
  chat: { request: ChatRequest, result: ChatResult },
  estimate: { request: EstimateRequest, result: EstimateResult },
  export: { request: ExportRequest, result: ExportResult },
  grade: { request: GradeRequest, result: GradeResult },
  'score-answers': { request: ScoreAnswersRequest, result: ScoreAnswersResult },
} as const;
export type EngineCommand = keyof typeof COMMANDS;

/** The calls a warm `serve` process answers, with their request and result schemas (see src/engine/warm.ts). */
export const SERVE_COMMANDS = {
  chat: COMMANDS.chat,
} as const;
export type ServeCommand = keyof typeof SERVE_COMMANDS;
