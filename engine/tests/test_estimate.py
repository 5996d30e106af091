"""`estimate` against reality: its predicted peak memory is within 25 % of the peak RSS of a real `train`
run (a whole epoch, so the widest batch is included) on the tiny model, for LoRA and QLoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_DIR = Path(__file__).resolve().parents[1]


def train_peak_rss(request: dict) -> tuple[int, dict]:
    """Runs `train` in a subprocess; (its peak resident set size in bytes, its result)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "weitiao_engine", "train"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ENGINE_DIR,
        env={**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.close()
    out = proc.stdout.read()
    # wait4 gives this child's own rusage: its ru_maxrss is the kernel's high-water mark, no sampling gaps.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert proc.returncode == 0 and events[-1]["type"] == "result", events[-3:]
    return usage.ru_maxrss * 1024, events[-1]["data"]


@pytest.fixture(scope="module")
def small_train(waimai_small, tmp_path_factory) -> str:
    """64 examples: 4 steps of 16, a whole epoch in a few seconds."""
    path = tmp_path_factory.mktemp("estimate") / "train.jsonl"
    path.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:64]), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_estimate_is_within_25_percent_of_measured_peak(method, tiny_model, small_train, tmp_path, run_engine) -> None:
    code, events = run_engine(
        "estimate", {"base_model": tiny_model, "training_file": small_train, "method": method, "batch_size": 16, "max_seq_length": 256, "threads": 1}
    )
    assert code == 0, events[-1]
    est = events[-1]["data"]
    assert est["method"] == method and est["n_examples"] == 64 and est["steps_per_epoch"] == 4
    memory = est["memory"]
    assert est["peak_memory_bytes"] == memory["runtime_bytes"] + max(
        memory["load_bytes"],
        memory["base_weights_bytes"] + memory["trainable_bytes"] + memory["gradient_bytes"] + memory["optimizer_bytes"]
        + memory["activation_bytes"] + memory["lm_head_bytes"],
    )  # fmt: skip
    assert memory["optimizer_bytes"] == 2 * memory["gradient_bytes"] > 0 and memory["activation_bytes"] > 0
    if method == "qlora":  # 4.5 bits per decoder linear weight instead of 32
        assert memory["base_weights_bytes"] < memory["load_bytes"]
    assert est["time_per_epoch_seconds"] > 0 and est["matmul_flops_per_second"] > 1e8

    peak, result = train_peak_rss(
        {
            "base_model": tiny_model,
            "output_dir": str(tmp_path / "job"),
            "training_file": small_train,
            "method": method,
            "hyperparameters": {"n_epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_seq_length": 256},
            "threads": 1,
        }
    )
    assert result["steps"] == 4
    assert est["peak_memory_bytes"] == pytest.approx(peak, rel=0.25), (est["peak_memory_bytes"] / 2**20, peak / 2**20)


def test_estimate_names_a_missing_model(tmp_path, small_train, run_engine) -> None:
    code, events = run_engine("estimate", {"base_model": str(tmp_path / "nope"), "training_file": small_train, "batch_size": 4})
    assert code == 1 and events[-1]["type"] == "error"
    assert (events[-1]["code"], events[-1]["param"]) == ("not_found", "base_model")
