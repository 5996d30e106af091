"""The engine side of the TypeScript <-> engine protocol, version 1 (mirror of src/engine/protocol.ts).

One request per process: `python -m weitiao_engine <command>` reads the request as one JSON line on
stdin and writes JSON-line events on stdout, flushed one at a time. Logs go to stderr. The first event
is `hello` (with `protocol_version`), the last `result` or `error`.

The exception is `serve`, the warm inference process: after its request line it reads `ServeCall`
lines until shutdown, and the `token`, `result` and `error` events of each call carry its `request_id`.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.experimental.missing_sentinel import MISSING

PROTOCOL_VERSION = 1


class Strict(BaseModel):
    # Unknown keys are errors, as in nanoGPT's configurator: a typo must not silently become a default.
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------------------- requests


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str
    # May be absent, never null (as src/engine/protocol.ts: the parity test compares them): MISSING leaves it
    # out of model_dump().
    weight: Union[Literal[0, 1], MISSING] = MISSING  # OpenAI's field: 0 = do not train on this assistant turn
    name: Union[str, MISSING] = MISSING  # OpenAI allows it; templates ignore it


class ChatExample(Strict):
    messages: list[ChatMessage]


class CreateTinyRequest(Strict):
    output_dir: str
    architecture: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(512, gt=0)
    vocab_size: int = Field(4096, gt=0)
    max_position_embeddings: int = Field(1024, gt=0)
    corpus_files: list[str] = Field(min_length=1)
    chat_template: Literal["chatml", "llama3", "glm4"] = "chatml"
    config_from: Optional[str] = None  # a real config.json whose shapes to copy (e.g. Qwen2.5-0.5B)
    seed: int = 0


class CountTokensRequest(Strict):
    model: str
    examples: list[ChatExample]


class LoraConfig(Strict):
    r: int = Field(8, gt=0, le=1024)
    alpha: float = Field(16, gt=0)
    # 0 by default, as PEFT, torchtune, Unsloth and LLaMA-Factory default: on a CPU a dropout mask per LoRA input
    # measured ~17% of a step on Qwen2.5-0.5B's shape (BENCHMARKS.md). The TypeScript default is the same.
    dropout: float = Field(0.0, ge=0, le=1)
    target_modules: Union[Literal["all-linear"], Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]] = "all-linear"
    # Modules trained in full and saved with the adapter (PEFT's modules_to_save), e.g. ["embed_tokens"]
    # for a random-weight base, whose tiny random embeddings LoRA alone cannot make use of.
    modules_to_save: Optional[list[Annotated[str, Field(min_length=1)]]] = Field(None, min_length=1)


class FullConfig(Strict):
    """Full fine-tuning: every weight trains, except what is frozen here."""

    freeze_embeddings: bool = False  # keep the input embedding (and a tied LM head) as they are
    freeze_layers: int = Field(0, ge=0)  # keep the first N decoder layers as they are


class DpoConfig(Strict):
    """Preference training (DPO): a LoRA policy against the same base with the adapter switched off."""

    beta: float = Field(0.1, gt=0)  # how far the policy may move from the reference (DPO paper: 0.1 … 0.5)
    reference: Literal["base"] = "base"  # the reference model: the base, i.e. the policy with its adapter disabled


class JudgeConfig(Strict):
    """Where score_model graders' judges are served (a grader's own `weitiao.base_url` wins)."""

    base_url: Optional[str] = None  # an OpenAI-compatible /v1, e.g. weitiao serve's own
    api_key: Optional[str] = None
    timeout_seconds: float = Field(120, gt=0)


class PythonGraderLimits(Strict):
    """Per sample, for `python` graders (graders/python_sandbox.py)."""

    cpu_seconds: float = Field(10, gt=0)
    wall_seconds: float = Field(20, gt=0)
    memory_mb: int = Field(1024, ge=64)


class JsonSchemaFormat(Strict):
    """OpenAI's `response_format.json_schema`: the schema sampled answers must match (graders/response_format.py)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: Optional[bool] = None
    description: Optional[str] = None


