"""Full fine-tuning on the tiny model: loss falls, frozen parts stay put, the result is a complete model
that loads and chats, stop + resume equals one run; and continued fine-tuning merges its adapter base."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_same_weights, train_request
from safetensors.torch import load_file

from weitiao_engine import generate, protocol, recipes
from weitiao_engine.loading import load_model
from weitiao_engine.protocol import ChatRequest, EngineError, TrainRequest


def request(tiny_model: str, data: dict[str, str], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    return train_request(tiny_model, data, output_dir, **{"method": "full", **overrides})


class Events(io.StringIO):
    """Captures stdout events; optionally sends this process SIGTERM after the metrics of `stop_at_step`."""

    def __init__(self, stop_at_step: int | None = None):
        super().__init__()
        self.stop_at_step = stop_at_step

    def write(self, text: str) -> int:
        n = super().write(text)
        event = json.loads(text)
        if self.stop_at_step is not None and event["type"] == "metrics" and event.get("step") == self.stop_at_step and "train_loss" in event:
            os.kill(os.getpid(), signal.SIGTERM)  # the recipe's handler only sets a flag: the step finishes
        return n

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


def run_in_process(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch, stop_at_step: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs `train` (the dispatcher, as __main__ does) in this process, capturing its events."""
    out = Events(stop_at_step)
    monkeypatch.setattr(protocol, "_out", out)
    result = recipes.run(TrainRequest.model_validate(raw))
    return result, out.events()


def small_train(waimai_small: dict[str, str], tmp_path: Path, n: int) -> dict[str, str]:
    train = tmp_path / f"train-{n}.jsonl"
    train.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return {**waimai_small, "train": str(train)}


