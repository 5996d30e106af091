"""Scale-out on this CPU: `train` with `nproc: 2` runs under torchrun (gloo) through the real launcher path
(`python -m weitiao_engine train`, request on stdin) and must train exactly what one process trains with
the same global batch: LoRA under DDP, full fine-tuning under FSDP2, stop + resume included."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import train_request

TOLERANCE = 1e-4  # issue 4: the 2-process loss equals the 1-process one within 1e-4 after 5 steps


def small_data(waimai_small: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """17 training examples (batch 4: five steps, the last of one example, so one rank trains a blank) and 16
    validation examples."""
    out = {}
    for key, n in (("train", 17), ("validation", 16)):
        lines = Path(waimai_small[key]).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        out[key] = str(tmp_path / f"{key}.jsonl")
        Path(out[key]).write_text("".join(lines), encoding="utf-8")
    return out


def request(tiny_model: str, data: dict[str, str], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    own = {
        "label_set": ["好评", "差评"],
        "lora": {"dropout": 0.0},
        # bf16 off: fp32 on every machine; the 1e-4 equality is about the split, not about the probe's choice
        "hyperparameters": {"bf16": "off", "n_epochs": 1, "batch_size": 4, "learning_rate": 3e-3, "seed": 7, "gradient_accumulation_steps": 2},
    }
    return train_request(tiny_model, data, output_dir, **{**own, **overrides})


def train(run_engine, raw: dict[str, Any]) -> list[dict[str, Any]]:
    code, events = run_engine("train", raw)
    assert code == 0, events[-1]
    return events


def train_in_process(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The 1-process reference, run in this process (saves a Python start), with its events as the engine's stream."""
    from weitiao_engine import protocol, recipes

    out = io.StringIO()
    monkeypatch.setattr(protocol, "_out", out)
    result = recipes.run(protocol.TrainRequest.model_validate(raw))
    return [json.loads(line) for line in out.getvalue().splitlines()] + [{"type": "result", "data": result}]


def train_losses(events: list[dict[str, Any]]) -> list[float]:
    return [e["train_loss"] for e in events if e["type"] == "metrics" and "train_loss" in e]


def valid_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["type"] == "eval")


def assert_same_run(one: list[dict[str, Any]], two: list[dict[str, Any]], steps: int = 5) -> None:
    """Every logged loss of the 2-process run equals the 1-process one; the stream is one process's."""
    losses_1, losses_2 = train_losses(one), train_losses(two)
    assert len(losses_1) == len(losses_2) == steps
    differences = [abs(a - b) for a, b in zip(losses_1, losses_2)]
    print(f"train loss per step, 1 process: {losses_1}; |1-proc - 2-proc|: {['%.2e' % d for d in differences]}")
    assert max(differences) < TOLERANCE, differences
    v1, v2 = valid_event(one), valid_event(two)
    assert abs(v1["valid_loss"] - v2["valid_loss"]) < TOLERANCE
    assert v1["label_metrics"]["accuracy"] == v2["label_metrics"]["accuracy"]
    r1, r2 = one[-1]["data"], two[-1]["data"]
    assert r1["trained_tokens"] == r2["trained_tokens"] and r2["steps"] == steps
    # One process's stream: one hello first (the launcher's), the result last, rank 1 silent.
    assert [e["type"] for e in two].count("hello") == 1 and two[0]["type"] == "hello" and two[-1]["type"] == "result"
    assert [e["type"] for e in two].count("eval") == [e["type"] for e in one].count("eval") >= 1  # one per epoch, rank 1 silent


def assert_no_workers_left(tmp_path: Path) -> None:
    """torchrun and its workers are gone once the engine has exited (they run in their own sessions)."""
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not left, left


