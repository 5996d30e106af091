"""LoRA fine-tuning on CPU or one GPU: `train` with method `lora`.

    echo '{"base_model": "...", "output_dir": "...", "training_file": "train.jsonl", "hyperparameters":
          {"n_epochs": 2, "batch_size": 16, "learning_rate": 2e-3}}' | python -m weitiao_engine train

Reads top to bottom: setup (threads, seed, base model + LoRA, data, optimizer, scheduler, resume) ->
train (one optimizer step per batch; validation, label metrics and checkpoints on schedule) ->
save_final -> cleanup. Events (metrics, eval, checkpoint) go to stdout as JSON lines.

Speed (bench/ measures each against TRL's SFTTrainer): the LM head and cross-entropy run only where
labels exist; batches are padding-free (`pack`: examples end to end, position ids restarting, attention kept
within each example); LoRA's dropout mask is drawn as geometric gaps (lora_dropout.py); the frozen base is
held in the checkpoint's dtype (bf16 for real checkpoints: half an fp32 copy), and the matmuls run under
bf16 autocast where bf16 is native (GPU, AMX) or else in fp32 from upcast weights (torch's bf16 GEMM on
AVX512-BF16 without AMX measured slower than fp32: BENCHMARKS.md); the LoRA weights and optimizer stay
fp32; one torch thread per physical core. Memory: the base is read tensor by tensor (loading.load_causal_lm,
never a dense copy beside it; QLoRA quantizes each matrix as it arrives), freed activations are reused by
tcmalloc or handed back to the OS by glibc (allocator.py), and gradient checkpointing is on by default for
bases of 100M+ parameters, whose activations outweigh their weights: selective (the matmul outputs kept, only the cheap
ops recomputed) while what it keeps fits in the base's own size, else full (checkpointing.py).

Determinism: the data order of epoch e comes from its own generator seeded with (seed, e), and each
checkpoint holds the optimizer, scheduler and every RNG state (dropout included) plus the position in
the epoch, so a run stopped by SIGTERM and resumed ends exactly where an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from contextlib import nullcontext

from .. import __version__, distributed
from ..chat_format import IGNORE_INDEX, TokenizedExample, answers_for_prompts, tokenize_examples
from ..metrics import label_metrics
from ..atomic import atomic_dir
from ..protocol import ChatExample, EngineError, TrainRequest, emit, log, progress

EVAL_BATCH_SIZE = 64  # validation needs no gradients, so bigger batches are cheap
LENGTH_GROUP_BATCHES = 16  # length grouping sorts windows of this many batches: enough to match lengths, still shuffled
# Compute the LM head only at positions that predict a labelled token. Only the benchmark's ablation turns
# it off, to measure what it saves; both ways give the same loss.
LM_HEAD_AT_LABELS_ONLY = True
# Padding-free batches (see `pack`) and the cheaper LoRA dropout mask (lora_dropout.py): on unless the
# benchmark's ablations turn them off to measure them.
PACKING = True
FAST_LORA_DROPOUT = True
# A packed row holds up to this many tokens (or one longest example): SDPA on CPU computes the block-diagonal
# mask's masked-out part too, which at 1024 tokens costs ~10% of a 0.5B layer's matmuls, less than padding.
PACKED_ROW_TOKENS = 1024
CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LabelTask:
    """Validation examples as a classification task: every candidate answer's tokens after each prompt."""

    labels: list[str]
    expected: list[str]
    sequences: list[list[int]] = field(default_factory=list)  # prompt + answer, example-major, label-minor
    answer_lengths: list[int] = field(default_factory=list)


