"""Checkpoint manifests and recovery: every checkpoint lists its files' sizes and sha256 (manifest.json, written
last); `resume` skips a damaged newest checkpoint with a warning naming it and why, continues from the next older
one (one without a manifest, as written before manifests existed, loads if it loads), and ends exactly where an
uninterrupted run ends. When no checkpoint loads, the error names each and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_same_weights, run_train, train_request

from weitiao_engine.protocol import EngineError
from weitiao_engine.training.manifest import manifest_problem


def short_run(tiny_model: str, waimai_small: dict[str, str], tmp_path: Path, output_dir: Path) -> dict:
    """8 steps (128 examples, batch 16), a checkpoint every 2 steps; dropout on, so the restored RNG state matters."""
    train = tmp_path / "train.jsonl"
    if not train.exists():
        train.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:128]), encoding="utf-8")
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "modules_to_save": ["embed_tokens"]}
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "warmup_ratio": 0.25}
    return train_request(tiny_model, {**waimai_small, "train": str(train)}, output_dir, lora=lora, hyperparameters=hp, save_every_steps=2)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_a_truncated_newest_checkpoint_and_ends_as_one_run(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    whole, _ = run_train(short_run(tiny_model, waimai_small, tmp_path, tmp_path / "whole"), monkeypatch)
    assert whole["steps"] == 8
    done = tmp_path / "whole" / "checkpoints"
    assert all(manifest_problem(done / f"step-{s:06d}") is None for s in (2, 4, 6, 8))

    # A job killed after step 6: its checkpoints 2, 4 and 6. Step 6's weights are cut in half (a disk that filled
    # up); step 4 was written before manifests existed (no manifest.json): it must still load.
    job = tmp_path / "job"
    for step in (2, 4, 6):
        shutil.copytree(done / f"step-{step:06d}", job / "checkpoints" / f"step-{step:06d}")
    truncate(job / "checkpoints" / "step-000006" / "adapter_model.safetensors")
    (job / "checkpoints" / "step-000004" / "manifest.json").unlink()

    resumed, events = run_train({**short_run(tiny_model, waimai_small, tmp_path, job), "resume": True}, monkeypatch)
    warnings = [e["message"] for e in events if e["type"] == "log" and e["level"] == "warning" and "skipped checkpoint" in e["message"]]
    assert len(warnings) == 1 and "step-000006" in warnings[0] and "adapter_model.safetensors has" in warnings[0], warnings
    assert any(e["type"] == "log" and "resumed from" in e["message"] and "step-000004" in e["message"] for e in events)
    assert [e["step"] for e in events if e["type"] == "metrics" and "train_loss" in e] == [5, 6, 7, 8]

    assert resumed["steps"] == whole["steps"] and resumed["trained_tokens"] == whole["trained_tokens"]
    assert resumed["final_train_loss"] == pytest.approx(whole["final_train_loss"], abs=1e-6)
    assert resumed["final_valid_loss"] == pytest.approx(whole["final_valid_loss"], abs=1e-6)
    assert_same_weights(whole["model_dir"], resumed["model_dir"], "adapter_model.safetensors")
    # The damaged checkpoint was written again when its step came round, complete this time.
    assert manifest_problem(job / "checkpoints" / "step-000006") is None


def test_resume_with_no_loadable_checkpoint_names_each_and_why(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    whole, _ = run_train({**short_run(tiny_model, waimai_small, tmp_path, tmp_path / "whole"), "max_steps": 4}, monkeypatch)
    done = tmp_path / "whole" / "checkpoints"
    job = tmp_path / "job"
    for step in (2, 4):
        shutil.copytree(done / f"step-{step:06d}", job / "checkpoints" / f"step-{step:06d}")
    truncate(job / "checkpoints" / "step-000004" / "training_state.pt")
    state = job / "checkpoints" / "step-000002" / "training_state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped: only the sha256 tells
    state.write_bytes(bytes(data))

    with pytest.raises(EngineError) as e:
        run_train({**short_run(tiny_model, waimai_small, tmp_path, job), "max_steps": 4, "resume": True}, monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_file", "resume")
    assert "step-000004: training_state.pt has" in e.value.message
    assert "step-000002: training_state.pt does not match its sha256" in e.value.message
    assert not (job / "model").exists()
    assert json.loads((done / "step-000004" / "manifest.json").read_text())["step"] == 4