def test_lora_on_two_processes_equals_one(tiny_model, waimai_small, tmp_path, run_engine, monkeypatch) -> None:
    data = small_data(waimai_small, tmp_path)
    one = train_in_process(request(tiny_model, data, tmp_path / "one"), monkeypatch)
    two = train(run_engine, request(tiny_model, data, tmp_path / "two", nproc=2))
    assert_same_run(one, two)
    assert_no_workers_left(tmp_path)

    a = load_file(Path(one[-1]["data"]["model_dir"]) / "adapter_model.safetensors")
    b = load_file(Path(two[-1]["data"]["model_dir"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"LoRA weights: largest |1-proc - 2-proc| = {worst:.2e}")
    assert worst < 1e-5
    launched = json.loads((tmp_path / "two" / "launch-request.json").read_text(encoding="utf-8"))
    assert launched["nproc"] == 2 and launched["threads"] == 1


def test_full_finetune_on_two_processes_stopped_and_resumed_equals_one(tiny_model, waimai_small, tmp_path, run_engine, train_stopped_at_step, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    data = small_data(waimai_small, tmp_path)
    # Two epochs (10 steps): the stop after step 2 must land before the end however fast this machine is.
    hp = {**request(tiny_model, data, tmp_path)["hyperparameters"], "n_epochs": 2}
    one = train_in_process(request(tiny_model, data, tmp_path / "one", method="full", hyperparameters=hp), monkeypatch)

    # The 2-process (FSDP) run gets SIGTERM after step 2: the workers agree on a step to stop after (the signal
    # takes two pipes and a relay, so a tiny model's step 3 may be done by then), rank 0 checkpoints it, and
    # the resumed run must still end where one uninterrupted process does.
    raw = request(tiny_model, data, tmp_path / "two", method="full", nproc=2, hyperparameters=hp)
    stopped = train_stopped_at_step(raw, 2)
    assert stopped[-1]["type"] == "result" and stopped[-1]["data"]["interrupted"], stopped[-1]
    at = stopped[-1]["data"]["steps"]
    assert 2 <= at < 10 and [e["step"] for e in stopped if e["type"] == "checkpoint"] == [at]
    resumed = train(run_engine, {**raw, "resume": True})
    assert next(e["step"] for e in resumed if e["type"] == "metrics") == at + 1
    two = stopped[: -1] + resumed[1:]  # one stream: the resumed run's hello dropped
    assert_same_run(one, two, steps=10)
    assert_no_workers_left(tmp_path)

    # FSDP gathered the shards: rank 0 saved a complete Hugging Face model, tied LM head once as usual.
    model = AutoModelForCausalLM.from_pretrained(two[-1]["data"]["model_dir"])
    a = load_file(Path(one[-1]["data"]["model_dir"]) / "model.safetensors")
    b = load_file(Path(two[-1]["data"]["model_dir"]) / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"full weights: largest |1-proc - 2-proc| = {worst:.2e}")
    assert worst < 1e-4
    assert torch.equal(model.state_dict()["model.norm.weight"], b["model.norm.weight"])

    # The sharded checkpoint resumes only with the same number of processes.
    from weitiao_engine.protocol import EngineError

    with pytest.raises(EngineError, match="written by 2 processes: resume with nproc=2") as refused:
        train_in_process({**raw, "resume": True, "nproc": 1}, monkeypatch)
    assert refused.value.param == "nproc"


@pytest.mark.parametrize(
    ("overrides", "param", "words"),
    [
        ({"hyperparameters": {"n_epochs": 1, "batch_size": 3, "learning_rate": 1e-3}}, "hyperparameters.batch_size", "not divisible by the 2 processes"),
        ({"method": "dpo"}, "nproc", "dpo runs in one process"),
    ],
)
def test_settings_two_processes_cannot_run_are_refused(tiny_model, waimai_small, tmp_path, run_engine, overrides, param, words) -> None:
    code, events = run_engine("train", {**request(tiny_model, small_data(waimai_small, tmp_path), tmp_path / "job", nproc=2), **overrides})
    assert code == 1 and events[-1]["type"] == "error"
    assert events[-1]["code"] == "invalid_request" and events[-1]["param"] == param and words in events[-1]["message"]
    assert not (tmp_path / "job" / "launch-request.json").exists()  # refused before anything started
