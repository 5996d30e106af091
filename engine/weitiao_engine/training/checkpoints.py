"""Checkpoint directories, `<output_dir>/checkpoints/step-NNNNNN/`, a person can inspect:

    the weights (an adapter, or a complete Hugging Face model)   written by the recipe
    training_state.pt   optimizer, scheduler, every RNG state (per rank), the counters (torch.load(weights_only=True))
    state.json          step, epoch, losses, trained tokens and the full request
    manifest.json       every file's size and sha256, written last (manifest.py)

`restore` continues from the newest checkpoint that verifies against its manifest and loads; a damaged one
is skipped with a warning naming it and why, and the next older one is used. Checkpoints written before
manifests existed load if they load.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .. import distributed
from ..atomic import atomic_dir
from ..protocol import EngineError, emit, log
from .manifest import has_manifest, manifest_problem, write_manifest
from .rng import rank_rng_state, rng_state, set_rng_state
from .state import TrainingState

CHECKPOINT_DIR = re.compile(r"^step-(\d+)$")
TRAINING_STATE = "training_state.pt"
# The counters of TrainingState a checkpoint saves; restored as saved.
COUNTERS = ("step", "epoch_index", "batches_done", "trained_tokens", "train_loss", "valid_loss", "best_valid_loss", "evals_without_improvement")


def write_checkpoint(
    state: TrainingState, write_weights: Callable[[Path], None], optimizer: dict[str, Any], extra_state: Optional[dict[str, Any]] = None,
    extra_summary: Optional[dict[str, Any]] = None,
) -> str:  # fmt: skip
    """Writes `checkpoints/step-NNNNNN/` atomically: `write_weights(directory)`, training_state.pt (`optimizer`: its
    state dict, plus `extra_state`), state.json (plus `extra_summary`), then manifest.json; emits `checkpoint`.
    Under torchrun every rank calls it (their RNG states are gathered) and rank 0 writes."""
    final = state.output_dir / "checkpoints" / f"step-{state.step:06d}"
    rngs = distributed.gather_objects(rng_state())  # dropout draws differ between ranks: keep each rank's
    if not distributed.is_main():
        state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
        return str(final)
    with atomic_dir(final) as tmp:
        write_weights(tmp)
        counters = {name: getattr(state, name) for name in COUNTERS}
        saved = {"optimizer": optimizer, "scheduler": state.scheduler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs}
        torch.save({**saved, **counters, "elapsed_seconds": state.elapsed, **(extra_state or {})}, tmp / TRAINING_STATE)
        summary = {
            "step": state.step,
            "total_steps": state.total_steps,
            "epoch": state.epoch,
            "train_loss": state.train_loss,
            "valid_loss": state.valid_loss,
            "best_valid_loss": state.best_valid_loss,
            "trained_tokens": state.trained_tokens,
            **(extra_summary or {}),
            "config": state.request.model_dump(),
        }
        (tmp / "state.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        write_manifest(tmp, state.step)  # last: it vouches for everything above
    state.last_checkpoint, state.last_checkpoint_step = str(final), state.step
    fields = {k: v for k, v in (("train_loss", state.train_loss), ("valid_loss", state.valid_loss)) if v is not None}
    emit("checkpoint", step=state.step, epoch=state.epoch, path=str(final), **fields)
    return str(final)


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    """The checkpoint directories, highest step first: those with a training state or a manifest (which then names
    what is missing); temp directories of an interrupted save are ignored."""
    found = []
    for d in (output_dir / "checkpoints").glob("step-*"):
        m = CHECKPOINT_DIR.match(d.name)
        if m and ((d / TRAINING_STATE).is_file() or has_manifest(d)):
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found, reverse=True)]


def restore(state: TrainingState, read_weights: Callable[[Path], Any], load: Callable[[Path, Any, dict[str, Any]], None]) -> None:
    """Continues from the newest checkpoint that verifies and loads: `read_weights(directory)` reads its weights
    (any error there, as in training_state.pt, means damage: the next older checkpoint is tried), then
    `load(directory, weights, training_state)` puts them and the optimizer state into the run (an EngineError there means
    the checkpoint does not fit this run, and is raised); scheduler, RNG states and counters follow."""
    skipped = []
    for path in checkpoints_newest_first(state.output_dir):
        problem = manifest_problem(path) if has_manifest(path) else None
        if problem is None:
            try:
                saved = torch.load(path / TRAINING_STATE, weights_only=True)
                weights = read_weights(path)
            except Exception as e:  # noqa: BLE001 (a truncated file fails in safetensors, zipfile, pickle…)
                problem = f"cannot be loaded ({type(e).__name__}: {e})"
        if problem is not None:
            log(f"resume: skipped checkpoint {path.name} ({path}): {problem} / 跳过损坏的检查点 {path.name}", "warning")
            skipped.append(f"{path.name}: {problem}")
            continue
        load(path, weights, saved)
        state.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(rank_rng_state(saved))
        for name in COUNTERS:
            setattr(state, name, saved.get(name, 0) if name == "evals_without_improvement" else saved[name])  # absent before early stopping
        state.elapsed_before = saved["elapsed_seconds"]
        state.last_checkpoint, state.last_checkpoint_step = str(path), state.step
        if state.batches_done >= state.steps_per_epoch:  # saved at an epoch end
            state.epoch_index, state.batches_done = state.epoch_index + 1, 0
        log(f"resumed from {path} at step {state.step} / 从检查点恢复")
        return
    if skipped:  # a damaged history must be reported, not silently restarted
        raise EngineError(
            "invalid_file", f"{state.output_dir / 'checkpoints'}: no checkpoint loads: {'; '.join(skipped)} / 没有可加载的检查点", "resume"
        )
    log("resume: no checkpoint yet, starting from the beginning / 没有检查点，从头开始")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every *.safetensors file of a checkpoint, as one state dict (full weights may be sharded)."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(f))
    return weights


def save_adapter(model, directory: Path) -> None:
    """A PEFT adapter (adapter_model.safetensors, adapter_config.json), without PEFT's empty model card."""
    model.save_pretrained(directory)
    (directory / "README.md").unlink(missing_ok=True)  # noise in every checkpoint


def read_adapter(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "adapter_model.safetensors")


def restore_adapter(state: TrainingState) -> None:
    """`restore` for the runs whose checkpoints hold a PEFT adapter (LoRA, QLoRA, DPO's policy)."""
    restore(state, read_adapter, functools.partial(load_adapter, state))


def load_adapter(state: TrainingState, path: Path, weights: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    """An adapter checkpoint's weights and optimizer state into a LoRA run (LoRA, QLoRA, DPO's policy)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(state.model, weights)
    if getattr(result, "unexpected_keys", None):
        raise EngineError("invalid_file", f"{path}: adapter does not match this LoRA config / 适配器与 LoRA 配置不符", "resume")
    state.optimizer.load_state_dict(saved["optimizer"])