@dataclass
class Run:
    """Everything a run needs, built by setup(); the counters are what a checkpoint restores."""

    request: TrainRequest
    output_dir: Path
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_data: list[TokenizedExample]
    valid_data: list[TokenizedExample]
    label_task: Optional[LabelTask]
    steps_per_epoch: int
    total_steps: int
    pad_id: int
    packed: bool = False  # training batches are padding-free (`pack`); else padded (`collate`)
    checkpointing: str = "off"  # gradient checkpointing: "off", "full" or "selective" (checkpointing.py)
    bf16: bool = False  # bf16 autocast (compute); see `precision` for how the frozen base is stored
    precision: str = "fp32"  # "bf16" (bf16 weights + autocast), "bf16-weights" (bf16 weights, fp32 compute) or "fp32"
    truncated: tuple[int, int] = (0, 0)  # (training, validation) examples cut to max_seq_length
    # counters, saved in every checkpoint
    step: int = 0
    epoch_index: int = 0  # the epoch being trained (0-based)
    batches_done: int = 0  # batches of that epoch already trained
    trained_tokens: int = 0
    elapsed_before: float = 0.0  # seconds spent by earlier processes of a resumed run
    train_loss: Optional[float] = None
    valid_loss: Optional[float] = None
    best_valid_loss: Optional[float] = None
    evals_without_improvement: int = 0  # early stopping's patience counter
    early_stopped: bool = False
    last_checkpoint: Optional[str] = None
    last_checkpoint_step: int = -1
    stop_requested: bool = False
    started: float = field(default_factory=time.monotonic)
    previous_handlers: dict[int, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> float:
        return self.epoch_index + self.batches_done / self.steps_per_epoch

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started


def run(request: TrainRequest) -> dict[str, Any]:
    """Trains a LoRA adapter; returns {model_dir, interrupted, early_stopped, steps, total_steps, trained_tokens,
    final_train_loss, final_valid_loss, last_checkpoint, truncated_examples, precision, gradient_checkpointing, packed}."""
    state = setup(request)
    try:
        interrupted = train(state)
        model_dir = None if interrupted else save_final(state)
    finally:
        cleanup(state)
    return {
        "model_dir": model_dir,
        "interrupted": interrupted,
        "early_stopped": state.early_stopped,
        "steps": state.step,
        "total_steps": state.total_steps,
        "trained_tokens": state.trained_tokens,
        "final_train_loss": state.train_loss,
        "final_valid_loss": state.valid_loss,
        "last_checkpoint": state.last_checkpoint,
        "truncated_examples": {"training": state.truncated[0], "validation": state.truncated[1]},
        "precision": state.precision,
        "gradient_checkpointing": state.checkpointing,
        "packed": state.packed,
    }


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, seed, data, base model + LoRA, optimizer and scheduler; restores a checkpoint on resume."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_scheduler

    from ..tokens import auto_tokenizer

    hp = request.hyperparameters
    from .. import allocator
    from ..loading import checkpoint_dtype, set_threads

    # Physical cores this process may use: hyper-threads only contend for the same matmul units.
    set_threads(request.threads)
    allocator.limit_heap_retention()  # glibc: freed activations go back to the OS instead of staying resident in glibc's heap
    if allocator.missing() and not torch.cuda.is_available():
        log(allocator.MISSING, "warning")
    precision = precision_mode(hp.bf16, checkpoint_dtype(request.base_model) == torch.bfloat16)
    if request.method == "qlora" and precision == "bf16-weights":
        precision = "fp32"  # NF4 replaces the base linears: nothing left to store in bf16
    use_bf16 = precision == "bf16"
    output_dir = Path(request.output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    # Data first: a bad file should fail before minutes of model loading.
    progress("setup", 0, 4, "reading data / 读取数据")
    train_examples = load_examples(request.training_file, "training_file")
    valid_examples = load_examples(request.validation_file, "validation_file") if request.validation_file else []

    progress("setup", 1, 4, "loading the base model / 加载基础模型")
    base = request.base_model
    if not Path(base).is_dir():
        raise EngineError("not_found", f"base model directory {base} does not exist / 基础模型目录不存在", "base_model")
    try:
        tokenizer = auto_tokenizer(base)
    except Exception as e:  # transformers raises OSError, ValueError… for broken directories
        raise EngineError("invalid_file", f"{base}: cannot load the tokenizer: {e} / 无法加载分词器", "base_model") from e
    model = load_base(request, precision)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    progress("setup", 2, 4, "tokenizing / 分词")
    train_data, n_truncated = tokenize_examples(tokenizer, train_examples, hp.max_seq_length)
    valid_data, n_valid_truncated = tokenize_examples(tokenizer, valid_examples, hp.max_seq_length)
    if n_truncated or n_valid_truncated:
        log(
            f"{n_truncated} training and {n_valid_truncated} validation examples are longer than max_seq_length="
            f"{hp.max_seq_length} and were truncated / {n_truncated} 条训练样本和 {n_valid_truncated} 条验证样本被截断",
            "warning",
        )
    if not any(e.n_trained for e in train_data):
        raise EngineError(
            "invalid_file", f"{request.training_file}: no assistant tokens to train on / 没有可训练的助手回复", "training_file"
        )
    label_task = build_label_task(tokenizer, valid_examples, request.label_set) if request.label_set and valid_examples else None

    progress("setup", 3, 4, "adding LoRA / 添加 LoRA")
    missing = [m for m in request.lora.modules_to_save or [] if not any(n.endswith(m) for n, _ in model.named_modules())]
    if missing:
        raise EngineError("invalid_request", f"LoRA: modules_to_save {missing} not found in the model / 模型中没有这些模块", "lora.modules_to_save")
    seed_everything(hp.seed)  # LoRA's A matrices are initialised from the global RNG
    target = request.lora.target_modules
    lora = LoraConfig(
        r=request.lora.r,
        lora_alpha=request.lora.alpha,
        lora_dropout=request.lora.dropout,
        target_modules=linear_module_names(model) if target == "all-linear" else list(target),
        modules_to_save=request.lora.modules_to_save,
        # A trained embedding must stay the LM head too when the base ties them (Qwen2.5's small models).
        ensure_weight_tying=bool(request.lora.modules_to_save and model.config.tie_word_embeddings),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:  # PEFT: target modules not found in the base model
        raise EngineError("invalid_request", f"LoRA: {e} / LoRA 配置无效", "lora.target_modules") from e
    # What the optimizer updates stays fp32 (a bf16 AdamW update underflows); tied weights share the Parameter.
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if FAST_LORA_DROPOUT:
        from ..lora_dropout import use_lora_dropout

        use_lora_dropout(model)
    packed = PACKING and packing_supported(model, train_data[0].input_ids)
    checkpointing = checkpointing_mode(request, model, train_data, packed, use_bf16)
    if precision == "bf16-weights":
        compute_in_fp32(model, keep_upcast=checkpointing != "off")
    if checkpointing != "off":
        from .. import checkpointing as ac

        ac.enable(model, checkpointing == "selective", request.lora.r)
    model.train()

    # Weight decay only on matrices: decaying biases and norm gains pulls them to 0 for no benefit.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.learning_rate
    )
    # glibc: the step's activations are all freed by now: hand its free heap pages back, so what one step's
    # small tensors fragmented does not stay resident into the next (0.7-1.1 GB between steps on the 0.5B shape).
    # tcmalloc reuses them for the next step instead: giving them back would only fault them in again.
    if allocator.in_use() == "glibc":
        optimizer.register_step_post_hook(lambda *_: allocator.release_freed_memory())
    steps_per_epoch = math.ceil(len(train_data) / hp.batch_size)
    total_steps = hp.n_epochs * steps_per_epoch
    if request.max_steps is not None:
        total_steps = min(total_steps, request.max_steps)
    scheduler = get_scheduler(
        "constant_with_warmup" if hp.lr_scheduler == "constant" else hp.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )

    state = Run(
        request=request,
        output_dir=output_dir,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        train_data=train_data,
        valid_data=valid_data,
        label_task=label_task,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        pad_id=pad_id,
        packed=packed,
        checkpointing=checkpointing,
        bf16=use_bf16,
        precision=precision,
        truncated=(n_truncated, n_valid_truncated),
    )

    if request.resume:
        restore_checkpoint(state)

    # From here on a signal only sets a flag: the current step finishes, then a checkpoint is saved.
    def on_signal(signum, _frame):
        state.stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        state.previous_handlers[sig] = signal.signal(sig, on_signal)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"{len(train_data)} training / {len(valid_data)} validation examples, {steps_per_epoch} steps per epoch,"
        f" {total_steps} steps; LoRA r={lora.r} on {sorted(lora.target_modules)}: {trainable:,} trainable parameters,"
        f" {torch.get_num_threads()} threads, precision {precision},"
        f" gradient checkpointing {checkpointing},"
        f" {'padding-free (packed)' if packed else 'padded'} batches"
    )
    progress("setup", 4, 4)
    return state


def load_base(request: TrainRequest, precision: str) -> Any:
    """The frozen base model, read tensor by tensor (loading.load_causal_lm: never a dense copy beside it).

    Frozen weights are stored in fp32, or in bf16 when `precision` is not "fp32". QLoRA quantizes every
    linear to NF4 as it is read, and the input embedding (with the LM head tied to it) too, unless
    modules_to_save trains it: a trained module needs its dense weights, so it stays fp32.
    """
    from ..allocator import release_freed_memory
    from ..loading import load_causal_lm, resident_mib

    base, keep = request.base_model, tuple(request.lora.modules_to_save or ())
    nf4 = request.method == "qlora"
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    try:
        model = load_causal_lm(base, dtype, nf4=nf4, nf4_embeddings=nf4, keep_dense=keep)
        if model is None:  # not plain safetensors under the model's own names: the usual loader, then quantize
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            if nf4:
                from ..quantize import quantize_model_nf4

                head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
                emb_name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
                embeddings = not any(n == k or n.endswith("." + k) for n in (head_name, emb_name) for k in keep)
                model = quantize_model_nf4(model, skip=("lm_head", *keep), embeddings=embeddings)
            release_freed_memory()
    except EngineError:
        raise
    except Exception as e:  # transformers/safetensors raise OSError, ValueError… for broken directories
        raise EngineError("invalid_file", f"{base}: cannot load the model: {e} / 无法加载模型", "base_model") from e
    if nf4:
        from ..quantize import NF4Embedding

        if not isinstance(model.get_input_embeddings(), NF4Embedding):
            log(f"QLoRA: the embedding and LM head stay dense (fp32): modules_to_save {list(keep)} trains them, or their width is not a"
                " multiple of 64 / QLoRA：嵌入层与输出层保持全精度（需训练或宽度不是 64 的倍数）")  # fmt: skip
    log(f"base model loaded: {resident_mib():.0f} MiB resident (peak so far {resident_mib(peak=True):.0f} MiB) / 基础模型已加载")
    return model


def load_examples(path: str, param: str) -> list[list[dict[str, Any]]]:
    """The messages of every example in a chat JSONL file; the first bad line is an error naming file:line."""
    from pydantic import ValidationError

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise EngineError("invalid_file", f"{path}: file not found / 文件不存在", param) from e
    except (OSError, UnicodeDecodeError) as e:
        raise EngineError("invalid_file", f"{path}: cannot read as UTF-8 text: {e} / 无法读取", param) from e
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise EngineError("invalid_file", f"{path}:{number}: invalid JSON: {e.msg} / JSON 格式错误", param) from e
        try:
            example = ChatExample.model_validate(record)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise EngineError("invalid_file", f"{path}:{number}: {where}: {err['msg']} / 样本格式错误", param) from e
        if not example.messages:
            raise EngineError("invalid_file", f"{path}:{number}: messages: empty / messages 为空", param)
        examples.append([m.model_dump(exclude_none=True) for m in example.messages])
    if not examples:
        raise EngineError("invalid_file", f"{path}: no examples / 文件中没有样本", param)
    return examples


def linear_module_names(model) -> list[str]:
    """`all-linear`: the names of every nn.Linear but the LM head (which is tied to the embedding)."""
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    return sorted(names)


def build_label_task(tokenizer, examples: list[list[dict[str, Any]]], labels: list[str]) -> LabelTask:
    """For each validation example: the prompt before its last assistant turn, followed by every label."""
    task = LabelTask(labels=list(labels), expected=[])
    prompts = []
    for messages in examples:
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is not None:
            prompts.append(messages[:last])
            task.expected.append(messages[last]["content"])
    for prompt, answers in answers_for_prompts(tokenizer, prompts, labels):
        for answer in answers:
            task.sequences.append(prompt + answer)
            task.answer_lengths.append(len(answer))
    return task


def precision_mode(setting: str, bf16_checkpoint: bool = False) -> str:
    """`bf16` on/off/auto -> "bf16" (bf16 weights, bf16 autocast), "bf16-weights" (bf16 weights, fp32 compute) or "fp32".

    auto: bf16 compute where it is fast (a GPU that supports it, a CPU with AMX). Elsewhere the compute is
    fp32 (torch 2.13's bf16 GEMM on AVX512-BF16 without AMX measured ~0.6x fp32's), and the frozen weights
    stay in the checkpoint's dtype: a bf16 checkpoint (as Qwen/Llama ship) is held in bf16, each matrix
    upcast for its matmul ("bf16-weights": half the base's memory, ~0.7x the speed of an fp32 copy on the
    0.5B shape, BENCHMARKS.md), so memory is what the checkpoint is and not twice that; an fp32 one stays fp32.
    """
    if setting != "auto":
        return "bf16" if setting == "on" else "fp32"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16"
    return "bf16-weights" if bf16_checkpoint else "fp32"


# gradient_checkpointing "auto" turns it on from this many base parameters: on Qwen2.5-0.5B's shape (494M) the
# activations of a batch of 8 take ~4.5 GB against 1 GB of bf16 weights, and checkpointing keeps ~0.1 GB of them
# for ~1.3x the step time; a tiny model's activations are a few MB, not worth the recompute (BENCHMARKS.md).
GRADIENT_CHECKPOINTING_MIN_PARAMETERS = 100_000_000


def use_gradient_checkpointing(setting: Any, model) -> bool:
    """`gradient_checkpointing` true/false as given; "auto": on for a base of GRADIENT_CHECKPOINTING_MIN_PARAMETERS or more."""
    if setting != "auto":
        return bool(setting)
    return base_parameter_count(model) >= GRADIENT_CHECKPOINTING_MIN_PARAMETERS


def checkpointing_mode(request: TrainRequest, model, data: list[TokenizedExample], packed: bool, bf16: bool) -> str:
    """"off", "full" or "selective" (checkpointing.py): selective while the matmul outputs it keeps for the
    largest micro-batch fit in the frozen base's own bytes."""
    from .. import checkpointing as ac

    hp = request.hyperparameters
    if not use_gradient_checkpointing(hp.gradient_checkpointing, model):
        return "off"
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(causal_lm.get_decoder(), "layers", None)
    if not layers:
        return "full"
    micro = math.ceil(math.ceil(hp.batch_size / distributed.world_size()) / hp.gradient_accumulation_steps)
    longest = sorted((len(e.input_ids) for e in data), reverse=True)[:micro]
    tokens = sum(longest) if packed else micro * longest[0]
    base_bytes = sum(t.numel() * t.element_size() for t in [*causal_lm.parameters(), *causal_lm.buffers()] if not t.requires_grad)
    return "selective" if ac.selective_fits(causal_lm.config, layers[0], tokens, 2 if bf16 else 4, base_bytes) else "full"


def base_parameter_count(model) -> int:
    """Parameters of the model, NF4-quantized weights included (two per code byte), tied ones once."""
    dense = sum(p.numel() for p in model.parameters())
    return dense + 2 * sum(b.numel() for name, b in model.named_buffers() if name.endswith("qweight"))


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (torch's capability string says AVX512, not which extensions)."""
    try:
        line = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux: no flags, so fp32
        return set()
    return set(line.split(":", 1)[-1].split())


def compute_in_fp32(model, keep_upcast: bool = False) -> None:
    """bf16-stored frozen weights, fp32 arithmetic: each frozen linear upcasts its weight for the call (one
    matrix at a time, freed at once); the embedding's output is upcast; the LM head, which sees only the
    few labelled positions, multiplies in bf16 rather than upcast its vocabulary-sized matrix.

    keep_upcast (with gradient checkpointing): backward uses the fp32 copy that the layer's recomputation
    made, instead of upcasting again; only the layer being recomputed holds its copies (the first forward's
    are not kept), so that costs one layer's fp32 weights and saves a third of the upcasts."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()

    def upcast_linear(self, x):
        return _FrozenUpcastLinear.apply(x, self.weight, self.bias, keep_upcast)

    def head_in_weight_dtype(self, x):
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    import types

    for module in causal_lm.modules():
        if module is head:
            module.forward = types.MethodType(head_in_weight_dtype, module)
        elif isinstance(module, torch.nn.Linear) and module.weight.dtype != torch.float32 and not module.weight.requires_grad:
            module.forward = types.MethodType(upcast_linear, module)
    causal_lm.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.float())


def autocast(state: "Run"):
    """bf16 autocast when the run uses bf16, else nothing."""
    if not state.bf16:
        return nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


class _FrozenUpcastLinear(torch.autograd.Function):
    """y = x·Wᵀ + b with a frozen bf16 W upcast for the call. Backward needs only W (no weight gradient), so
    the input is not kept, nor the fp32 copy (F.linear would save every layer's) unless keep_upcast."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep_upcast):
        upcast = weight.to(x.dtype)
        ctx.save_for_backward(upcast if keep_upcast else weight)
        return F.linear(x, upcast, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None, None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------- train


def train(state: Run) -> bool:
    """The training loop; returns True when a signal stopped it (after saving a checkpoint)."""
    request, hp = state.request, state.request.hyperparameters
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    steps_seconds = 0.0  # time in optimizer steps only, for tokens/s and the ETA
    tokens_this_process = examples_this_process = steps_this_process = 0
    call = distributed.data_parallel(model)  # call(token_loss, …); under torchrun DDP sums the ranks' gradients

    lengths = [len(e.input_ids) for e in state.train_data]
    while state.step < state.total_steps:
        batches = epoch_batches(hp.seed, state.epoch_index, lengths, hp.batch_size, hp.group_by_length)
        # On resume, skip the batches of this epoch that the checkpoint already trained.
        for batch_indices in batches[state.batches_done :]:
            if distributed.any_rank(state.stop_requested):  # every rank stops after the same step
                return interrupt(state)
            t0 = time.monotonic()
            examples = [state.train_data[i] for i in batch_indices]
            # The loss is the mean over the whole batch's assistant tokens, so each micro-batch's sum is divided
            # by the batch's count: accumulated gradients equal those of the batch in one pass. Under torchrun
            # each rank trains its share of the batch, and the count stays the whole batch's.
            n_batch_tokens = max(sum(e.n_trained for e in examples), 1)
            batch_tokens = sum(len(e.input_ids) for e in examples)
            examples = distributed.shard(examples, blank=unlabelled(examples[0]))
            micro = math.ceil(len(examples) / hp.gradient_accumulation_steps)
            optimizer.zero_grad(set_to_none=True)
            loss_total, n_tokens, n_correct = 0.0, 0, 0
            for start in range(0, len(examples), micro):
                part = examples[start : start + micro]
                with autocast(state):
                    loss_sum, n, c = call(token_loss, *(pack(part, state.pad_id) if state.packed else collate(part, state.pad_id)))
                (loss_sum * distributed.loss_scale() / n_batch_tokens).backward()
                loss_total, n_tokens, n_correct = loss_total + loss_sum.item(), n_tokens + n, n_correct + c
            loss_total, n_tokens, n_correct = distributed.all_sum(loss_total, n_tokens, n_correct)
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], hp.max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()

            state.step += 1
            state.batches_done += 1
            state.train_loss = loss_total / max(n_tokens, 1)
            state.trained_tokens += batch_tokens
            steps_seconds += time.monotonic() - t0
            tokens_this_process += batch_tokens
            examples_this_process += len(batch_indices)
            steps_this_process += 1
            emit(
                "metrics",
                step=state.step,
                total_steps=state.total_steps,
                epoch=state.epoch,
                train_loss=state.train_loss,
                train_mean_token_accuracy=n_correct / max(n_tokens, 1),
                learning_rate=learning_rate,
                grad_norm=float(grad_norm),
                tokens_per_second=tokens_this_process / steps_seconds,
                examples_per_second=examples_this_process / steps_seconds,
                trained_tokens=state.trained_tokens,
                elapsed_seconds=state.elapsed,
                eta_seconds=(state.total_steps - state.step) * steps_seconds / steps_this_process,
            )

            epoch_end = state.batches_done == len(batches)
            last = state.step == state.total_steps
            if state.valid_data and (epoch_end or last or due(state.step, request.eval_every_steps)):
                validate(state, with_labels=epoch_end or last)
            patience = hp.early_stopping_patience
            stopping = patience is not None and state.evals_without_improvement >= patience and not last
            if epoch_end or last or stopping or due(state.step, request.save_every_steps):
                save_checkpoint(state)
            if stopping:
                stop_early(state)
                return False
            if last:
                break
        if state.batches_done == len(batches):
            state.epoch_index += 1
            state.batches_done = 0
    return False


def stop_early(state) -> None:
    """Marks the run early-stopped and says why (every recipe with validation: LoRA, full)."""
    state.early_stopped = True
    patience = state.request.hyperparameters.early_stopping_patience
    log(
        f"early stopping at step {state.step}: validation loss has not improved for {patience} evaluations"
        f" (best {state.best_valid_loss:.4f}) / 验证损失连续 {patience} 次未改善，提前停止"
    )


def epoch_batches(seed: int, epoch: int, lengths: list[int], batch_size: int, group_by_length: bool) -> list[list[int]]:
    """The batches of one epoch, a function of (seed, epoch) only.

    With length grouping, each window of LENGTH_GROUP_BATCHES batches of the shuffled order is sorted by
    length before it is cut, and the batches are then shuffled again: each batch pads to a similar length,
    yet which examples meet in a batch and the batch order stay random.
    """
    order = epoch_order(seed, epoch, len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009))
    return [batches[i] for i in shuffle.tolist()]


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def unlabelled(example: TokenizedExample) -> TokenizedExample:
    """The example with no label: it runs through the model but adds nothing to a loss (distributed.shard's padding)."""
    return TokenizedExample(example.input_ids, [IGNORE_INDEX] * len(example.input_ids))


def collate(examples: list[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pads a batch to its longest example (right, so positions of real tokens do not move)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return input_ids, attention_mask, labels


def pack(examples: list[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
    """A padding-free batch: (input_ids, None, labels, position_ids), the examples laid end to end.

    Each example's position ids restart at 0; given position ids and no attention mask, transformers
    (masking_utils) reads the restarts as sequence boundaries and attends only within each example, so
    the result equals the padded batch's (checked by `packing_supported` for the model at hand). Rows hold
    up to PACKED_ROW_TOKENS tokens, longest example first into the shortest row, so rows come out nearly
    equal and only the few tokens that even them up are padding (a block of its own, unlabelled).
    """
    lengths = [len(e.input_ids) for e in examples]
    n_rows = math.ceil(sum(lengths) / max(PACKED_ROW_TOKENS, max(lengths)))
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    fill = [0] * n_rows
    for i in sorted(range(len(examples)), key=lambda i: -lengths[i]):
        r = fill.index(min(fill))
        rows[r].append(i)
        fill[r] += lengths[i]
    width = max(fill)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            e, n = examples[i], lengths[i]
            input_ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(e.labels[1:])  # an example's first token is never predicted
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
        position_ids[r, at:] = torch.arange(width - at)  # the padding: a block of its own
    return input_ids, None, labels, position_ids


@torch.no_grad()
def packing_supported(model, sample: list[int]) -> bool:
    """Whether this model honours packed position ids. A sequence packed after another must not see it (its
    hidden states stay the same when the first one's tokens change) and must match itself run alone.
    Architectures that build their own mask (or remote code) would let it attend across; they train on
    padded batches instead, and a log says so."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    first, second = list(sample[:6]), list(sample[:5])
    if len(second) < 5:
        return False
    other = list(reversed(first))  # same length, other tokens

    def states(*sequences: list[int]) -> torch.Tensor:
        ids, _, _, positions = pack([TokenizedExample(s, s) for s in sequences], 0)
        return causal_lm.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0].float()

    was_training = model.training
    model.eval()
    try:
        alone, after_first, after_other = states(second), states(second, first), states(second, other)
    except Exception as e:  # noqa: BLE001 (any failure means: do not pack)
        log(f"padding-free batches unavailable ({type(e).__name__}: {e}); training on padded batches", "warning")
        return False
    finally:
        model.train(was_training)
    # pack() puts the longest first: the 5-token sequence is the last 5 rows. Same shapes, so without leaks the
    # two packed runs agree to rounding; alone it may differ by the precision's rounding of other shapes.
    tail_first, tail_other = after_first[-len(second) :], after_other[-len(second) :]
    scale = alone.abs().max().item() + 1e-6
    ok = (tail_first - tail_other).abs().max().item() <= 1e-4 * scale and (tail_first - alone).abs().max().item() <= 5e-2 * scale
    if not ok:
        log("this model does not keep packed sequences apart; training on padded batches / 该模型不支持序列打包，使用填充批次", "warning")
    return ok


def token_logprobs(model, input_ids, attention_mask, labels, position_ids=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the labelled tokens, flattened: (logp [N], row of each [N], argmax right [N]).

    Takes a padded batch (`collate`: attention_mask) or a packed one (`pack`: position_ids, no mask).
    Only the N positions that predict a labelled token go through the LM head: with short answers
    after long prompts that skips most of the head's matmul and softmax over the vocabulary.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX  # hidden state j predicts token j + 1
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT's LoRA layers live inside it
    hidden = causal_lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    if LM_HEAD_AT_LABELS_ONLY:
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
    else:  # the standard way, kept for the benchmark's ablation: every position through the head
        logits = causal_lm.get_output_embeddings()(hidden[:, :-1]).float()[mask]
    targets = targets[mask]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return logp, rows, logits.argmax(dim=-1) == targets


def token_loss(model, input_ids, attention_mask, labels, position_ids=None) -> tuple[torch.Tensor, int, int]:
    """(sum of cross-entropy over labelled tokens, their number, how many the model's argmax got right)."""
    logp, _, correct = token_logprobs(model, input_ids, attention_mask, labels, position_ids)
    return -logp.sum(), logp.numel(), int(correct.sum())


# ---------------------------------------------------------------------------------------------- validate


@torch.no_grad()
def validate(state: Run, with_labels: bool) -> None:
    """Validation loss (mean over assistant tokens) and, at epoch ends, label metrics; emits the events."""
    model = state.model
    model.eval()  # no dropout: validation neither varies nor consumes the RNG that training uses
    try:
        with autocast(state):
            loss_sum, n_tokens, n_correct = 0.0, 0, 0
            data = distributed.shard(state.valid_data, blank=unlabelled(state.valid_data[0]))  # each rank a share
            for batch in length_sorted_batches([len(e.input_ids) for e in data], EVAL_BATCH_SIZE):
                s, n, c = token_loss(model, *collate([data[i] for i in batch], state.pad_id))
                loss_sum, n_tokens, n_correct = loss_sum + s.item(), n_tokens + n, n_correct + c
            loss_sum, n_tokens, n_correct = distributed.all_sum(loss_sum, n_tokens, n_correct)
            state.valid_loss = loss_sum / max(n_tokens, 1)
            best = state.best_valid_loss
            improved = best is None or state.valid_loss < best - state.request.hyperparameters.early_stopping_min_delta
            state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
            state.best_valid_loss = min(state.valid_loss, best if best is not None else math.inf)
            emit(
                "metrics",
                step=state.step,
                total_steps=state.total_steps,
                epoch=state.epoch,
                valid_loss=state.valid_loss,
                valid_mean_token_accuracy=n_correct / max(n_tokens, 1),
                elapsed_seconds=state.elapsed,
            )
            if with_labels:
                fields: dict[str, Any] = {"valid_loss": state.valid_loss}
                if state.label_task is not None:
                    predicted = classify(model, state.label_task, state.pad_id)
                    fields["label_metrics"] = label_metrics(state.label_task.expected, predicted, state.label_task.labels)
                    log(f"step {state.step}: validation accuracy {fields['label_metrics']['accuracy']:.4f}")
                emit("eval", step=state.step, epoch=state.epoch, **fields)
    finally:
        model.train()


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding costs little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_sequences(model, sequences: list[list[int]], answer_lengths: list[int], pad_id: int, batch_size: int = EVAL_BATCH_SIZE) -> list[float]:
    """Teacher-forced log-probability of the last `answer_lengths[i]` tokens of each sequence."""
    scores = [0.0] * len(sequences)
    for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
        examples = []
        for i in batch:
            seq, k = sequences[i], answer_lengths[i]
            examples.append(TokenizedExample(seq, [IGNORE_INDEX] * (len(seq) - k) + seq[-k:]))
        logp, rows, _ = token_logprobs(model, *collate(examples, pad_id))
        sums = torch.zeros(len(batch)).index_add_(0, rows, logp)
        for row, i in enumerate(batch):
            scores[i] = sums[row].item()
    return scores


def classify(model, task: LabelTask, pad_id: int) -> list[str]:
    """Each example's prediction: the label whose answer tokens (and end-of-turn token) are most likely."""
    scores = score_sequences(model, task.sequences, task.answer_lengths, pad_id)
    k = len(task.labels)
    return [task.labels[int(np.argmax(scores[i * k : (i + 1) * k]))] for i in range(len(task.expected))]


# ----------------------------------------------------------------------------------------- checkpointing


def save_checkpoint(state: Run) -> str:
    """Writes `checkpoints/step-NNNNNN/` (adapter, training_state.pt, state.json) atomically; emits `checkpoint`.
    Under torchrun every rank calls it (their RNG states are gathered) and rank 0 writes."""
    final = state.output_dir / "checkpoints" / f"step-{state.step:06d}"
    rngs = distributed.gather_objects(rng_state())  # dropout draws differ between ranks: keep each rank's
    if not distributed.is_main():
        state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
        return str(final)
    with atomic_dir(final) as tmp:
        state.model.save_pretrained(tmp)
        (tmp / "README.md").unlink(missing_ok=True)  # PEFT's empty model card: noise in every checkpoint
        torch.save(
            {
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "rng": rngs[0],
                "rng_per_rank": rngs,
                "step": state.step,
                "epoch_index": state.epoch_index,
                "batches_done": state.batches_done,
                "trained_tokens": state.trained_tokens,
                "elapsed_seconds": state.elapsed,
                "train_loss": state.train_loss,
                "valid_loss": state.valid_loss,
                "best_valid_loss": state.best_valid_loss,
                "evals_without_improvement": state.evals_without_improvement,
            },
            tmp / "training_state.pt",
        )
        summary = {
            "step": state.step,
            "total_steps": state.total_steps,
            "epoch": state.epoch,
            "train_loss": state.train_loss,
            "valid_loss": state.valid_loss,
            "best_valid_loss": state.best_valid_loss,
            "trained_tokens": state.trained_tokens,
            "config": state.request.model_dump(),
        }
        (tmp / "state.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
    fields = {k: v for k, v in (("train_loss", state.train_loss), ("valid_loss", state.valid_loss)) if v is not None}
    emit("checkpoint", step=state.step, epoch=state.epoch, path=str(final), **fields)
    return str(final)


def newest_checkpoint(output_dir: Path) -> Optional[Path]:
    """The complete checkpoint with the highest step (temp directories of an interrupted save are ignored)."""
    found = []
    for d in (output_dir / "checkpoints").glob("step-*"):
        m = CHECKPOINT_DIR.match(d.name)
        if m and (d / "training_state.pt").is_file():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


def restore_checkpoint(state: Run) -> None:
    """Loads the newest checkpoint's adapter, optimizer, scheduler, RNG states and counters into `state`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = newest_checkpoint(state.output_dir)
    if path is None:
        log("resume: no checkpoint yet, starting from the beginning / 没有检查点，从头开始")
        return
    try:
        weights = load_file(path / "adapter_model.safetensors")
        saved = torch.load(path / "training_state.pt", weights_only=True)
    except Exception as e:  # a damaged checkpoint must be reported, not silently restarted
        raise EngineError("invalid_file", f"{path}: cannot load checkpoint: {e} / 无法加载检查点", "resume") from e
    result = set_peft_model_state_dict(state.model, weights)
    if getattr(result, "unexpected_keys", None):
        raise EngineError("invalid_file", f"{path}: adapter does not match this LoRA config / 适配器与 LoRA 配置不符", "resume")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(rank_rng_state(saved))
    state.step = saved["step"]
    state.epoch_index = saved["epoch_index"]
    state.batches_done = saved["batches_done"]
    state.trained_tokens = saved["trained_tokens"]
    state.elapsed_before = saved["elapsed_seconds"]
    state.train_loss, state.valid_loss, state.best_valid_loss = saved["train_loss"], saved["valid_loss"], saved["best_valid_loss"]
    state.evals_without_improvement = saved.get("evals_without_improvement", 0)  # absent before early stopping existed
    state.last_checkpoint, state.last_checkpoint_step = str(path), state.step
    if state.batches_done >= state.steps_per_epoch:  # saved at an epoch end
        state.epoch_index, state.batches_done = state.epoch_index + 1, 0
    log(f"resumed from {path} at step {state.step} / 从检查点恢复")


def rng_state() -> dict[str, Any]:
    """Every RNG training draws from, as plain lists and tensors (so torch.load(weights_only=True) reads it)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"],
                  "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rank_rng_state(saved: dict[str, Any]) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint; rank 0's when the run that wrote it had fewer processes."""
    per_rank = saved.get("rng_per_rank") or [saved["rng"]]  # absent before scale-out
    return per_rank[distributed.rank()] if distributed.rank() < len(per_rank) else per_rank[0]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
         "has_gauss": n["has_gauss"], "gauss": n["gauss"]}
    )  # fmt: skip
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def interrupt(state: Run) -> bool:
    """A signal arrived: keep what has been trained (unless a checkpoint holds it already) and stop."""
    if state.step > 0 and state.last_checkpoint_step != state.step:
        save_checkpoint(state)
    log(f"stopped at step {state.step}; resume continues from {state.last_checkpoint} / 已停止，可恢复训练", "warning")
    return True


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The adapter, tokenizer and weitiao.json (lineage) in `<output_dir>/model/`, written atomically (by rank 0)."""
    final = state.output_dir / "model"
    if not distributed.is_main():
        return str(final)
    with atomic_dir(final) as tmp:
        state.model.save_pretrained(tmp)
        state.tokenizer.save_pretrained(tmp, save_jinja_files=False)
        lineage = {
            "base_model": str(Path(state.request.base_model).resolve()),
            "method": state.request.method,
            "steps": state.step,
            "total_steps": state.total_steps,
            "trained_tokens": state.trained_tokens,
            "final_train_loss": state.train_loss,
            "final_valid_loss": state.valid_loss,
            "engine_version": __version__,
            "request": state.request.model_dump(),
        }
        (tmp / "weitiao.json").write_text(json.dumps(lineage, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"model saved to {final} / 模型已保存")
    return str(final)


def cleanup(state: Run) -> None:
    """Gives the signal handlers back (matters when the recipe runs inside another process, e.g. tests)."""
    for sig, handler in state.previous_handlers.items():
        signal.signal(sig, handler)
