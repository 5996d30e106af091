"""Resident memory of the base weights: bf16 LoRA vs QLoRA (NF4), on the Qwen2.5-0.5B shape with random weights.

    .venv/bin/python bench/qlora_memory.py [--model /tmp/weitiao-bench/qwen2.5-0.5b]

Each setup runs in its own subprocess (a fresh allocator, so one cannot reuse the other's freed pages),
through the `train` command's own code: `training.lora.load_base` (the tensor-by-tensor loader of
weitiao_engine/loading.py) with the request a `train` would get, then PEFT's LoRA (r=8, all linears) as
the recipe adds it, and one training step (forward, backward through the chunked NF4 LM head) to check the
model trains. Printed per setup: the RSS growth while loading (the base weights: what stays resident during
training) and the peak growth (ru_maxrss) up to the end of loading, with the ratio QLoRA / bf16 LoRA.

Setups: `lora` with its frozen weights stored in bf16 (the checkpoint's dtype); `qlora` as the recipe runs
it by default (every linear, the embedding and the tied LM head in NF4; norms fp32); `qlora-dense-embedding`,
what the recipe does when modules_to_save trains `embed_tokens` (embedding and head stay dense fp32).
The model (a bf16 safetensors checkpoint of Qwen2.5-0.5B's shape, random weights) is the one `make bench`
(bench/run.py) makes from bench/configs/qwen2.5-0.5b.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path(os.environ.get("WEITIAO_BENCH_DIR", Path(tempfile.gettempdir()) / "weitiao-bench")) / "qwen2.5-0.5b"
SETUPS = {  # name: (method, precision, modules_to_save)
    "lora": ("lora", "bf16-weights", None),
    "qlora": ("qlora", "fp32", None),
    "qlora-dense-embedding": ("qlora", "fp32", ["embed_tokens"]),
}


def child(setup: str, model_dir: str) -> dict:
    """Loads the base as `train` does for `setup`, adds LoRA, trains one step; returns the memory figures."""
    sys.path.insert(0, str(REPO / "engine"))
    import peft  # noqa: F401 - imported before the first figure: runtime, not weights
    import torch
    import transformers  # noqa: F401
    from weitiao_engine.loading import resident_mib
    from weitiao_engine.protocol import TrainRequest
    from weitiao_engine.quantize import nf4_bytes
    from weitiao_engine.training.lora import linear_module_names, load_base
    from weitiao_engine.training.loss import token_loss
    from weitiao_engine.training.precision import compute_in_fp32

    torch.set_num_threads(1)
    method, precision, to_save = SETUPS[setup]
    request = TrainRequest.model_validate({
        "base_model": model_dir, "output_dir": tempfile.mkdtemp(prefix="qlora-memory-"), "training_file": "unused.jsonl", "method": method,
        "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear", "modules_to_save": to_save},
        "hyperparameters": {"n_epochs": 1, "batch_size": 2, "learning_rate": 1e-4},
    })  # fmt: skip
    gc.collect()
    rss0, peak0 = resident_mib(), resident_mib(peak=True)
    model = load_base(request, precision)
    gc.collect()
    base_rss, base_peak = resident_mib() - rss0, resident_mib(peak=True) - peak0

    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=linear_module_names(model), modules_to_save=to_save,
                      ensure_weight_tying=bool(to_save and model.config.tie_word_embeddings), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    if precision == "bf16-weights":
        compute_in_fp32(model)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    loss, n, _ = token_loss(model, ids, torch.ones_like(ids), labels)
    (loss / n).backward()
    assert torch.isfinite(loss)
    return {
        "setup": setup,
        "base_rss_mb": base_rss,
        "base_peak_mb": base_peak,
        "nf4_mb": nf4_bytes(model) / 2**20,
        "dense_base_mb": sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad) / 2**20,
        "step_peak_mb": resident_mib(peak=True) - peak0,
    }


def ensure_model(model_dir: Path) -> None:
    """Stops with a clear message when the benchmark model is not there."""
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"{model_dir} not found: run `make bench` once (bench/run.py makes it), or pass --model / 找不到模型")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--child", choices=list(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model)))
        return 0
    ensure_model(Path(args.model))

    results = {}
    for setup in SETUPS:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        out = subprocess.run([sys.executable, __file__, "--child", setup, "--model", args.model], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results[setup] = json.loads(out.stdout.strip().splitlines()[-1])

    b = results["lora"]
    print(f"model: {args.model}")
    print(f"{'':34}" + "".join(f"{s:>24}" for s in SETUPS))
    for key, label in [
        ("base_rss_mb", "base weights, resident MiB"),
        ("base_peak_mb", "base weights, peak MiB"),
        ("nf4_mb", "NF4 codes + absmax, MiB"),
        ("dense_base_mb", "dense frozen tensors, MiB"),
        ("step_peak_mb", "peak after one train step, MiB"),
    ]:
        print(f"{label:34}" + "".join(f"{results[s][key]:24.1f}" for s in SETUPS))
    for key, label in [("base_rss_mb", "resident"), ("base_peak_mb", "peak")]:
        print(f"{'ratio to bf16 LoRA, ' + label:34}" + "".join(f"{results[s][key] / b[key]:24.3f}" for s in SETUPS))
    ratio = results["qlora"]["base_peak_mb"] / b["base_peak_mb"]
    print(f"QLoRA (the recipe's default) / bf16 LoRA, peak resident memory of the base weights: {ratio:.3f} (target <= 0.35)")
    print(json.dumps({**results, "ratio_base_peak": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