def test_full_finetune_freezes_trains_and_saves_a_chatting_model(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    # fp32 (not the probe's auto): the frozen tensors are compared bit for bit with the base's, saved as trained.
    hp = {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "bf16": "off"}
    raw = request(tiny_model, waimai_small, tmp_path / "job", max_steps=12, full={"freeze_embeddings": True, "freeze_layers": 1}, hyperparameters=hp)
    result, events = run_in_process(raw, monkeypatch)

    assert result["steps"] == 12 and not result["interrupted"]
    train = [e for e in events if e["type"] == "metrics" and "train_loss" in e]
    assert [e["step"] for e in train] == list(range(1, 13))
    first, last = train[0]["train_loss"], sum(e["train_loss"] for e in train[-4:]) / 4
    assert last < first - 0.5, (first, last)

    # Frozen: the embedding (tied LM head with it) and layer 0 are bit-identical; everything else moved.
    base = load_file(Path(tiny_model) / "model.safetensors")
    tuned = load_file(Path(result["model_dir"]) / "model.safetensors")
    assert base.keys() == tuned.keys()
    frozen = {k for k in base if k.startswith("model.embed_tokens.") or k.startswith("model.layers.0.")}
    assert "model.embed_tokens.weight" in frozen and len(frozen) > 5
    for name in base:
        same = torch.equal(base[name], tuned[name])
        assert same == (name in frozen), name

    # A complete Hugging Face model: config, weights, tokenizer, lineage; it loads without any adapter and chats.
    model_dir = Path(result["model_dir"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "weitiao.json"} <= {p.name for p in model_dir.iterdir()}
    lineage = json.loads((model_dir / "weitiao.json").read_text())
    assert (lineage["method"], lineage["format"]) == ("full", "full") and lineage["base_model"] == str(Path(tiny_model).resolve())
    tied = json.loads((Path(tiny_model) / "config.json").read_text()).get("tie_word_embeddings", False)
    assert set(lineage["frozen"]) == frozen | ({"lm_head.weight"} if tied else set())
    reply = generate.run(ChatRequest(model=str(model_dir), messages=[{"role": "user", "content": "味道很好，送餐很快"}], max_tokens=4, temperature=0, stream=False))
    assert reply["usage"]["completion_tokens"] >= 1 and reply["finish_reason"] in ("stop", "length")

    # Checkpoints are complete models too, plus the optimizer state.
    ckpt = Path(result["last_checkpoint"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_state.pt", "state.json"} <= {p.name for p in ckpt.iterdir()}
    saved = torch.load(ckpt / "training_state.pt", weights_only=True)
    assert saved["step"] == 12 and len(saved["optimizer"]["state"]) > 0


def test_full_finetune_stop_then_resume_equals_uninterrupted(tiny_model, waimai_small, tmp_path, run_engine, monkeypatch) -> None:
    data = small_train(waimai_small, tmp_path, 64)  # 4 steps per epoch, 2 epochs
    full, _ = run_in_process(request(tiny_model, data, tmp_path / "full", full={"freeze_layers": 1}), monkeypatch)
    assert full["steps"] == 8

    raw = request(tiny_model, data, tmp_path / "stopped", full={"freeze_layers": 1})
    stopped, events = run_in_process(raw, monkeypatch, stop_at_step=3)
    assert stopped["interrupted"] and stopped["steps"] == 3 and stopped["model_dir"] is None
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [3]

    # The resumed part through the real engine process (`train` dispatches on method).
    code, events = run_engine("train", {**raw, "resume": True})
    assert code == 0, events[-1]
    resumed = events[-1]["data"]
    assert next(e["step"] for e in events if e["type"] == "metrics") == 4
    assert resumed["steps"] == 8 and resumed["trained_tokens"] == full["trained_tokens"]
    assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], abs=1e-6)
    assert resumed["final_valid_loss"] == pytest.approx(full["final_valid_loss"], abs=1e-6)
    assert_same_weights(full["model_dir"], resumed["model_dir"], "model.safetensors")


def test_freezing_every_layer_is_refused(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, waimai_small, tmp_path / "a", full={"freeze_layers": 2}), monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_request", "full.freeze_layers") and "2 layers" in e.value.message


def test_continued_finetuning_merges_the_adapter_and_records_lineage(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    data = small_train(waimai_small, tmp_path, 32)
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "modules_to_save": ["embed_tokens"]}
    first, _ = run_in_process(request(tiny_model, data, tmp_path / "first", method="lora", lora=lora, max_steps=2), monkeypatch)

    second, events = run_in_process(
        request(tiny_model, data, tmp_path / "second", method="lora", lora=lora, max_steps=2, base_adapter=first["model_dir"]), monkeypatch
    )
    assert second["steps"] == 2 and any("merged the adapter" in e.get("message", "") for e in events)
    merged_dir = tmp_path / "second" / "base"
    # The merged base computes what base + adapter computes.
    ids = torch.tensor([[1, 5, 9, 200, 17, 3]])
    with torch.no_grad():
        with_adapter = load_model(tiny_model, adapter_dir=first["model_dir"], threads=1)[0](ids).logits
        merged = load_model(merged_dir, threads=1)[0](ids).logits
    torch.testing.assert_close(merged, with_adapter, atol=1e-5, rtol=1e-5)
    lineage = json.loads((Path(second["model_dir"]) / "weitiao.json").read_text())
    assert lineage["base_model"] == str(merged_dir.resolve())
    assert lineage["continued_from"] == {"base_model": str(Path(tiny_model).resolve()), "adapter": str(Path(first["model_dir"]).resolve())}
    # The new adapter loads on the merged base.
    load_model(merged_dir, adapter_dir=second["model_dir"], threads=1)


def test_gradient_accumulation_equals_one_pass(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    data = small_train(waimai_small, tmp_path, 32)
    runs = {}
    for k in (1, 4):
        hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "gradient_accumulation_steps": k, "gradient_checkpointing": k > 1, "bf16": "off"}  # equal in fp32
        runs[k], _ = run_in_process(request(tiny_model, {**data, "validation": None}, tmp_path / f"acc{k}", validation_file=None, hyperparameters=hp), monkeypatch)
    assert runs[4]["final_train_loss"] == pytest.approx(runs[1]["final_train_loss"], abs=1e-5)
    a = load_file(Path(runs[1]["model_dir"]) / "model.safetensors")
    b = load_file(Path(runs[4]["model_dir"]) / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0)


def test_full_packed_batches_train_what_padded_batches_train(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    """Padding-free batches (as the LoRA recipe packs them) change nothing but speed: same losses, same weights."""
    from weitiao_engine.training import batching

    data = small_train(waimai_small, tmp_path, 32)
    runs = {}
    for packing in (True, False):
        monkeypatch.setattr(batching, "PACKING", packing)
        hp = {"n_epochs": 1, "batch_size": 8, "learning_rate": 3e-3, "seed": 7, "bf16": "off"}  # equal in fp32
        raw = request(tiny_model, {**data, "validation": None}, tmp_path / f"packed-{packing}", validation_file=None, hyperparameters=hp)
        runs[packing], _ = run_in_process(raw, monkeypatch)
    assert runs[True]["packed"] is True and runs[False]["packed"] is False
    assert runs[True]["final_train_loss"] == pytest.approx(runs[False]["final_train_loss"], rel=1e-4)
    a = load_file(Path(runs[False]["model_dir"]) / "model.safetensors")
    b = load_file(Path(runs[True]["model_dir"]) / "model.safetensors")
    # AdamW turns rounding in a near-zero gradient into up to a few percent of a step (lr 3e-3): atol 1e-4. A sequence
    # that saw another would move the losses and weights by orders of magnitude more.
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=1e-4)


def test_full_early_stopping_stops_and_saves(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    # A min_delta no loss can beat: the first validation sets the best, the next one fails to improve on it.
    data = small_train(waimai_small, tmp_path, 64)  # 4 steps per epoch, 2 epochs
    hp = {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "seed": 7, "early_stopping_patience": 1, "early_stopping_min_delta": 100.0}
    result, events = run_in_process(request(tiny_model, data, tmp_path / "job", hyperparameters=hp, eval_every_steps=2), monkeypatch)
    assert result["early_stopped"] and not result["interrupted"]
    assert result["steps"] == 4 < result["total_steps"] == 8
    assert [e["step"] for e in events if e["type"] == "metrics" and "valid_loss" in e] == [2, 4]
    assert result["last_checkpoint"] == str(tmp_path / "job" / "checkpoints" / "step-000004")
    assert torch.load(Path(result["last_checkpoint"]) / "training_state.pt", weights_only=True)["evals_without_improvement"] == 1
    assert (Path(result["model_dir"]) / "model.safetensors").is_file()
    assert any(e["type"] == "log" and "early stopping at step 4" in e["message"] for e in events)


def test_full_bf16_trains_and_saves_a_bf16_model(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    """bf16 autocast changes rounding only; the weights train in fp32 and the final model ships in bf16."""
    data = small_train(waimai_small, tmp_path, 96)
    hp = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7}
    runs, events = {}, {}
    for mode in ("off", "on"):
        runs[mode], events[mode] = run_in_process(request(tiny_model, data, tmp_path / mode, hyperparameters={**hp, "bf16": mode}), monkeypatch)
    assert (runs["off"]["precision"], runs["on"]["precision"]) == ("fp32", "bf16")
    assert runs["on"]["precision_choice"]["source"] == "bf16: on"  # every recipe decides through precision.choose_for_run
    train = [e["train_loss"] for e in events["on"] if e["type"] == "metrics" and "train_loss" in e]
    assert len(train) == 6 and train[-1] < train[0] - 0.5, train
    assert runs["on"]["final_valid_loss"] == pytest.approx(runs["off"]["final_valid_loss"], rel=0.02)

    model_dir = Path(runs["on"]["model_dir"])
    assert {t.dtype for t in load_file(model_dir / "model.safetensors").values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(Path(runs["off"]["model_dir"]) / "model.safetensors").values()} == {torch.float32}
    assert json.loads((model_dir / "weitiao.json").read_text())["precision"] == "bf16"
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    # Checkpoints keep the fp32 weights the optimizer updates, so resuming continues exactly.
    assert {t.dtype for t in load_file(Path(runs["on"]["last_checkpoint"]) / "model.safetensors").values()} == {torch.float32}
    reply = generate.run(ChatRequest(model=str(model_dir), messages=[{"role": "user", "content": "味道很好，送餐很快"}], max_tokens=4, temperature=0, stream=False))
    assert reply["usage"]["completion_tokens"] >= 1
