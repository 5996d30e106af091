"""Side-by-side speed benchmark: TRL's SFTTrainer + PEFT LoRA vs the weitiao engine, on the same machine.

    make bench            (= .venv/bin/pip install -r bench/requirements.txt && .venv/bin/python bench/run.py)
    .venv/bin/python bench/run.py --shapes tiny                  (the tiny shape only, a few minutes)
    .venv/bin/python bench/run.py --shapes qwen2.5-0.5b --rows baseline,weitiao --out /tmp/b.md   (some rows only)

Workload: waimai reviews as chat examples (system, review, 好评/差评), LoRA r=8 alpha=16 dropout=0.05 on
all linear layers, the same learning rate, global batch, examples and steps for both systems, and the same
optimisation (bench/worker.py pins the label tokens, the batches and their order, and the LoRA init; TRL's
optimizer defaults equal the engine's). Shapes: a tiny Qwen2 (2 layers, 128 wide, vocab 4096) and
Qwen2.5-0.5B's shape (bench/configs/qwen2.5-0.5b.json) with random weights stored in bf16 like the real
checkpoint. Every run is its own subprocess (bench/worker.py), baseline then engine; then one ablation row
per technique the engine's default run used (each turned off alone), TRL on the engine's allocator for
reference, the best fixed precision (`bf16` on and off, whichever is faster: a wrong `auto` shows at once), then
label scoring against a per-example generate loop. Writes BENCHMARKS.md (generated: do not edit by hand) after every row.
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
    # name: (create-tiny overrides, batch, steps, learning rate, examples scored against the generate loop)
    "tiny": ({"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512}, 8, 24, 1e-3, 128),
    "qwen2.5-0.5b": ({"config_from": str(ROOT / "bench" / "configs" / "qwen2.5-0.5b.json")}, 8, 6, 1e-3, 48),
}


def ablations(used: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One row per technique the engine's default run used (its reported settings), turned off alone:
    (name, engine options), or spec keys for what is not an engine option (the allocator)."""
    rows: list[tuple[str, dict[str, Any]]] = [("weitiao − LM head at labels only", {"lm_head_at_labels_only": False})]
    if used.get("packed") is True:
        rows.append(("weitiao − padding-free packing (padded batches)", {"packing": False}))
        rows.append(("weitiao − per-sequence attention of packed rows (SDPA with a block mask)", {"packed_attention": False}))
        rows.append(("weitiao − packed rows rounded to a multiple of 8 tokens", {"row_multiple": 1}))
    rows.append(("weitiao − one-addmm LoRA forward (PEFT's forward)", {"lean_lora_forward": False}))
    rows.append(("weitiao − q/k/v and gate/up as one matmul each (separate linears)", {"fused_projections": False}))
    rows.append(("weitiao − SwiGLU keeping gate and up only (autograd keeps silu(gate) too)", {"silu_mul": False}))
    if used.get("lora_dropout") is True:
        rows.append(("weitiao − geometric LoRA dropout mask (nn.Dropout)", {"fast_lora_dropout": False}))
    if used.get("precision") in ("bf16", "bf16-weights"):
        rows.append((f"weitiao − {used['precision']} (fp32 weights and compute)", {"bf16": "off"}))
    if used.get("gradient_checkpointing") == "selective":
        rows.append(("weitiao − selective checkpointing (full)", {"selective_checkpointing": False}))
    if used.get("gradient_checkpointing") in ("selective", "full"):
        rows.append(("weitiao − gradient checkpointing", {"gradient_checkpointing": False}))
    if used.get("group_by_length") is True:
        rows.append(("weitiao − length grouping", {"group_by_length": False}))
    rows = [(name, {"options": options}) for name, options in rows]
    if used.get("allocator") == "tcmalloc":
        rows.append(("weitiao − tcmalloc (glibc malloc)", {"malloc": "system"}))
    return rows


