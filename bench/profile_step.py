"""Where one training step's time goes (torch.profiler over the engine's own LoRA recipe), as shares.

    .venv/bin/python bench/profile_step.py --shape qwen2.5-0.5b            (the bench's 0.5B shape, random bf16 weights)
    .venv/bin/python bench/profile_step.py --shape tiny --batch 4

Builds the shape as bench/run.py does (same work dir, reused), runs the recipe's setup with `bf16: auto` (the
precision probe decides), one warm-up step, then profiles `--steps` steps (forward, backward, AdamW). Each op's
self CPU time goes to one category; what no op covers (wall time minus the ops' self time) is Python and
dispatch between them. On a shared machine the absolute times are noise: read the shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "engine"))
sys.path.insert(0, str(ROOT / "bench"))

# (category, substrings of op names), first match wins: the optimizer's foreach/fused kernels before the elementwise ops.
CATEGORIES = [
    ("optimizer (AdamW)", ("_foreach_", "_fused_adam", "adamw")),
    ("matmuls", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "attention")),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous")),
    ("allocator (empty, zero-fill)", ("aten::empty", "aten::resize_", "aten::zero_", "aten::zeros", "aten::fill_", "aten::new_")),
    ("loss (log-softmax, cross-entropy)", ("log_softmax", "nll_loss", "cross_entropy", "logsumexp")),
    ("norms and activations (elementwise)", ("aten::",)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1, help="profiled steps after one warm-up step")
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"])
    args = parser.parse_args()
    from weitiao_engine import allocator

    allocator.use_tcmalloc()  # as the engine's entry point and bench/worker.py: profile the allocator the runs use

    import csv
    import random

    import torch
    from run import SHAPES, WAIMAI, SEED, chat, make_model, write_jsonl
    from weitiao_engine import protocol
    from weitiao_engine.protocol import TrainRequest
    from weitiao_engine.recipes import lora_finetune
    from weitiao_engine.training import batching
    from weitiao_engine.training.sft import sft_step
    from weitiao_engine.training.step_metrics import Throughput
    from weitiao_engine import distributed

    work = Path(os.environ.get("WEITIAO_BENCH_DIR", Path(tempfile.gettempdir()) / "weitiao-bench"))
    work.mkdir(parents=True, exist_ok=True)
    with WAIMAI.open(encoding="utf-8-sig", newline="") as f:
        rows = random.Random(SEED).sample(list(csv.DictReader(f)), 2000 + 128)
    corpus = work / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(r["review"] for r in rows[:2000]) + "\n", encoding="utf-8")
    model = make_model(work, args.shape, SHAPES[args.shape][0], corpus)
    n = args.batch * (args.steps + 1)
    train = write_jsonl(work / f"profile-{args.shape}.jsonl", [chat(r) for r in rows[:n]])

    logs: list[str] = []

    class Events:  # the recipe's stdout events: keep its log lines (the precision choice), drop the rest
        def write(self, line: str) -> int:
            for text in line.splitlines():
                event = json.loads(text)
                if event.get("type") == "log":
                    logs.append(event.get("message", ""))
            return len(line)

        def flush(self) -> None:
            pass

    protocol._out = Events()
    request = TrainRequest.model_validate({
        "base_model": model, "output_dir": str(work / "profile-run"), "training_file": train,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
        "hyperparameters": {"n_epochs": 1, "batch_size": args.batch, "learning_rate": 1e-3, "seed": SEED, "bf16": args.bf16},
    })  # fmt: skip
    state = lora_finetune.setup(request)
    print(f"allocator: {allocator.in_use()}")
    for line in logs:
        print(line)
    params = [p for p in state.model.parameters() if p.requires_grad]
    call = distributed.data_parallel(state.model)
    lengths = [len(e.input_ids) for e in state.train_data]
    batches = batching.epoch_batches(SEED, 0, lengths, args.batch, False)
    meter = Throughput()

    def step(indices: list[int]) -> None:  # forward, backward, clip, AdamW step: the recipe's whole step
        sft_step(state, call, [state.train_data[i] for i in indices], params, meter)

    step(batches[0])  # warm-up: thread pools, oneDNN primitives, allocator arenas
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for indices in batches[1 : 1 + args.steps]:
            step(indices)
        wall = time.perf_counter() - start
    shares: dict[str, float] = {name: 0.0 for name, _ in CATEGORIES}
    top: dict[str, float] = {}
    for avg in prof.key_averages():
        self_s = avg.self_cpu_time_total / 1e6
        if self_s <= 0:
            continue
        key = avg.key.lower()
        name = next((c for c, subs in CATEGORIES if any(s.lower() in key for s in subs)), None)
        if name is None:
            continue  # annotations (record_function ranges) have no self time worth counting
        shares[name] += self_s
        top[avg.key] = self_s
    covered = sum(shares.values())
    shares["Python and dispatch (wall − ops)"] = max(0.0, wall - covered)
    tokens = sum(lengths[i] for b in batches[1 : 1 + args.steps] for i in b)
    print(f"\n{args.shape}, batch {args.batch}, {args.steps} profiled step(s), {tokens} tokens, precision {state.precision},"
          f" checkpointing {state.checkpointing}, {torch.get_num_threads()} threads; wall {wall:.2f} s (profiler on; noisy)")  # fmt: skip
    total = max(wall, covered)
    for name, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {100 * seconds / total:5.1f}%")
    print("\nlargest ops by self time:")
    for key, seconds in sorted(top.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {key:40s} {100 * seconds / total:5.1f}%")


if __name__ == "__main__":
    main()
