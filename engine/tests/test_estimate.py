"""`estimate`'s arithmetic and errors. How close it comes to a real run's peak memory is a benchmark, not a
test (memory depends on the machine and the libraries): `bench/estimate_accuracy.py` prints both figures."""

from __future__ import annotations

from pathlib import Path

import pytest

@pytest.fixture(scope="module")
def small_train(waimai_small, tmp_path_factory) -> str:
    """64 examples: 4 steps of 16, a whole epoch in a few seconds."""
    path = tmp_path_factory.mktemp("estimate") / "train.jsonl"
    path.write_text("".join(Path(waimai_small["train"]).read_text(encoding="utf-8").splitlines(keepends=True)[:64]), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_estimate_adds_up(method, tiny_model, small_train, run_engine) -> None:
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



def test_gradient_accumulation_holds_one_micro_batch(tiny_model, small_train, run_engine) -> None:
    """Accumulating 4 micro-batches of 4 holds the activations of a batch of 4, with the steps of a batch of 16."""
    request = {"base_model": tiny_model, "training_file": small_train, "max_seq_length": 256, "threads": 1, "gradient_checkpointing": False}
    estimates = []
    for batch, accumulation in ((16, 1), (16, 4), (4, 1)):
        code, events = run_engine("estimate", {**request, "batch_size": batch, "gradient_accumulation_steps": accumulation})
        assert code == 0, events[-1]
        estimates.append(events[-1]["data"])
    whole, micro, small = estimates
    assert micro["steps_per_epoch"] == whole["steps_per_epoch"] == 4
    assert micro["memory"]["activation_bytes"] == small["memory"]["activation_bytes"] < whole["memory"]["activation_bytes"] / 3
    assert micro["memory"]["lm_head_bytes"] == pytest.approx(whole["memory"]["lm_head_bytes"] / 4, rel=1e-6)


def test_estimate_names_a_missing_model(tmp_path, small_train, run_engine) -> None:
    code, events = run_engine("estimate", {"base_model": str(tmp_path / "nope"), "training_file": small_train, "batch_size": 4})
    assert code == 1 and events[-1]["type"] == "error"
    assert (events[-1]["code"], events[-1]["param"]) == ("not_found", "base_model")