def engine(command: str, request: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [PY, "-m", "weitiao_engine", command], input=json.dumps(request, ensure_ascii=False) + "\n", capture_output=True, text=True,
        cwd=ROOT / "engine", env={**os.environ, "PYTHONPATH": str(ROOT / "engine")},
    )  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0:
        raise SystemExit(f"engine {command} failed: {events[-1] if events else proc.stderr[-2000:]}")
    return events[-1]["data"]


def matmul_peak(model_dirs: list[str]) -> dict[str, float]:
    """Best measured GFLOP/s per dtype (fp32, bf16) over square matmuls and the models' own linear shapes
    (512 tokens x hidden -> intermediate and back), best of 5 each, all threads the engine uses."""
    import torch

    sys.path.insert(0, str(ROOT / "engine"))
    from weitiao_engine.loading import set_threads

    set_threads()
    shapes = [(n, n, n) for n in (1024, 2048, 3072)]
    for d in model_dirs:
        cfg = json.loads(Path(d, "config.json").read_text())
        shapes += [(512, cfg["hidden_size"], cfg["intermediate_size"]), (512, cfg["intermediate_size"], cfg["hidden_size"])]
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for m, k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b
            seconds = min(_timed(lambda: a @ b) for _ in range(5))
            best = max(best, 2 * m * k * n / seconds / 1e9)
        out[name] = best
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


def make_adapters(work: Path, model_dir: str, n: int) -> list[str]:
    """n LoRA adapters of the base (r 8 on every linear layer, random A and B so each really changes the
    model), saved as PEFT folders like a fine-tune's: what the serving row serves side by side."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = [work / f"{Path(model_dir).name}-lora-{i}" for i in range(n)]
    for i, out in enumerate(dirs):
        if (out / "adapter_config.json").exists():
            continue
        torch.manual_seed(SEED + i)
        config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
        get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), config).save_pretrained(out)
    return [str(d) for d in dirs]


def serving(work: Path, model_dir: str, requests: int, max_tokens: int, adapters: int) -> dict[str, Any]:
    """bench/serve_bench.ts: streamed concurrent chat requests, llama.cpp (q8_0) vs the engine's warm process."""
    cmd = ["node", "--import", "tsx", str(ROOT / "bench" / "serve_bench.ts"), "--model", model_dir, "--work", str(work / "serving"),
           "--requests", str(requests), "--max-tokens", str(max_tokens), "--adapters", ",".join(make_adapters(work, model_dir, adapters))]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"serving benchmark failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(line[len("RESULT ") :]), "requests": requests, "max_tokens": max_tokens, "adapters": adapters}


def model_flops(model_dir: str) -> tuple[float, float]:
    """(FLOPs per real token, FLOPs per labelled token) of one LoRA training step, useful work only.

    Per real token: forward 2·N and backward to the inputs 2·N over the frozen linear weights (no weight
    gradients but LoRA's); a recomputed forward (gradient checkpointing) and padding are not useful work
    and are not counted. Per labelled token: the LM head's 2·H·V forward and 2·H·V backward, since that is
    all the loss needs. Left out as small at these lengths: attention scores (4·seq·H per token and layer,
    under 1 % at ~60 tokens) and the rank-8 LoRA matmuls (about 2 %)."""
    cfg = json.loads(Path(model_dir, "config.json").read_text())
    h, i, layers, heads, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    per_layer = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * i
    return 4.0 * layers * per_layer, 4.0 * h * cfg["vocab_size"]


