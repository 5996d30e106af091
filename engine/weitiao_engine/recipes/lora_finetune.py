"""LoRA fine-tuning on CPU or one GPU: `train` with method `lora`.

    echo '{"base_model": "...", "output_dir": "...", "training_file": "train.jsonl", "hyperparameters":
          {"n_epochs": 2, "batch_size": 16, "learning_rate": 2e-3}}' | python -m weitiao_engine train

The shared pieces are plain functions in training/ (batching, loss, precision, LoRA setup, checkpoints…).
Reads top to bottom: setup (threads, seed, base model + LoRA, data, optimizer, scheduler, resume) ->
train (one optimizer step per batch; validation, label metrics and checkpoints on schedule) ->
save_final, with SIGTERM/SIGINT turned into "stop after this step" around train. Events (metrics, eval, checkpoint) go to stdout as JSON lines.

Speed (bench/ measures each against TRL's SFTTrainer): the LM head and cross-entropy run only where
labels exist; batches are padding-free (`pack`: examples end to end, position ids restarting, attention kept
within each example, and on a CPU attention runs per sequence without a mask, short ones as two batched matmuls:
training/packed_attention.py), a row's width rounded to a multiple of 8 (CPU GEMMs slow down at some other row
counts); LoRA's dropout (0 by default) draws only the dropped positions and folds its scale into A
(training/lora_dropout.py); plain LoRA is one addmm on the base layer's output (training/lora_forward.py), and
q/k/v and gate/up with their LoRA are one matmul each (training/fused_projections.py); the SwiGLU MLP keeps gate
and up for backward, not silu(gate) too (training/fused_ops.py); the frozen base is
held in the checkpoint's dtype (bf16 for real checkpoints: half an fp32 copy), and the matmuls run under
bf16 autocast where the GPU supports it or, on a CPU, where a probe of the model's own linear shapes found bf16
faster (training/precision_probe.py: torch's bf16 GEMM on AVX512-BF16 without AMX measured 0.6x fp32 on one
machine, 4x on another), else in fp32 from upcast weights; the LoRA weights and optimizer stay
fp32; one torch thread per physical core. Memory: the base is read tensor by tensor (loading.load_causal_lm,
never a dense copy beside it; QLoRA quantizes each matrix as it arrives), freed activations are reused by
tcmalloc or handed back to the OS by glibc (allocator.py). Gradient checkpointing ("auto") is for bases of 100M+
parameters whose batches' activations outweigh the weights: none while every activation fits in the base's own
size (short examples), else selective (the matmul outputs kept, only the cheap ops recomputed) while what it keeps
fits there, else full (training/activation_checkpointing.py).

Determinism: the data order of epoch e comes from its own generator seeded with (seed, e), and each
checkpoint holds the optimizer, scheduler and every RNG state (dropout included) plus the position in
the epoch, so a run stopped by SIGTERM and resumed ends exactly where an uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import allocator, distributed
from ..chat_format import TokenizedExample
from ..loading import set_threads
from ..protocol import TrainRequest, log, progress
from ..training import activation_checkpointing, batching, checkpoints, lora as lora_setup
from ..training.data import load_tokenizer, read_files, tokenize_sft
from ..training.evaluation import after_step, next_epoch_if_done, validate
from ..training.labels import LabelTask, build_label_task
from ..training.sft import sft_step
from ..training.optimization import adamw, schedule
from ..training.precision import choose_for_run, compute_in_fp32
from ..training.state import TrainingState, interrupt, result, stopping_on_signals
from ..training.step_metrics import Throughput
from ..training.final_model import save_final_model
from ..training.fused_ops import use_fused_ops


@dataclass(kw_only=True)
class Run(TrainingState):
    """Everything a run needs, built by setup(); the counters (TrainingState) are what a checkpoint restores."""

    train_data: list[TokenizedExample]
    valid_data: list[TokenizedExample]
    label_task: Optional[LabelTask]
    packed: bool = False  # training batches are padding-free (batching.pack); else padded (batching.collate)
    checkpointing: str = "off"  # gradient checkpointing: "off", "full" or "selective" (activation_checkpointing.py)
    truncated: tuple[int, int] = (0, 0)  # (training, validation) examples cut to max_seq_length


def run(request: TrainRequest) -> dict[str, Any]:
    """Trains a LoRA adapter; returns {model_dir, interrupted, early_stopped, steps, total_steps, trained_tokens,
    final_train_loss, final_valid_loss, last_checkpoint, truncated_examples, precision, precision_choice, gradient_checkpointing, packed}."""
    state = setup(request)
    with stopping_on_signals(state):
        interrupted = train(state)
        model_dir = None if interrupted else save_final(state)
    truncated = {"training": state.truncated[0], "validation": state.truncated[1]}
    return result(
        state, model_dir, interrupted, truncated_examples=truncated, gradient_checkpointing=state.checkpointing, packed=state.packed,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, seed, data, base model + LoRA, optimizer and scheduler; restores a checkpoint on resume."""
    hp = request.hyperparameters
    # Physical cores this process may use: hyper-threads only contend for the same matmul units.
    set_threads(request.threads)
    allocator.limit_heap_retention()  # glibc: freed activations go back to the OS instead of staying resident in glibc's heap
    if allocator.missing() and not torch.cuda.is_available():
        log(allocator.MISSING, "warning")
    # bf16 on/off, or auto: on a CPU measured on this model's shapes (cached per machine, training/precision_probe.py).
    choice = choose_for_run(request)
    precision = choice["precision"]
    use_bf16 = precision == "bf16"

    progress("setup", 0, 4, "reading data / 读取数据")
    output_dir, train_examples, valid_examples = read_files(request)  # a bad file fails before minutes of model loading

    progress("setup", 1, 4, "loading the base model / 加载基础模型")
    tokenizer, pad_id = load_tokenizer(request.base_model)
    model = lora_setup.load_base(request, precision)

    progress("setup", 2, 4, "tokenizing / 分词")
    train_data, valid_data, truncated = tokenize_sft(tokenizer, request, train_examples, valid_examples)
    label_task = build_label_task(tokenizer, valid_examples, request.label_set) if request.label_set and valid_examples else None

    progress("setup", 3, 4, "adding LoRA / 添加 LoRA")
    model, lora = lora_setup.add_lora(model, request)
    lora_setup.use_fast_lora_dropout(model)
    if use_bf16:
        lora_setup.lora_input_in_compute_dtype(model)  # no fp32 round trip of every LoRA input under autocast
    packed = batching.use_packing(model, train_data[0].input_ids)
    checkpointing = activation_checkpointing.checkpointing_mode(hp, model, [len(e.input_ids) for e in train_data], packed, use_bf16)
    if precision == "bf16-weights":
        compute_in_fp32(model, keep_upcast=checkpointing != "off")
    if checkpointing != "off":
        activation_checkpointing.enable(model, checkpointing == "selective", request.lora.r)
    use_fused_ops(model)  # fp32 RMSNorm as one kernel, SwiGLU keeping less (training/fused_ops.py)
    model.train()

    optimizer = adamw(model, hp)
    # glibc: the step's activations are all freed by now: hand its free heap pages back, so what one step's
    # small tensors fragmented does not stay resident into the next (0.7-1.1 GB between steps on the 0.5B shape).
    # tcmalloc reuses them for the next step instead: giving them back would only fault them in again.
    if allocator.in_use() == "glibc":
        optimizer.register_step_post_hook(lambda *_: allocator.release_freed_memory())
    steps_per_epoch, total_steps, scheduler = schedule(optimizer, hp, len(train_data), request.max_steps)

    state = Run(
        request=request, output_dir=output_dir, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        train_data=train_data, valid_data=valid_data, label_task=label_task, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, pad_id=pad_id, packed=packed, checkpointing=checkpointing, bf16=use_bf16,
        precision=precision, truncated=truncated, precision_choice=choice,
    )  # fmt: skip
    if request.resume:
        checkpoints.restore_adapter(state)
    log(
        f"{len(train_data)} training / {len(valid_data)} validation examples, {steps_per_epoch} steps per epoch,"
        f" {total_steps} steps; {lora_setup.describe(lora, model)}, {torch.get_num_threads()} threads, precision {precision},"
        f" gradient checkpointing {checkpointing},"
        f" {'padding-free (packed)' if packed else 'padded'} batches"
    )
    progress("setup", 4, 4)
    return state


