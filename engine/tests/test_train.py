"""The LoRA recipe on the tiny model: loss falls, checkpoints are complete, label metrics are right,
and a run stopped by SIGTERM then resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from weitiao_engine import protocol
from weitiao_engine.metrics import label_metrics
from weitiao_engine.protocol import EngineError, TrainRequest
from weitiao_engine.recipes import lora_finetune

ENGINE_DIR = Path(__file__).resolve().parents[1]

RESULT_KEYS = {"model_dir", "interrupted", "steps", "total_steps", "trained_tokens", "final_train_loss", "final_valid_loss", "last_checkpoint"}
METRICS_KEYS = {
    "step", "total_steps", "epoch", "train_loss", "train_mean_token_accuracy", "learning_rate", "grad_norm",
    "tokens_per_second", "examples_per_second", "trained_tokens", "elapsed_seconds", "eta_seconds",
}  # fmt: skip


def request(tiny_model: str, data: dict[str, str], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    base = {
        "base_model": tiny_model,
        "output_dir": str(output_dir),
        "training_file": data["train"],
        "validation_file": data["validation"],
        "hyperparameters": {"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "seed": 7},
        "threads": 1,  # the same reductions in every run, and the machine is shared
    }
    return {**base, **overrides}


def run_in_process(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs the recipe in this process, capturing its stdout events."""
    out = io.StringIO()
    monkeypatch.setattr(protocol, "_out", out)
    result = lora_finetune.run(TrainRequest.model_validate(raw))
    return result, [json.loads(line) for line in out.getvalue().splitlines()]