class ResponseFormat(Strict):
    """OpenAI's response_format for reinforcement answers: JSON matching a schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class ReinforcementConfig(Strict):
    """Reinforcement fine-tuning (recipes/grpo.py): sampled answers rewarded by the job's grader."""

    # lora: an adapter (`lora`), the reference is the base with it disabled; full: every weight, the reference a frozen copy
    policy: Literal["lora", "full"] = "lora"
    grader: Optional[dict[str, Any]] = None  # OpenAI's grader JSON, validated by graders/schema.py; required by `reinforcement`
    samples_per_prompt: int = Field(4, ge=2)  # GRPO's group (OpenAI's compute_multiplier): advantages are relative within it
    max_new_tokens: int = Field(64, gt=0)  # longest sampled answer
    temperature: float = Field(1.0, gt=0, le=2)  # sampling temperature of the training answers (validation is greedy)
    kl_beta: float = Field(0.0, ge=0)  # weight of the KL to the reference (the base); 0 = no reference pass at all
    clip_epsilon: float = Field(0.2, gt=0, lt=1)  # PPO/GRPO ratio clip
    eval_samples: Optional[int] = Field(None, gt=0)  # validation prompts per evaluation; None = the whole validation file
    response_format: Optional[ResponseFormat] = None  # JSON answers (graders read them as output_json); a mismatch scores 0
    grading_threads: int = Field(8, gt=0)  # samples graded at once (a slow judge or python grader does not serialise the batch)
    judge: JudgeConfig = JudgeConfig()
    python_limits: PythonGraderLimits = PythonGraderLimits()


class PreferenceExample(Strict):
    """One line of OpenAI's preference format: a conversation, a preferred and a non-preferred answer."""

    input: ChatExample
    preferred_output: list[ChatMessage] = Field(min_length=1)
    non_preferred_output: list[ChatMessage] = Field(min_length=1)


class TrainHyperparameters(Strict):
    n_epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    seed: int = 42
    max_seq_length: int = Field(1024, gt=0)  # see long_examples for what happens to longer examples
    # Examples longer than max_seq_length: truncate = cut the earliest non-system prompt tokens so the answer
    # stays whole (the answer's end only if it alone is too long); skip = leave them out; error = fail.
    long_examples: Literal["truncate", "skip", "error"] = "truncate"
    # Training controls (issue 4). batch_size stays the examples per optimizer step; accumulation splits
    # it into this many micro-batches, so memory falls and the update is the same.
    gradient_accumulation_steps: int = Field(1, gt=0)
    # Recompute activations in backward: less memory, ~1/3 more compute. auto: on for bases of 100M+ parameters,
    # where the activations outweigh the weights (training/activation_checkpointing.py; BENCHMARKS.md).
    gradient_checkpointing: Union[bool, Literal["auto"]] = "auto"
    early_stopping_patience: Optional[int] = Field(None, gt=0)  # stop after N validations without improvement
    early_stopping_min_delta: float = Field(0.0, ge=0)  # an improvement must lower the validation loss by more
    bf16: Literal["auto", "on", "off"] = "auto"  # auto: measured on this machine, training/precision.py choose_for_run (the probe, cached)
    group_by_length: bool = False  # batches of similar length (less padding); opt-in: no gain measured yet (BENCHMARKS.md)