def labelled_tokens(model_dir: str, train: str) -> int:
    """The labelled tokens of the training file, as the engine (and, pinned, TRL) labels them."""
    sys.path.insert(0, str(ROOT / "engine"))
    from transformers import AutoTokenizer
    from weitiao_engine.chat_format import tokenize_examples
    from weitiao_engine.training.data import load_examples

    examples, _ = tokenize_examples(AutoTokenizer.from_pretrained(model_dir), load_examples(train, "training_file"))
    return sum(e.n_trained for e in examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen2.5-0.5b,tiny")
    parser.add_argument("--rows", default="", help="comma-separated rows to run: baseline, weitiao, ablations, precision, scoring, serving (default: all)")
    parser.add_argument("--serving-requests", type=int, default=16, help="serving row: concurrent streamed requests")
    parser.add_argument("--serving-max-tokens", type=int, default=64, help="serving row: max_tokens of every request")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    wanted = set(filter(None, args.rows.split(","))) or {"baseline", "weitiao", "ablations", "precision", "scoring", "serving"}
    if not WAIMAI.exists():
        raise SystemExit(f"{WAIMAI} not found: the benchmark trains on the waimai reviews / 找不到数据文件")

    work = Path(os.environ.get("WEITIAO_BENCH_DIR", Path(tempfile.gettempdir()) / "weitiao-bench"))
    work.mkdir(parents=True, exist_ok=True)
    with WAIMAI.open(encoding="utf-8-sig", newline="") as f:
        rows = random.Random(SEED).sample(list(csv.DictReader(f)), 2000 + 128)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(r["review"] for r in rows[:2000]) + "\n", encoding="utf-8")
    valid = write_jsonl(work / "valid.jsonl", [chat(r) for r in rows[2000:]])
    shapes = args.shapes.split(",")
    models = {shape: make_model(work, shape, SHAPES[shape][0], corpus) for shape in shapes}

    # The peak before and after the runs, the higher kept: a busy moment must not inflate MFU.
    peak = matmul_peak(list(models.values()))
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s", flush=True)
    sections: list[Any] = []
    for shape in shapes:
        overrides, batch, steps, lr, n_scored = SHAPES[shape]
        model = models[shape]
        train = write_jsonl(work / f"train-{shape}.jsonl", [chat(r) for r in rows[: batch * steps]])  # exactly one pass
        base = {"model": model, "train": train, "valid": valid, "batch_size": batch, "steps": steps, "learning_rate": lr, "seed": SEED}
        per_token, per_label = model_flops(model)
        labels_per_example = labelled_tokens(model, train) / (batch * steps)
        results: list[tuple[str, dict[str, Any]]] = []
        section = {"shape": shape, "batch": batch, "steps": steps, "lr": lr, "results": results, "scoring": None, "serving": None, "best_fixed": None}
        sections.append(section)

        def run(name: str, extra: dict[str, Any]) -> dict[str, Any]:
            spec = {**base, **extra, "name": f"{shape}-{name}", "out": str(work / "runs" / shape / name.replace(" ", "_"))}
            r = worker(spec, work)
            r["flops_per_second"] = r["tokens_per_second"] * per_token + r["examples_per_second"] * labels_per_example * per_label
            r["epoch_seconds"] = batch * steps / r["examples_per_second"]
            results.append((name, r))
            print(f"[{shape}] {name}: {r['examples_per_second']:.2f} ex/s, {r['tokens_per_second']:.0f} tok/s, peak RSS "
                  f"{r['peak_rss'] / 2**20:.0f} MiB, valid loss {r['valid_loss']:.4f}, train losses {[round(x, 4) for x in r['losses']]}", flush=True)  # fmt: skip
            write_report(Path(args.out), peak, sections)  # after every row, so a long run leaves its results early
            return r

        if "baseline" in wanted:  # TRL as its users run it: on glibc's malloc
            run("TRL SFTTrainer (baseline)", {"system": "trl", "malloc": "system"})
        default = run("weitiao", {"system": "weitiao"}) if wanted & {"weitiao", "ablations", "precision", "scoring"} else None
        if default is not None and "ablations" in wanted and shape != "tiny":  # the shape that matters; each 0.5B run takes minutes
            for name, extra in ablations(default["settings"]):
                run(name, {"system": "weitiao", **extra})
            if "baseline" in wanted and default["settings"].get("allocator") == "tcmalloc":
                # Not the baseline: what the allocator alone does for TRL, so the engine's own share is plain to see.
                run("TRL SFTTrainer + tcmalloc (for reference)", {"system": "trl"})
        if default is not None and "precision" in wanted:
            section["best_fixed"] = best_fixed_precision(default, results, run)
            name, best = section["best_fixed"]
            print(f"[{shape}] best fixed precision: {name}; auto ({default['settings']['precision']}) at "
                  f"{default['examples_per_second'] / best['examples_per_second']:.2f}x its speed", flush=True)  # fmt: skip
            write_report(Path(args.out), peak, sections)
        if default is not None and "scoring" in wanted:
            spec = {"system": "score", "name": f"{shape}-score", "model": model, "adapter": default["adapter"], "valid": valid, "seed": SEED, "n": n_scored}
            section["scoring"] = worker(spec, work)
            s = section["scoring"]
            print(f"[{shape}] scoring: {s['score_eps']:.1f} ex/s vs generate loop {s['generate_eps']:.1f} ex/s "
                  f"({s['score_eps'] / s['generate_eps']:.1f}x), {s['agree']}/{s['n']} identical", flush=True)  # fmt: skip
        if "serving" in wanted:
            section["serving"] = serving(work, model, args.serving_requests, args.serving_max_tokens, adapters=4)
            for row in section["serving"]["rows"]:
                print(f"[{shape}] serving, {row['name']}: {row['requests_per_second']:.2f} req/s, {row['output_tokens_per_second']:.1f} output tok/s, "
                      f"p50/p95 latency {row['p50_latency']:.2f}/{row['p95_latency']:.2f} s, TTFT p50 {row['p50_ttft']:.2f} s", flush=True)  # fmt: skip
        write_report(Path(args.out), peak, sections)
    after = matmul_peak(list(models.values()))
    peak.update({k: max(v, after[k]) for k, v in peak.items()})
    write_report(Path(args.out), peak, sections)
    print(f"matmul peak after the runs: fp32 {after['fp32']:.1f}, bf16 {after['bf16']:.1f} GFLOP/s; wrote {args.out}")