def test_loss_falls_checkpoints_and_label_metrics(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    raw = request(tiny_model, waimai_small, tmp_path / "job", max_steps=20, save_every_steps=8, eval_every_steps=10, label_set=["好评", "差评"])
    result, events = run_in_process(raw, monkeypatch)

    assert set(result) == RESULT_KEYS
    assert result["steps"] == result["total_steps"] == 20 and not result["interrupted"]
    train = [e for e in events if e["type"] == "metrics" and "train_loss" in e]
    assert [e["step"] for e in train] == list(range(1, 21))
    assert set(train[0]) - {"type"} == METRICS_KEYS
    assert train[-1]["epoch"] == pytest.approx(20 / 16)
    first, last = train[0]["train_loss"], sum(e["train_loss"] for e in train[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert result["final_train_loss"] == train[-1]["train_loss"]
    assert result["trained_tokens"] == train[-1]["trained_tokens"] > 0

    # Validation every 10 steps, at the epoch end (16) and at the last step; label metrics at 16 and 20.
    valid = [e for e in events if e["type"] == "metrics" and "valid_loss" in e]
    assert [e["step"] for e in valid] == [10, 16, 20]
    assert result["final_valid_loss"] == valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [16, 20]
    metrics = evals[-1]["label_metrics"]
    assert metrics["n"] == 128 and metrics["labels"] == ["好评", "差评"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 128
    assert sum(c["support"] for c in metrics["per_class"].values()) == 128

    # Checkpoints every 8 steps, at the epoch end and at the end; each one complete and inspectable.
    checkpoints = [e for e in events if e["type"] == "checkpoint"]
    assert [e["step"] for e in checkpoints] == [8, 16, 20]
    root = tmp_path / "job" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000008", "step-000016", "step-000020"]
    for e in checkpoints:
        path = Path(e["path"])
        assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "state.json", "training_state.pt"]
        state = json.loads((path / "state.json").read_text())
        assert state["step"] == e["step"] and state["config"]["hyperparameters"]["learning_rate"] == 3e-3
        saved = torch.load(path / "training_state.pt", weights_only=True)
        assert saved["step"] == e["step"] and {"optimizer", "scheduler", "rng"} <= set(saved)
    assert json.loads((root / "step-000020" / "state.json").read_text())["best_valid_loss"] == min(e["valid_loss"] for e in valid)
    assert result["last_checkpoint"] == str(root / "step-000020")

    model_dir = Path(result["model_dir"])
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "weitiao.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    lineage = json.loads((model_dir / "weitiao.json").read_text())
    assert lineage["base_model"] == str(Path(tiny_model).resolve()) and lineage["request"]["label_set"] == ["好评", "差评"]
    # Training only ever touches the adapter: no stray temp directories either.
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["checkpoints", "model"]


def test_batched_label_scores_equal_one_by_one(tiny_model, waimai_small) -> None:
    """Padding and batching must not change a label's score (the argmax decides the prediction)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = lora_finetune.load_examples(waimai_small["validation"], "validation_file")[:12]
    task = lora_finetune.build_label_task(tokenizer, examples, ["好评", "差评"])
    assert len(task.sequences) == 24 and task.expected == [m[-1]["content"] for m in examples]
    batched = lora_finetune.score_sequences(model, task.sequences, task.answer_lengths, tokenizer.pad_token_id, batch_size=8)
    with torch.no_grad():
        for seq, k, score in zip(task.sequences, task.answer_lengths, batched):
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1], dim=-1)
            expected = sum(logp[len(seq) - k - 1 + j, seq[len(seq) - k + j]].item() for j in range(k))
            assert score == pytest.approx(expected, abs=1e-4)


def test_sigterm_then_resume_equals_uninterrupted(tiny_model, waimai_small, tmp_path, run_engine, monkeypatch) -> None:
    # Dropout on, so the restored RNG state matters. 2 epochs of 8 steps, stopped by a real SIGTERM
    # early in the first, so the resumed run skips part of an epoch and then crosses an epoch boundary.
    train = tmp_path / "train.jsonl"
    train.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:128]), encoding="utf-8")
    data = {**waimai_small, "train": str(train)}
    # modules_to_save too: the fully trained (tied) embedding and its AdamW state must survive the stop.
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear", "modules_to_save": ["embed_tokens"]}
    full, _ = run_in_process(request(tiny_model, data, tmp_path / "full", lora=lora), monkeypatch)
    assert full["steps"] == 16 and not full["interrupted"]

    job = tmp_path / "stopped"
    raw = request(tiny_model, data, job, lora=lora)
    proc = subprocess.Popen(
        [sys.executable, "-m", "weitiao_engine", "train"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ENGINE_DIR,
        env={**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    proc.stdin.write(json.dumps(raw) + "\n")
    proc.stdin.close()
    stopped_events = []
    for line in proc.stdout:
        event = json.loads(line)
        stopped_events.append(event)
        if event["type"] == "metrics" and event.get("step") == 2:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped = stopped_events[-1]["data"]
    assert stopped["interrupted"] and stopped["model_dir"] is None
    assert 2 <= stopped["steps"] < 16, "the run must stop before its end"
    assert stopped["last_checkpoint"] == str(job / "checkpoints" / f"step-{stopped['steps']:06d}")
    assert stopped_events[-2]["type"] == "log" and stopped_events[-3]["type"] == "checkpoint"
    assert not (job / "model").exists()

    code, events = run_engine("train", {**raw, "resume": True})
    assert code == 0
    resumed = events[-1]["data"]
    first_step = next(e["step"] for e in events if e["type"] == "metrics")
    assert first_step == stopped["steps"] + 1

    assert resumed["steps"] == full["steps"] and resumed["trained_tokens"] == full["trained_tokens"]
    assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], abs=1e-6)
    assert resumed["final_valid_loss"] == pytest.approx(full["final_valid_loss"], abs=1e-6)
    a = load_file(Path(full["model_dir"]) / "adapter_model.safetensors")
    b = load_file(Path(resumed["model_dir"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and "base_model.model.model.embed_tokens.weight" in a
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0)


def test_bad_training_files_name_file_and_line(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "bad.jsonl"
    good = Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join([good[0], good[1], "{not json", good[2]]) + "\n", encoding="utf-8")
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {**waimai_small, "train": str(bad)}, tmp_path / "a"), monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_file", "training_file")
    assert e.value.message.startswith(f"{bad}:3: invalid JSON")

    bad.write_text(good[0] + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n", encoding="utf-8")
    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {"train": waimai_small["train"], "validation": str(bad)}, tmp_path / "b"), monkeypatch)
    assert e.value.param == "validation_file" and e.value.message.startswith(f"{bad}:2: messages.0.role")

    with pytest.raises(EngineError) as e:
        run_in_process(request(tiny_model, {**waimai_small, "train": str(tmp_path / "missing.jsonl")}, tmp_path / "c"), monkeypatch)
    assert e.value.code == "invalid_file" and "missing.jsonl" in e.value.message


def test_label_metrics_hand_checked() -> None:
    # 3 好评 and 5 差评; the model gets 2 of the 好评 and 3 of the 差评 right.
    expected = ["好评", "好评", "好评", "差评", "差评", "差评", "差评", "差评"]
    predicted = ["好评", "好评", "差评", "差评", "差评", "差评", "好评", "好评"]
    m = label_metrics(expected, predicted, ["好评", "差评"])
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[2, 1], [2, 3]]
    good, bad = m["per_class"]["好评"], m["per_class"]["差评"]
    # 好评: predicted 4 times, 2 right -> P 1/2; 3 answers, 2 found -> R 2/3; F1 = 2PR/(P+R) = 4/7
    assert (good["precision"], good["recall"], good["f1"], good["support"]) == pytest.approx((1 / 2, 2 / 3, 4 / 7, 3))
    # 差评: predicted 4 times, 3 right -> P 3/4; 5 answers, 3 found -> R 3/5; F1 = 2/3
    assert (bad["precision"], bad["recall"], bad["f1"], bad["support"]) == pytest.approx((3 / 4, 3 / 5, 2 / 3, 5))
    assert m["macro_f1"] == pytest.approx((4 / 7 + 2 / 3) / 2)  # = 13/21


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a = lora_finetune.epoch_order(7, 0, 100)
    assert a == lora_finetune.epoch_order(7, 0, 100) and sorted(a) == list(range(100))
    assert a != lora_finetune.epoch_order(7, 1, 100) and a != lora_finetune.epoch_order(8, 0, 100)


def test_unknown_lora_modules_are_named(tiny_model, waimai_small, tmp_path, monkeypatch) -> None:
    raw = request(tiny_model, waimai_small, tmp_path / "a", lora={"modules_to_save": ["embed_tokenz"]})
    with pytest.raises(EngineError) as e:
        run_in_process(raw, monkeypatch)
    assert (e.value.code, e.value.param) == ("invalid_request", "lora.modules_to_save") and "embed_tokenz" in e.value.message