class TrainRequest(Strict):
    base_model: str
    output_dir: str  # checkpoints: <output_dir>/checkpoints/step-N; result: <output_dir>/model
    training_file: str
    validation_file: Optional[str] = None
    method: Literal["lora", "qlora", "full", "dpo", "reinforcement"] = "lora"  # qlora: lora on a base whose linears are 4-bit NF4 (quantize.py)
    lora: LoraConfig = LoraConfig()  # also the policy adapter of `dpo`
    full: FullConfig = FullConfig()
    dpo: DpoConfig = DpoConfig()
    reinforcement: ReinforcementConfig = ReinforcementConfig()  # method `reinforcement`: grader, sampling, policy
    # Continued fine-tuning: a LoRA adapter trained on base_model, merged into it before this run trains.
    base_adapter: Optional[str] = None
    hyperparameters: TrainHyperparameters
    eval_every_steps: int = Field(0, ge=0)  # 0 = validation loss only at epoch ends
    save_every_steps: int = Field(0, ge=0)  # 0 = checkpoints only at epoch ends
    label_set: Optional[list[str]] = None  # answers form a label set: classification metrics per epoch
    resume: bool = False  # continue from the newest checkpoint in <output_dir>/checkpoints
    max_steps: Optional[int] = Field(None, gt=0)
    threads: Optional[int] = Field(None, gt=0)  # per process; None = the physical cores (shared out when nproc > 1)
    # Processes under torchrun (distributed.py): DDP for LoRA/QLoRA, FSDP for full fine-tuning. The global
    # batch stays hyperparameters.batch_size (each process takes batch_size / nproc), so the loss is unchanged.
    nproc: int = Field(1, ge=1)


class EstimateRequest(Strict):
    """`estimate`: peak memory and time per epoch that `train` would take with these settings (estimate.py)."""

    base_model: str
    training_file: str  # tokenized as `train` would: lengths after truncation, trained tokens per example
    method: Literal["lora", "qlora"] = "lora"
    lora: LoraConfig = LoraConfig()
    # The settings `train` has too are its own fields (bounds and defaults declared once, in TrainHyperparameters/TrainRequest).
    batch_size: int = TrainHyperparameters.model_fields["batch_size"]
    max_seq_length: int = TrainHyperparameters.model_fields["max_seq_length"]
    threads: Optional[int] = TrainRequest.model_fields["threads"]  # None = one per physical core, as `train`
    gradient_checkpointing: Union[bool, Literal["auto"]] = TrainHyperparameters.model_fields["gradient_checkpointing"]
    bf16: Literal["auto", "on", "off"] = TrainHyperparameters.model_fields["bf16"]
    # Activations are held for one micro-batch.
    gradient_accumulation_steps: int = TrainHyperparameters.model_fields["gradient_accumulation_steps"]


class EvaluateRequest(Strict):
    model: str
    adapter: Optional[str] = None
    data_file: str
    labels: Optional[list[str]] = None  # score these answers directly; None = generate and compare text
    batch_size: int = Field(32, gt=0)
    max_examples: Optional[int] = Field(None, gt=0)
    # Few-shot turns put before every prompt (after its system messages): the baseline a fine-tune must beat.
    prefix_messages: list[ChatMessage] = []
    seed: int = 0  # of the bootstrap intervals of generation metrics