def best_fixed_precision(default: dict[str, Any], results: list[tuple[str, dict[str, Any]]], run) -> tuple[str, dict[str, Any]]:
    """The faster of `bf16: on` and `bf16: off` as (row name, result): a run already made with that precision is reused
    (the default when `auto` chose it, the bf16 ablation), else one run each. `off` keeps fp32 weights (no bf16-weights)."""
    runs = {}
    for setting, precision in (("on", "bf16"), ("off", "fp32")):
        same = [(n, r) for n, r in results if n.startswith("weitiao") and r["settings"].get("precision") == precision]
        runs[setting] = same[0] if same else (f"weitiao, bf16: {setting} (fixed)", run(f"weitiao, bf16: {setting} (fixed)", {"system": "weitiao", "options": {"bf16": setting}}))
    return max(runs.values(), key=lambda nr: nr[1]["examples_per_second"])


def machine_line() -> str:
    """The CPU model and the flags that decide bf16 speed, as the engine's precision probe reads them."""
    sys.path.insert(0, str(ROOT / "engine"))
    from weitiao_engine.training import precision_probe

    flags = sorted(f for f in precision_probe.cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "bf16"))
    return f"CPU {precision_probe.cpu_model()}, flags {' '.join(flags) or '(none of avx2/avx512f/avx512_bf16/amx_bf16)'}"