# ------------------------------------------------------------------------------------------------- train


def train(state: Run) -> bool:
    """The training loop; returns True when a signal stopped it (after saving a checkpoint)."""
    hp = state.request.hyperparameters
    params = [p for p in state.model.parameters() if p.requires_grad]
    meter = Throughput()
    call = distributed.data_parallel(state.model)  # call(token_loss, …); under torchrun DDP sums the ranks' gradients
    lengths = [len(e.input_ids) for e in state.train_data]
    while state.step < state.total_steps:
        batches = batching.epoch_batches(hp.seed, state.epoch_index, lengths, hp.batch_size, hp.group_by_length)
        # On resume, skip the batches of this epoch that the checkpoint already trained.
        for batch_indices in batches[state.batches_done :]:
            if distributed.any_rank(state.stop_requested):  # every rank stops after the same step
                return interrupt(state, save_checkpoint)
            sft_step(state, call, [state.train_data[i] for i in batch_indices], params, meter)
            validate_now = lambda with_labels: validate(state, state.valid_data, state.label_task, with_labels)  # noqa: E731
            if after_step(state, len(batches), bool(state.valid_data), validate_now, save_checkpoint):
                return False
        next_epoch_if_done(state, len(batches))
    return False


# ----------------------------------------------------------------------------------------- checkpointing


def save_checkpoint(state: Run) -> str:
    """`checkpoints/step-NNNNNN/`: the adapter, training_state.pt, state.json, manifest.json (training/checkpoints.py)."""
    return checkpoints.write_checkpoint(state, lambda d: checkpoints.save_adapter(state.model, d), state.optimizer.state_dict())


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The adapter, tokenizer and weitiao.json (lineage) in `<output_dir>/model/`, written atomically (by rank 0)."""
    return save_final_model(state, state.model.save_pretrained)
