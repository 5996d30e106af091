"""Side-by-side speed benchmark: TRL's SFTTrainer + PEFT LoRA vs the weitiao engine, on the same machine.

    make bench            (= .venv/bin/pip install -r bench/requirements.txt && .venv/bin/python bench/run.py)
    .venv/bin/python bench/run.py --shapes tiny        (the tiny shape only, about a minute)

Workload: waimai reviews as chat examples (system, review, 好评/差评), LoRA r=8 alpha=16 dropout=0.05 on
all linear layers, the same learning rate, global batch, examples and steps for both systems. Shapes: a
tiny Qwen2 (2 layers, 128 wide, vocab 4096) and Qwen2.5-0.5B's shape (bench/configs/qwen2.5-0.5b.json)
with random weights stored in bf16 like the real checkpoint. Every run is its own subprocess
(bench/worker.py), baseline and engine alternating; the engine's ablation rows turn one technique off
each. Writes BENCHMARKS.md (generated: do not edit by hand).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WAIMAI = (ROOT / ".." / "shared" / "data" / "waimai_10k.csv").resolve()
PY = sys.executable
SYSTEM_PROMPT = "你是一位外卖评论好评差评评论专家。"
LABELS = {"1": "好评", "0": "差评"}
SEED = 0

SHAPES = {
    # name: (create-tiny overrides, batch, steps, learning rate, stored dtype)
    "tiny": ({"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512}, 8, 24, 1e-3),
    "qwen2.5-0.5b": ({"config_from": str(ROOT / "bench" / "configs" / "qwen2.5-0.5b.json")}, 8, 6, 1e-3),
}
ABLATIONS = [  # (row name, engine options): each turns one technique off
    ("weitiao − LM head at labels only", {"lm_head_at_labels_only": False}),
    ("weitiao − length grouping", {"group_by_length": False}),
    ("weitiao − bf16 weights (fp32 base)", {"bf16": "off"}),
    ("weitiao + bf16 autocast (bf16: on)", {"bf16": "on"}),  # not a removal: bf16 compute, for the record
    ("weitiao + gradient checkpointing", {"gradient_checkpointing": True}),  # the memory-lean setting
]


def engine(command: str, request: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [PY, "-m", "weitiao_engine", command], input=json.dumps(request, ensure_ascii=False) + "\n", capture_output=True, text=True,
        cwd=ROOT / "engine", env={**os.environ, "PYTHONPATH": str(ROOT / "engine")},
    )  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0:
        raise SystemExit(f"engine {command} failed: {events[-1] if events else proc.stderr[-2000:]}")
    return events[-1]["data"]


def matmul_peak() -> dict[str, float]:
    """Measured GFLOP/s of a large square matmul in fp32 and bf16 (best of 5), all threads."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(5))
        out[name] = 2 * 2048**3 / best / 1e9
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def chat(row: dict[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["review"]}, {"role": "assistant", "content": LABELS[row["label"]]}]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def make_model(work: Path, name: str, overrides: dict[str, Any], corpus: Path) -> str:
    """A random-weight model of the shape; Qwen2.5-0.5B's is re-saved in bf16, as the real checkpoint ships."""
    path = work / name
    if not (path / "config.json").exists():
        engine("create-tiny", {"output_dir": str(path), "corpus_files": [str(corpus)], "vocab_size": 4096, "seed": SEED, **overrides})
        if "config_from" in overrides:
            import torch
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
            model.save_pretrained(path)
    return str(path)


def worker(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path = work / f"spec-{spec['name'].replace(' ', '_')}.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run([PY, str(ROOT / "bench" / "worker.py"), str(spec_path)], capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{spec['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[len("RESULT ") :])


def model_flops(model_dir: str) -> tuple[float, float]:
    """(FLOPs per real token, FLOPs per labelled token) of one LoRA training step: forward 2·N and the
    backward to the inputs 2·N over the frozen linear weights (no weight gradients but LoRA's, which are
    tiny); the LM head counted only where a label is, since that is all the loss needs; attention scores omitted."""
    cfg = json.loads(Path(model_dir, "config.json").read_text())
    h, i, layers, heads, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = h // heads
    per_layer = h * h + 2 * h * kv * head_dim + h * h + 3 * h * i
    return 4.0 * layers * per_layer, 4.0 * h * cfg["vocab_size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen2.5-0.5b,tiny")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if not WAIMAI.exists():
        raise SystemExit(f"{WAIMAI} not found: the benchmark trains on the waimai reviews / 找不到数据文件")
    import torch

    work = Path(os.environ.get("WEITIAO_BENCH_DIR", Path(tempfile.gettempdir()) / "weitiao-bench"))
    work.mkdir(parents=True, exist_ok=True)
    with WAIMAI.open(encoding="utf-8-sig", newline="") as f:
        rows = random.Random(SEED).sample(list(csv.DictReader(f)), 2000 + 128)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(r["review"] for r in rows[:2000]) + "\n", encoding="utf-8")
    valid = write_jsonl(work / "valid.jsonl", [chat(r) for r in rows[2000:]])

    peak = matmul_peak()
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s", flush=True)
    sections = []
    for shape in args.shapes.split(","):
        overrides, batch, steps, lr = SHAPES[shape]
        model = make_model(work, shape, overrides, corpus)
        train = write_jsonl(work / f"train-{shape}.jsonl", [chat(r) for r in rows[: batch * steps]])  # exactly one pass
        base = {"model": model, "train": train, "valid": valid, "batch_size": batch, "steps": steps, "learning_rate": lr, "seed": SEED}
        per_token, per_label = model_flops(model)
        results: list[tuple[str, dict[str, Any]]] = []
        plan = [("TRL SFTTrainer (baseline)", {"system": "trl"}), ("weitiao", {"system": "weitiao"})]
        if shape != "tiny":  # ablations on the shape that matters (time: each 0.5B run takes minutes)
            plan += [(name, {"system": "weitiao", "options": options}) for name, options in ABLATIONS]
        for name, extra in plan:  # baseline and engine alternate; the ablations follow
            spec = {**base, **extra, "name": f"{shape}-{name}", "out": str(work / "runs" / shape / name.replace(" ", "_"))}
            r = worker(spec, work)
            r["mfu"] = {k: (r["tokens_per_second"] * per_token + r["examples_per_second"] * 2 * per_label) / (v * 1e9) for k, v in peak.items()}
            r["epoch_seconds"] = len(rows[: batch * steps]) / r["examples_per_second"]
            results.append((name, r))
            print(f"[{shape}] {name}: {r['examples_per_second']:.2f} ex/s, {r['tokens_per_second']:.0f} tok/s, peak RSS "
                  f"{r['peak_rss'] / 2**20:.0f} MiB, valid loss {r['valid_loss']:.4f}", flush=True)  # fmt: skip
        sections.append((shape, batch, steps, lr, results))
        if shape == "tiny":
            scoring = worker({"system": "score", "name": "score", "model": model, "adapter": results[1][1]["adapter"], "valid": valid, "seed": SEED}, work)
            sections.append(("scoring", scoring))
        write_report(Path(args.out), peak, sections)  # after each shape, so a long run leaves its results early
    print(f"wrote {args.out}")