def write_report(path: Path, peak: dict[str, float], sections: list[dict[str, Any]]) -> None:
    import torch

    lines = [
        "# Benchmarks / 性能基准",
        "",
        "Generated by `make bench` (bench/run.py); do not edit by hand. / 由 `make bench` 生成，请勿手改。",
        "",
        f"Machine: {machine_line()}; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; matmul peak (best over square 1024–3072 and the models' "
        f"own linear shapes, best of 5, measured before and after the runs): fp32 {peak['fp32']:.1f} GFLOP/s, bf16 "
        f"{peak['bf16']:.1f} GFLOP/s. Other work may share the machine: compare ratios.",
        "",
        "Timing covers optimizer steps 2..N (step 1 warms up kernels); time per epoch is extrapolated from it to the "
        "training set of the run (one pass). Peak RSS is each run's own process (ru_maxrss right after training). "
        "Validation loss: the saved adapter of each system, evaluated by one fp32 evaluator on 128 held-out examples "
        "(answer + end-of-turn tokens). MFU = useful model FLOPs (4·N_linear per real token + 4·H·V per labelled token; "
        "no recomputation, no padding) / time / measured matmul peak.",
        "",
        "Same optimisation in both systems (bench/worker.py): TRL gets the engine's tokens and label mask (answer + "
        "`<|im_end|>`; its own prompt-completion tokenization would also train the template's `\\n` after it), the "
        "engine's batches in the engine's order (sequential sampler), and LoRA A matrices from the same seed; the "
        "optimizer settings below are TRL's defaults and equal the engine's. TRL keeps its speed defaults (bf16 "
        "autocast, gradient checkpointing, padding, chunked cross-entropy) and runs on glibc's malloc, as its users run it; "
        "the engine preloads tcmalloc when the machine has it (engine/weitiao_engine/allocator.py), and the row \"TRL "
        "SFTTrainer + tcmalloc\" shows what that allocator alone does for TRL. With LoRA B = 0 the two step-1 losses "
        "must agree (up to bf16 rounding).",
        "",
    ]
    for section in sections:
        shape, batch, steps, lr, results = section["shape"], section["batch"], section["steps"], section["lr"], section["results"]
        if results:
            lines += _training_table(shape, batch, steps, lr, results, peak, section.get("best_fixed"))
        s = section["scoring"]
        if s:
            lines += [
                f"### {shape}: label scoring vs a per-example generate loop (the engine's trained adapter)",
                "",
                "| method | examples | examples/s | speed-up |",
                "| --- | ---: | ---: | ---: |",
                f"| greedy `generate`, one example at a time (max_new_tokens {s['max_new_tokens']}) | {s['n']} | {s['generate_eps']:.2f} | 1.00× |",
                f"| batched label scoring (batch {s['batch_size']}, shared prefix, one pass per batch) | {s['n']} | {s['score_eps']:.2f} | "
                f"{s['score_eps'] / s['generate_eps']:.1f}× |",
                "",
                f"Predictions identical on {s['agree']}/{s['n']} examples; {s['generated_labels']}/{s['n']} generated answers are a label; "
                f"predicted classes (scoring): {json.dumps(s.get('predicted', {}), ensure_ascii=False)}. Both timed end to end "
                "(prompt rendering and tokenization included).",
                "",
            ]
        if section.get("serving"):
            lines += _serving_table(shape, section["serving"])
    path.write_text("\n".join(lines), encoding="utf-8")


