/** What the control plane sends the engine: one request line per command (src/engine/protocol.ts is the entry). */
import { z } from 'zod';

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
  r: z.number().int().positive().max(1024).default(8),
  alpha: z.number().positive().default(16),
  /** 0 by default, as PEFT, torchtune, Unsloth and LLaMA-Factory (the engine's protocol.py says why). */
  dropout: z.number().min(0).max(1).default(0),
  /** `all-linear` (every linear layer but the LM head) or explicit module names. */
  target_modules: z.union([z.literal('all-linear'), z.array(z.string().min(1)).min(1)]).default('all-linear'),
  /**
   * Modules trained in full and saved with the adapter (PEFT's `modules_to_save`), e.g. `['embed_tokens']`
   * for a random-weight base, whose tiny random embeddings LoRA alone cannot make use of.
   */
  modules_to_save: z.array(z.string().min(1)).min(1).nullable().default(null),
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

/** OpenAI's response_format for reinforcement answers: JSON matching `json_schema.schema` (engine graders/response_format.py). */
export const ResponseFormat = z.strictObject({
  type: z.literal('json_schema'),
  json_schema: z.strictObject({
    name: z.string().min(1),
    schema: z.record(z.string(), z.unknown()),
    strict: z.boolean().nullable().default(null),
    description: z.string().nullable().default(null),
  }),
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
  /** JSON answers (graders read them as `{{sample.output_json.x}}`); an answer not matching the schema scores 0. */
  response_format: ResponseFormat.nullable().default(null),
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