def write_report(path: Path, peak: dict[str, float], sections: list[Any]) -> None:
    import torch

    lines = [
        "# Benchmarks / 性能基准",
        "",
        "Generated by `make bench` (bench/run.py); do not edit by hand. / 由 `make bench` 生成，请勿手改。",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; measured matmul peak (2048², best of 5): "
        f"fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s. Other work may share the machine: compare ratios.",
        "",
        "Timing covers optimizer steps 2..N (step 1 warms up kernels); time per epoch is extrapolated from it to the "
        "training set of the run (one pass). Peak RSS is each run's own process (ru_maxrss right after training). "
        "Validation loss: the saved adapter of each system, evaluated by one fp32 evaluator on 128 held-out examples "
        "(answer + end-of-turn tokens). MFU = useful model FLOPs (4·N_linear per real token + 4·H·V per labelled token) "
        "/ time / measured matmul peak.",
        "",
    ]
    for section in sections:
        if section[0] == "scoring":
            s = section[1]
            lines += [
                "## Evaluation: batched label scoring vs a per-example generate loop (tiny shape, trained adapter)",
                "",
                "| method | examples | examples/s | speed-up |",
                "| --- | ---: | ---: | ---: |",
                f"| per-example greedy `generate` | {s['n']} | {s['generate_eps']:.1f} | 1.00× |",
                f"| batched label scoring (batch {s['batch_size']}) | {s['n']} | {s['score_eps']:.1f} | {s['score_eps'] / s['generate_eps']:.1f}× |",
                "",
                f"Predictions identical on {s['agree']}/{s['n']} examples.",
                "",
            ]
            continue
        shape, batch, steps, lr, results = section
        base = results[0][1]
        lines += [
            f"## {shape}: batch {batch}, {steps} steps, learning rate {lr}, {batch * steps} training examples (one pass)",
            "",
            "| system | examples/s | × baseline | real tokens/s | peak RSS MiB | × baseline | epoch s (extrapolated) | valid loss | Δ loss | MFU fp32 peak | MFU bf16 peak |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in results:
            lines.append(
                f"| {name} | {r['examples_per_second']:.2f} | {r['examples_per_second'] / base['examples_per_second']:.2f} | "
                f"{r['tokens_per_second']:.0f} | {r['peak_rss'] / 2**20:.0f} | {r['peak_rss'] / base['peak_rss']:.2f} | "
                f"{r['epoch_seconds']:.1f} | {r['valid_loss']:.4f} | {100 * (r['valid_loss'] / base['valid_loss'] - 1):+.2f}% | "
                f"{100 * r['mfu']['fp32']:.1f}% | {100 * r['mfu']['bf16']:.1f}% |"
            )
        engine_row = results[1][1]
        lines += ["", "Each technique's share (engine examples/s divided by the ablation row's):", ""]
        for name, r in results[2:]:
            if "− " not in name:
                lines.append(f"- {name.split('+ ')[1]} instead of the default: {r['examples_per_second'] / engine_row['examples_per_second']:.2f}× speed, "
                             f"{r['peak_rss'] / engine_row['peak_rss']:.2f}× memory")  # fmt: skip
                continue
            lines.append(f"- {name.split('− ')[1]}: {engine_row['examples_per_second'] / r['examples_per_second']:.2f}× speed, "
                         f"{r['peak_rss'] / engine_row['peak_rss']:.2f}× memory without it")  # fmt: skip
        lines += ["", f"Baseline settings (TRL defaults): `{json.dumps(base['settings'])}`.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