def _serving_table(shape: str, serving: dict[str, Any]) -> list[str]:
    """Rows in pairs: the engine's warm process, then llama.cpp on the same requests (the ratio's baseline)."""
    lines = [
        f"### {shape}: serving {serving['requests']} concurrent streamed chat requests (max_tokens {serving['max_tokens']}, greedy)",
        "",
        "| backend | req/s | output tok/s | × engine | mean output tokens | p50 latency s | p95 latency s | p50 TTFT s | p95 TTFT s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = serving["rows"]
    for i, r in enumerate(rows):
        base = rows[i - i % 2]
        lines.append(
            f"| {r['name']} | {r['requests_per_second']:.2f} | {r['output_tokens_per_second']:.1f} | "
            f"{r['output_tokens_per_second'] / base['output_tokens_per_second']:.2f}× | {r['mean_output_tokens']:.1f} | "
            f"{r['p50_latency']:.2f} | {r['p95_latency']:.2f} | {r['p50_ttft']:.2f} | {r['p95_ttft']:.2f} |"
        )
    return lines + [
        "",
        "Through `weitiao serve` on 127.0.0.1 with the openai SDK streaming (bench/serve_bench.ts): the engine's warm process "
        "answers one request at a time; llama.cpp (node-llama-cpp in the server process, the engine's q8_0 GGUF export) decodes "
        "the requests' sequences together in one context. Adapters: 4 random LoRA adapters (r 8, every linear layer) of the same "
        "base, requests spread evenly; the engine switches adapters per request, llama.cpp runs one context per adapter over the one "
        "loaded base. Targets: ≥ 5× output tokens/s at ≤ the engine's p50 latency; ≥ 3× with 4 adapters.",
        "",
    ]


def _training_table(shape: str, batch: int, steps: int, lr: float, results: list[tuple[str, dict[str, Any]]], peak: dict[str, float],
                    best_fixed: tuple[str, dict[str, Any]] | None = None) -> list[str]:
    names = [n for n, _ in results]
    base = results[0][1] if names[0].startswith("TRL") else None
    lines = [
        f"## {shape}: batch {batch}, {steps} steps, learning rate {lr}, {batch * steps} training examples (one pass)",
        "",
        "| system | examples/s | × baseline | real tokens/s | peak RSS MiB | × baseline | epoch s (extrapolated) | valid loss | Δ loss | MFU fp32 peak | MFU bf16 peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = list(results) + ([(f"best fixed precision = {best_fixed[0]}", best_fixed[1])] if best_fixed else [])
    for name, r in rows:
        rel = (lambda key: f"{r[key] / base[key]:.2f}") if base else (lambda key: "")
        delta = f"{100 * (r['valid_loss'] / base['valid_loss'] - 1):+.2f}%" if base else ""
        lines.append(
            f"| {name} | {r['examples_per_second']:.2f} | {rel('examples_per_second')} | {r['tokens_per_second']:.0f} | "
            f"{r['peak_rss'] / 2**20:.0f} | {rel('peak_rss')} | {r['epoch_seconds']:.1f} | {r['valid_loss']:.4f} | {delta} | "
            f"{100 * r['flops_per_second'] / (peak['fp32'] * 1e9):.1f}% | {100 * r['flops_per_second'] / (peak['bf16'] * 1e9):.1f}% |"
        )
    lines += ["", "Train loss per step:", ""]
    for name, r in results[:2]:
        lines.append(f"- {name}: {', '.join(f'{x:.4f}' for x in r['losses'])}")
    engine = dict(results).get("weitiao")
    ablated = [(n, r) for n, r in results if n.startswith("weitiao − ")]
    if engine and ablated:
        lines += ["", "Each technique's measured share (the engine's default run against the run without that technique alone):", ""]
        for name, r in ablated:
            lines.append(f"- {name.split(' − ', 1)[1]}: {engine['examples_per_second'] / r['examples_per_second']:.2f}× speed, "
                         f"{engine['peak_rss'] / r['peak_rss']:.2f}× peak memory, valid loss {r['valid_loss']:.4f}")  # fmt: skip
    if engine:
        lines += ["", f"Engine settings (its defaults on this machine): `{json.dumps(engine['settings'])}`."]
        choice = engine.get("precision_choice") or {}
        figures = choice.get("figures")
        if figures:
            rates = ", ".join(f"{v} {g:.1f}" for v, g in figures["gflops"].items())
            lines += ["", f"Chosen precision (`bf16: auto`): **{choice['precision']}** — {choice.get('reason', choice['source'])}. Probe "
                      f"(the model's {len(figures['shapes'])} linear shapes × {figures['tokens']} tokens, forward + input gradient"
                      f"{', cached' if figures.get('cached') else ''}): GFLOP/s {rates} on {figures['threads']} threads."]  # fmt: skip
    if engine and best_fixed:
        ratio = engine["examples_per_second"] / best_fixed[1]["examples_per_second"]
        lines += ["", f"`auto` runs at {ratio:.2f}× the best fixed precision ({best_fixed[0]}){'' if ratio >= 0.95 else ' — more than 5% slower: `auto` chose wrong here'}."]
    if base:
        lines += ["", f"Baseline settings (TRL defaults; pinned to the engine's: {', '.join(base.get('pinned', []))}): `{json.dumps(base['settings'])}`."]
    return lines + [""]


if __name__ == "__main__":
    main()
