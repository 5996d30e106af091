"""Full fine-tuning on CPU or one GPU: `train` with method `full`.

    echo '{"base_model": "...", "output_dir": "...", "training_file": "train.jsonl", "method": "full",
          "full": {"freeze_embeddings": true, "freeze_layers": 1},
          "hyperparameters": {"n_epochs": 2, "batch_size": 16, "learning_rate": 2e-5}}' | python -m weitiao_engine train

Copied from lora_finetune.py and edited (torchtune style: recipes are copied, not inherited). The
differences: every weight trains except the frozen embedding / first N decoder layers; checkpoints and
the result are complete Hugging Face models (config, safetensors, tokenizer), so any of them loads and
chats as a base model; a checkpoint adds the optimizer state (AdamW's two moments: 2× the trained weights).

Reads top to bottom: setup -> train -> save_final -> cleanup. Determinism as in lora_finetune: per-epoch
data order from (seed, epoch), every RNG state in the checkpoint, so stop + resume equals one run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .. import __version__, distributed
from ..chat_format import TokenizedExample, tokenize_examples
from ..metrics import label_metrics
from ..atomic import atomic_dir
from ..protocol import EngineError, TrainRequest, emit, log, progress
from . import lora_finetune
from .lora_finetune import (
    EVAL_BATCH_SIZE,
    LabelTask,
    autocast,
    build_label_task,
    classify,
    collate,
    due,
    epoch_order,
    length_sorted_batches,
    load_examples,
    newest_checkpoint,
    pack,
    packing_supported,
    precision_mode,
    rng_state,
    seed_everything,
    stop_early,
    rank_rng_state,
    set_rng_state,
    use_gradient_checkpointing,
    token_loss,
    unlabelled,
)


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
    frozen: list[str]  # names of the parameters that do not train
    call: Any = None  # call(fn, *args) = fn(model, *args) inside FSDP's forward under torchrun (distributed.ModelCall)
    bf16: bool = False  # bf16 autocast (compute); the weights and AdamW stay fp32
    precision: str = "fp32"  # "bf16" (autocast; the final model is saved in bf16) or "fp32"
    packed: bool = False  # training batches are padding-free (lora_finetune.pack); else padded (collate)
    # counters, saved in every checkpoint
    step: int = 0
    epoch_index: int = 0
    batches_done: int = 0
    trained_tokens: int = 0
    elapsed_before: float = 0.0
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
    """Fine-tunes every (unfrozen) weight; returns the same fields as lora_finetune.run."""
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
        "precision": state.precision,
        "packed": state.packed,
    }


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, seed, data, the base model with its frozen parts, optimizer and scheduler; restores on resume."""
    import psutil
    from transformers import AutoModelForCausalLM, get_scheduler

    from ..tokens import auto_tokenizer

    hp = request.hyperparameters
    torch.set_num_threads(request.threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    output_dir = Path(request.output_dir)
    (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    progress("setup", 0, 4, "reading data / 读取数据")
    train_examples = load_examples(request.training_file, "training_file")
    valid_examples = load_examples(request.validation_file, "validation_file") if request.validation_file else []

    progress("setup", 1, 4, "loading the base model / 加载基础模型")
    base = request.base_model
    if not Path(base).is_dir():
        raise EngineError("not_found", f"base model directory {base} does not exist / 基础模型目录不存在", "base_model")
    try:
        tokenizer = auto_tokenizer(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    except Exception as e:
        raise EngineError("invalid_file", f"{base}: cannot load the model: {e} / 无法加载模型", "base_model") from e
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

    progress("setup", 3, 4, "freezing / 冻结参数")
    frozen = freeze(model, request.full.freeze_embeddings, request.full.freeze_layers)
    seed_everything(hp.seed)
    # Padding-free batches as in the LoRA recipe (lora_finetune.pack), where the model keeps packed sequences apart.
    packed = lora_finetune.PACKING and packing_supported(model, train_data[0].input_ids)
    if use_gradient_checkpointing(hp.gradient_checkpointing, model):  # "auto": by the base's size
        # Non-reentrant: works although the (frozen) embedding output needs no gradient.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Every weight trains, so they and AdamW stay fp32 (a bf16 update underflows); bf16 is autocast compute only.
    precision = "bf16" if precision_mode(hp.bf16) == "bf16" else "fp32"
    model.train()
    # Under torchrun: FSDP2 shards every weight, its gradient and AdamW's moments over the processes (one unit
    # per decoder layer); before the optimizer, which must see the shards.
    call = distributed.fully_sharded(model, getattr(model.get_decoder(), "layers", None))

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=hp.learning_rate
    )
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
        frozen=frozen,
        call=call,
        bf16=precision == "bf16",
        precision=precision,
        packed=packed,
    )
    if request.resume:
        restore_checkpoint(state)

    def on_signal(signum, _frame):
        state.stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        state.previous_handlers[sig] = signal.signal(sig, on_signal)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(
        f"{len(train_data)} training / {len(valid_data)} validation examples, {steps_per_epoch} steps per epoch,"
        f" {total_steps} steps; full fine-tuning: {trainable:,} of {total:,} parameters train"
        f" ({len(frozen)} tensors frozen), {torch.get_num_threads()} threads, precision {precision} / 全参数微调"
    )
    progress("setup", 4, 4)
    return state


def freeze(model, embeddings: bool, n_layers: int) -> list[str]:
    """Turns off gradients for the input embedding (and so a tied LM head) and the first `n_layers` decoder
    layers; returns the names of the frozen parameters."""
    layers = getattr(model.get_decoder(), "layers", None)
    if n_layers and layers is None:
        raise EngineError("invalid_request", "this model's decoder layers cannot be found to freeze / 找不到解码层", "full.freeze_layers")
    if layers is not None and n_layers >= len(layers):
        raise EngineError(
            "invalid_request",
            f"freeze_layers={n_layers} leaves nothing to train: the model has {len(layers)} layers / 冻结层数不能达到模型层数 {len(layers)}",
            "full.freeze_layers",
        )
    modules = ([model.get_input_embeddings()] if embeddings else []) + (list(layers[:n_layers]) if n_layers else [])
    ids = {id(p) for m in modules for p in m.parameters()}
    frozen = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in ids:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


# ------------------------------------------------------------------------------------------------- train


def train(state: Run) -> bool:
    """The training loop; returns True when a signal stopped it (after saving a checkpoint)."""
    request, hp = state.request, state.request.hyperparameters
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    params = [p for p in model.parameters() if p.requires_grad]
    steps_seconds = 0.0
    tokens_this_process = examples_this_process = steps_this_process = 0

    while state.step < state.total_steps:
        order = epoch_order(hp.seed, state.epoch_index, len(state.train_data))
        batches = [order[i : i + hp.batch_size] for i in range(0, len(order), hp.batch_size)]
        for batch_indices in batches[state.batches_done :]:
            if distributed.any_rank(state.stop_requested):  # every rank stops after the same step
                return interrupt(state)
            t0 = time.monotonic()
            examples = [state.train_data[i] for i in batch_indices]
            # Micro-batches divide their token-loss sums by the whole batch's count: the accumulated gradient
            # is the batch's mean-loss gradient, as in one pass. Under torchrun each rank trains its share.
            n_batch_tokens = max(sum(e.n_trained for e in examples), 1)
            batch_tokens = sum(len(e.input_ids) for e in examples)
            examples = distributed.shard(examples, blank=unlabelled(examples[0]))
            micro = math.ceil(len(examples) / hp.gradient_accumulation_steps)
            optimizer.zero_grad(set_to_none=True)
            loss_total, n_tokens, n_correct = 0.0, 0, 0
            for start in range(0, len(examples), micro):
                part = examples[start : start + micro]
                with autocast(state):
                    loss_sum, n, c = state.call(token_loss, *(pack(part, state.pad_id) if state.packed else collate(part, state.pad_id)))
                (loss_sum * distributed.loss_scale() / n_batch_tokens).backward()
                loss_total, n_tokens, n_correct = loss_total + loss_sum.item(), n_tokens + n, n_correct + c
            loss_total, n_tokens, n_correct = distributed.all_sum(loss_total, n_tokens, n_correct)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
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
                grad_norm=distributed.grad_norm_value(grad_norm),
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


@torch.no_grad()
def validate(state: Run, with_labels: bool) -> None:
    """Validation loss (mean over assistant tokens) and, at epoch ends, label metrics; emits the events."""
    model = state.model
    model.eval()
    try:
        loss_sum, n_tokens, n_correct = 0.0, 0, 0
        data = distributed.shard(state.valid_data, blank=unlabelled(state.valid_data[0]))  # each rank a share
        for batch in length_sorted_batches([len(e.input_ids) for e in data], EVAL_BATCH_SIZE):
            with autocast(state):
                s, n, c = state.call(token_loss, *collate([data[i] for i in batch], state.pad_id))
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
                predicted = state.call(classify, state.label_task, state.pad_id)  # under FSDP: on every rank
                fields["label_metrics"] = label_metrics(state.label_task.expected, predicted, state.label_task.labels)
                log(f"step {state.step}: validation accuracy {fields['label_metrics']['accuracy']:.4f}")
            emit("eval", step=state.step, epoch=state.epoch, **fields)
    finally:
        model.train()


# ----------------------------------------------------------------------------------------- checkpointing


def write_model(state: Run, directory: Path, weights: Optional[dict[str, torch.Tensor]] = None) -> None:
    """A complete Hugging Face model: config, generation config, safetensors weights and the tokenizer.
    `weights`: the complete weights gathered from FSDP's shards (gathered_weights), else the model's own."""
    state.model.save_pretrained(directory, state_dict=weights)
    state.tokenizer.save_pretrained(directory, save_jinja_files=False)


def gathered_weights(state: Run) -> Optional[dict[str, torch.Tensor]]:
    """Under FSDP the complete weights on rank 0, gathered from every rank (so every rank calls this); else None."""
    if not distributed.is_sharded(state.model):
        return None
    weights = distributed.full_state_dict(state.model)
    # A tied LM head is the embedding again: saved once, as save_pretrained does for an unsharded model.
    tied = {n for n, _ in state.model.named_parameters(remove_duplicate=False)} - {n for n, _ in state.model.named_parameters()}
    return {k: v for k, v in weights.items() if k not in tied}


def save_checkpoint(state: Run) -> str:
    """Writes `checkpoints/step-NNNNNN/` (the model, training_state.pt, state.json) atomically; emits `checkpoint`.
    Under torchrun every rank calls it (FSDP gathers the weights and AdamW's moments) and rank 0 writes."""
    final = state.output_dir / "checkpoints" / f"step-{state.step:06d}"
    weights = gathered_weights(state)
    # Sharded, the optimizer state is saved complete and keyed by parameter name (loadable by any rank).
    optimizer = distributed.full_optimizer_state(state.model, state.optimizer) if weights is not None else state.optimizer.state_dict()
    rngs = distributed.gather_objects(rng_state())
    if not distributed.is_main():
        state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
        return str(final)
    with atomic_dir(final) as tmp:
        write_model(state, tmp, weights)
        torch.save(
            {
                "optimizer": optimizer,
                "scheduler": state.scheduler.state_dict(),
                "rng": rngs[0],
                "rng_per_rank": rngs,
                "nproc": distributed.world_size(),
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
            "frozen": state.frozen,
            "config": state.request.model_dump(),
        }
        (tmp / "state.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
    fields = {k: v for k, v in (("train_loss", state.train_loss), ("valid_loss", state.valid_loss)) if v is not None}
    emit("checkpoint", step=state.step, epoch=state.epoch, path=str(final), **fields)
    return str(final)


def load_weights(model, directory: Path) -> None:
    """Loads every *.safetensors file of `directory` into `model`; a tied LM head may be absent from the files."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(f))
    result = distributed.load_full_state(model, weights) if distributed.is_sharded(model) else model.load_state_dict(weights, strict=False)
    loaded = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in weights}
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [k for k in result.missing_keys if k not in params or id(params[k]) not in loaded]
    if missing or result.unexpected_keys:
        raise EngineError(
            "invalid_file",
            f"{directory}: weights do not match the model (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}) / 权重与模型不符",
            "resume",
        )


def restore_checkpoint(state: Run) -> None:
    """Loads the newest checkpoint's weights, optimizer, scheduler, RNG states and counters into `state`."""
    path = newest_checkpoint(state.output_dir)
    if path is None:
        log("resume: no checkpoint yet, starting from the beginning / 没有检查点，从头开始")
        return
    try:
        saved = torch.load(path / "training_state.pt", weights_only=True)
        load_weights(state.model, path)
    except EngineError:
        raise
    except Exception as e:
        raise EngineError("invalid_file", f"{path}: cannot load checkpoint: {e} / 无法加载检查点", "resume") from e
    if saved.get("nproc", 1) != distributed.world_size():  # FSDP's optimizer state is saved another way
        raise EngineError(
            "invalid_request",
            f"{path} was written by {saved.get('nproc', 1)} processes: resume with nproc={saved.get('nproc', 1)} / 请使用相同的进程数恢复",
            "nproc",
        )
    if distributed.is_sharded(state.model):
        distributed.load_full_optimizer_state(state.model, state.optimizer, saved["optimizer"])
    else:
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
    if state.batches_done >= state.steps_per_epoch:
        state.epoch_index, state.batches_done = state.epoch_index + 1, 0
    log(f"resumed from {path} at step {state.step} / 从检查点恢复")


def interrupt(state: Run) -> bool:
    """A signal arrived: keep what has been trained (unless a checkpoint holds it already) and stop."""
    if state.step > 0 and state.last_checkpoint_step != state.step:
        save_checkpoint(state)
    log(f"stopped at step {state.step}; resume continues from {state.last_checkpoint} / 已停止，可恢复训练", "warning")
    return True


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The complete model, tokenizer and weitiao.json (lineage, `format: full`) in `<output_dir>/model/`, atomically."""
    final = state.output_dir / "model"
    weights = gathered_weights(state)  # every rank: FSDP gathers
    if state.precision == "bf16":
        # Trained in bf16 compute: ship bf16 weights, as released checkpoints do (half the disk). Checkpoints stay
        # fp32, so a resumed run continues from exact weights.
        if weights is None:
            state.model.to(torch.bfloat16)
        else:
            weights = {name: w.to(torch.bfloat16) for name, w in weights.items()}
    if not distributed.is_main():
        return str(final)
    with atomic_dir(final) as tmp:
        write_model(state, tmp, weights)
        lineage = {
            "base_model": str(Path(state.request.base_model).resolve()),
            "method": state.request.method,
            "format": "full",
            "precision": state.precision,
            "frozen": state.frozen,
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
