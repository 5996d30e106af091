"""Full fine-tuning on CPU or one GPU: `train` with method `full`.

    echo '{"base_model": "...", "output_dir": "...", "training_file": "train.jsonl", "method": "full",
          "full": {"freeze_embeddings": true, "freeze_layers": 1},
          "hyperparameters": {"n_epochs": 2, "batch_size": 16, "learning_rate": 2e-5}}' | python -m weitiao_engine train

The same steps as lora_finetune.py, from the same plain functions in training/ (no recipe imports another). The
differences: every weight trains except the frozen embedding / first N decoder layers; checkpoints and
the result are complete Hugging Face models (config, safetensors, tokenizer), so any of them loads and
chats as a base model; a checkpoint adds the optimizer state (AdamW's two moments: 2× the trained weights).

Reads top to bottom: setup -> train -> save_final. Determinism as in lora_finetune: per-epoch
data order from (seed, epoch), every RNG state in the checkpoint, so stop + resume equals one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .. import distributed
from ..chat_format import TokenizedExample
from ..loading import set_threads
from ..protocol import EngineError, TrainRequest, log, progress
from ..training import activation_checkpointing, batching, checkpoints
from ..training.data import load_plain_base, load_tokenizer, read_files, tokenize_sft
from ..training.evaluation import after_step, next_epoch_if_done, validate
from ..training.labels import LabelTask, build_label_task
from ..training.sft import sft_step
from ..training.optimization import adamw, schedule
from ..training.precision import choose_for_run
from ..training.rng import seed_everything
from ..training.state import TrainingState, interrupt, result, stopping_on_signals
from ..training.step_metrics import Throughput
from ..training.final_model import save_final_model
from ..training.fused_ops import use_fused_ops


@dataclass(kw_only=True)
class Run(TrainingState):
    """Everything a run needs, built by setup(); the counters (TrainingState) are what a checkpoint restores.
    The weights and AdamW stay fp32; `precision` "bf16" means autocast compute (and a bf16 final model)."""

    train_data: list[TokenizedExample]
    valid_data: list[TokenizedExample]
    label_task: Optional[LabelTask]
    frozen: list[str]  # names of the parameters that do not train
    call: Any = None  # call(fn, *args) = fn(model, *args) inside FSDP's forward under torchrun (distributed.ModelCall)
    packed: bool = False  # training batches are padding-free (batching.pack); else padded (batching.collate)


def run(request: TrainRequest) -> dict[str, Any]:
    """Fine-tunes every (unfrozen) weight; returns the same fields as lora_finetune.run."""
    state = setup(request)
    with stopping_on_signals(state):
        interrupted = train(state)
        model_dir = None if interrupted else save_final(state)
    return result(state, model_dir, interrupted, packed=state.packed)


# ------------------------------------------------------------------------------------------------- setup


def setup(request: TrainRequest) -> Run:
    """Threads, seed, data, the base model with its frozen parts, optimizer and scheduler; restores on resume."""
    hp = request.hyperparameters
    set_threads(request.threads)

    progress("setup", 0, 4, "reading data / 读取数据")
    output_dir, train_examples, valid_examples = read_files(request)

    progress("setup", 1, 4, "loading the base model / 加载基础模型")
    tokenizer, pad_id = load_tokenizer(request.base_model)
    model = load_plain_base(request.base_model, torch.float32)

    progress("setup", 2, 4, "tokenizing / 分词")
    train_data, valid_data, _ = tokenize_sft(tokenizer, request, train_examples, valid_examples)
    label_task = build_label_task(tokenizer, valid_examples, request.label_set) if request.label_set and valid_examples else None

    progress("setup", 3, 4, "freezing / 冻结参数")
    frozen = freeze(model, request.full.freeze_embeddings, request.full.freeze_layers)
    seed_everything(hp.seed)
    packed = batching.use_packing(model, train_data[0].input_ids)  # where the model keeps packed sequences apart
    if activation_checkpointing.use_gradient_checkpointing(hp.gradient_checkpointing, model):  # "auto": by the base's size
        activation_checkpointing.enable(model)  # full: every weight trains, nothing is cheap to keep
    # Every weight trains, so they and AdamW stay fp32 (a bf16 update underflows); bf16 is autocast compute only,
    # chosen by `auto` where the probe's training layer ran faster under it (cached per machine).
    choice = choose_for_run(request, full=True)
    precision = choice["precision"]
    use_fused_ops(model)  # fp32 RMSNorm as one kernel, SwiGLU keeping less (training/fused_ops.py)
    model.train()
    # Under torchrun: FSDP2 shards every weight, its gradient and AdamW's moments over the processes (one unit
    # per decoder layer); before the optimizer, which must see the shards.
    call = distributed.fully_sharded(model, getattr(model.get_decoder(), "layers", None))
    optimizer = adamw(model, hp)
    steps_per_epoch, total_steps, scheduler = schedule(optimizer, hp, len(train_data), request.max_steps)

    state = Run(
        request=request, output_dir=output_dir, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        train_data=train_data, valid_data=valid_data, label_task=label_task, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, pad_id=pad_id, frozen=frozen, call=call, bf16=precision == "bf16", precision=precision,
        packed=packed, precision_choice=choice,
    )  # fmt: skip
    if request.resume:
        checkpoints.restore(state, checkpoints.read_weights, lambda path, weights, saved: load_checkpoint(state, path, weights, saved))
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
    hp = state.request.hyperparameters
    params = [p for p in state.model.parameters() if p.requires_grad]
    meter = Throughput()
    while state.step < state.total_steps:
        # group_by_length is not applied to full fine-tuning (its batches have always been the plain shuffled order).
        batches = batching.epoch_batches(hp.seed, state.epoch_index, [0] * len(state.train_data), hp.batch_size, group_by_length=False)
        for batch_indices in batches[state.batches_done :]:
            if distributed.any_rank(state.stop_requested):  # every rank stops after the same step
                return interrupt(state, save_checkpoint)
            sft_step(state, state.call, [state.train_data[i] for i in batch_indices], params, meter)
            validate_now = lambda with_labels: validate(state, state.valid_data, state.label_task, with_labels, state.call)  # noqa: E731
            if after_step(state, len(batches), bool(state.valid_data), validate_now, save_checkpoint):
                return False
        next_epoch_if_done(state, len(batches))
    return False


# ----------------------------------------------------------------------------------------- checkpointing


def gathered_weights(state: Run) -> Optional[dict[str, torch.Tensor]]:
    """Under FSDP the complete weights on rank 0, gathered from every rank (so every rank calls this); else None."""
    if not distributed.is_sharded(state.model):
        return None
    weights = distributed.full_state_dict(state.model)
    # A tied LM head is the embedding again: saved once, as save_pretrained does for an unsharded model.
    tied = {n for n, _ in state.model.named_parameters(remove_duplicate=False)} - {n for n, _ in state.model.named_parameters()}
    return {k: v for k, v in weights.items() if k not in tied}


def save_checkpoint(state: Run) -> str:
    """`checkpoints/step-NNNNNN/`: a complete Hugging Face model (config, safetensors, tokenizer), training_state.pt,
    state.json, manifest.json. Under torchrun every rank calls it (FSDP gathers the weights and AdamW's moments)."""
    weights = gathered_weights(state)
    # Sharded, the optimizer state is saved complete and keyed by parameter name (loadable by any rank).
    optimizer = distributed.full_optimizer_state(state.model, state.optimizer) if weights is not None else state.optimizer.state_dict()

    def write_model(directory: Path) -> None:
        state.model.save_pretrained(directory, state_dict=weights)
        state.tokenizer.save_pretrained(directory, save_jinja_files=False)

    return checkpoints.write_checkpoint(
        state, write_model, optimizer, extra_state={"nproc": distributed.world_size()}, extra_summary={"frozen": state.frozen}
    )


def load_checkpoint(state: Run, path: Path, weights: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    """A checkpoint's weights and optimizer state into the run (every rank its shards under FSDP); a tied LM head
    may be absent from the files. A checkpoint of another process count or model is an error."""
    if saved.get("nproc", 1) != distributed.world_size():  # FSDP's optimizer state is saved another way
        raise EngineError(
            "invalid_request",
            f"{path} was written by {saved.get('nproc', 1)} processes: resume with nproc={saved.get('nproc', 1)} / 请使用相同的进程数恢复",
            "nproc",
        )
    model = state.model
    loaded = distributed.load_full_state(model, weights) if distributed.is_sharded(model) else model.load_state_dict(weights, strict=False)
    present = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in weights}
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [k for k in loaded.missing_keys if k not in params or id(params[k]) not in present]
    if missing or loaded.unexpected_keys:
        raise EngineError(
            "invalid_file",
            f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {loaded.unexpected_keys[:3]}) / 权重与模型不符",
            "resume",
        )
    if distributed.is_sharded(model):
        distributed.load_full_optimizer_state(model, state.optimizer, saved["optimizer"])
    else:
        state.optimizer.load_state_dict(saved["optimizer"])


# ------------------------------------------------------------------------------------------------ finish


def save_final(state: Run) -> str:
    """The complete model, tokenizer and weitiao.json (lineage, `format: full`) in `<output_dir>/model/`, atomically."""
    weights = gathered_weights(state)  # every rank: FSDP gathers
    if state.precision == "bf16":
        # Trained in bf16 compute: ship bf16 weights, as released checkpoints do (half the disk). Checkpoints stay
        # fp32, so a resumed run continues from exact weights.
        if weights is None:
            state.model.to(torch.bfloat16)
        else:
            weights = {name: w.to(torch.bfloat16) for name, w in weights.items()}
    write = lambda directory: state.model.save_pretrained(directory, state_dict=weights)  # noqa: E731
    return save_final_model(state, write, format="full", precision=state.precision, frozen=state.frozen)