class ChatRequest(Strict):
    model: str
    adapter: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(256, gt=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = []
    seed: Optional[int] = None
    stream: bool = True


class ServeRequest(Strict):
    """`serve`'s one request line (after it, stdin carries `ServeCall` lines until `shutdown` or EOF)."""

    max_models: int = Field(2, gt=0)  # base models kept loaded; a 0.5B model is ~2 GB in fp32
    max_adapters: int = Field(8, gt=0)  # adapters kept per base model (a modules_to_save adapter holds its own embeddings)
    threads: Optional[int] = Field(None, gt=0)  # None = one per physical core


class ServeCall(Strict):
    """One line to a running `serve` process. Every event a call causes carries its `id` as `request_id`.

    `{"id": "r1", "command": "chat", "request": {...ChatRequest...}}` queues an answer;
    `{"id": "c1", "command": "cancel", "target": "r1"}` drops r1 from the queue or stops it between tokens;
    `{"id": "s1", "command": "shutdown"}` cancels everything and ends the process (so does closing stdin).
    """

    id: str = Field(min_length=1)
    command: Literal["chat", "cancel", "shutdown"]
    request: Optional[dict[str, Any]] = None  # for `chat`; validated as a ChatRequest when its turn comes
    target: Optional[str] = None  # for `cancel`


# Quantization types of an exported GGUF. The gguf package's own quantizers write f32/f16/bf16/q8_0/q4_0/
# q4_1/q5_0/q5_1; the k-quants need llama.cpp's quantizer (libllama's llama_model_quantize), used only
# where `llama_library` names one.
GgufQuantization = Literal[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
    "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
]


class ExportRequest(Strict):
    """`export`: a model (base, or base + LoRA adapter merged in) written for use outside weitiao (export/)."""

    model: str  # the base model's Hugging Face folder
    adapter: Optional[str] = None  # a LoRA adapter folder trained on `model`; merged into it unless adapter_only
    format: Literal["hf", "gguf"]
    output_dir: str  # created; hf: the folder itself; gguf: holds model.gguf (and adapter.gguf)
    quantize: GgufQuantization = "f16"  # gguf only
    adapter_only: bool = False  # hf: the PEFT adapter as is (vLLM/LoRAX multi-LoRA); gguf: a LoRA GGUF for llama.cpp's --lora
    llama_library: Optional[str] = None  # libllama shared library for the k-quants (node-llama-cpp ships one)
    name: Optional[str] = None  # general.name in GGUF metadata, the model's registered name


class GradeSample(Strict):
    """One answer to grade: the model's text (`{{sample.output_text}}`, JSON also as `output_json`) and its data item."""

    model_sample: str
    item: dict[str, Any] = {}  # `{{item.x}}`: the data line's fields


class GradeRequest(Strict):
    """`grade`: validate a grader (graders/schema.py); with samples, grade each (OpenAI's graders/run result per sample)."""

    grader: dict[str, Any]  # validated by graders/schema.py, which names the field at fault
    samples: list[GradeSample] = []  # none: validate only
    items_file: Optional[str] = None  # JSONL whose every line must fill the grader's {{item.x}} templates
    judge: JudgeConfig = JudgeConfig()
    embedding_model: Optional[str] = None  # a sentence-embedding model folder, for text_similarity's cosine
    python_limits: PythonGraderLimits = PythonGraderLimits()


class ScoreAnswersRequest(Strict):
    """`score-answers`: generated answers of one or more systems (e.g. base, few-shot, fine-tuned) against the
    expected ones: chosen metrics and graders with bootstrap intervals, paired tests against `compare_to`."""

    expected: list[str]
    systems: dict[str, list[str]]  # name -> one answer per expected answer, in order
    items: Optional[list[dict[str, Any]]] = None  # `{{item.x}}` for graders; default {"reference_answer": expected}
    graders: list[dict[str, Any]] = []  # graders in OpenAI's shapes, each scored as a metric `grader:<name>`
    metrics: Optional[list[str]] = None  # these built-in metrics (eval_metrics.METRICS); None = chosen by the data
    resamples: int = Field(1000, ge=10)
    seed: int = 0
    compare_to: Optional[str] = None  # the system the others are tested against; default the last
    judge: JudgeConfig = JudgeConfig()
    python_limits: PythonGraderLimits = PythonGraderLimits()


REQUESTS: dict[str, type[Strict]] = {
    "create-tiny": CreateTinyRequest,
    "count-tokens": CountTokensRequest,
    "train": TrainRequest,
    "evaluate": EvaluateRequest,
    "chat": ChatRequest,
    "serve": ServeRequest,
    "estimate": EstimateRequest,
    "export": ExportRequest,
    "grade": GradeRequest,
    "score-answers": ScoreAnswersRequest,
}


# ------------------------------------------------------------------------------------------------- errors


class EngineError(Exception):
    """An error the control plane shows to the user as is (code from src/errors.ts)."""

    def __init__(self, code: str, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# ------------------------------------------------------------------------------------------------- events

_lock = threading.Lock()
_out = sys.stdout


def emit(type: str, **fields: Any) -> None:
    """Writes one event as a JSON line on stdout and flushes it, so the control plane sees it at once."""
    line = json.dumps({"type": type, **fields}, ensure_ascii=False, allow_nan=False)
    with _lock:
        _out.write(line + "\n")
        _out.flush()


def log(message: str, level: str = "info") -> None:
    emit("log", level=level, message=message)


def progress(phase: str, current: float, total: float, message: Optional[str] = None) -> None:
    fields: dict[str, Any] = {"phase": phase, "current": current, "total": total}
    if message is not None:
        fields["message"] = message
    emit("progress", **fields)
