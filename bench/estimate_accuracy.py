"""How close `weitiao estimate` comes to the measured peak memory of a real `train` run.

    .venv/bin/python bench/estimate_accuracy.py [MODEL_DIR] [TRAIN_JSONL]
    WEITIAO_BENCH_THREADS=1 .venv/bin/python bench/estimate_accuracy.py …   (default: the engine's own thread count)

Defaults: builds the tiny model (2 layers, 64 wide) and 64 waimai examples in a temp dir. For each method
(lora, qlora) it prints the estimate, the peak RSS of a whole-epoch `train` subprocess (wait4's ru_maxrss,
the kernel's high-water mark) and their ratio; the issue's target is within 25 %.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE_DIR = ROOT / "engine"
ENV = {**os.environ, "PYTHONPATH": str(ENGINE_DIR), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def engine(command: str, request: dict) -> tuple[int, dict]:
    """Runs one engine command; (peak RSS in bytes, result data)."""
    proc = subprocess.Popen([sys.executable, "-m", "weitiao_engine", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ENGINE_DIR, env=ENV)  # fmt: skip
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.close()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    last = json.loads(out.strip().splitlines()[-1])
    if os.waitstatus_to_exitcode(status) != 0 or last["type"] != "result":
        raise SystemExit(f"{command} failed: {last}")
    return usage.ru_maxrss * 1024, last["data"]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="weitiao-estimate-"))
    waimai = ROOT.parent / "shared" / "data" / "waimai_10k.csv"
    model = sys.argv[1] if len(sys.argv) > 1 else None
    train = sys.argv[2] if len(sys.argv) > 2 else None
    if model is None:
        _, made = engine("create-tiny", {"output_dir": str(tmp / "tiny"), "corpus_files": [str(waimai)], "hidden_size": 64,
                                          "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 1024})  # fmt: skip
        model = made["path"]
    if train is None:
        with open(waimai, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        rows = rows[:32] + rows[-32:]  # both labels: the file lists every 好评 first
        train = str(tmp / "train.jsonl")
        with open(train, "w", encoding="utf-8") as f:
            for r in rows:
                answer = "好评" if r["label"] == "1" else "差评"
                msgs = [{"role": "system", "content": "你是一位外卖评论好评差评评论专家。"}, {"role": "user", "content": r["review"]},
                        {"role": "assistant", "content": answer}]  # fmt: skip
                f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    # The engine's own thread count unless told: per-thread allocator arenas and kernel scratch are part of the peak.
    threads = int(os.environ["WEITIAO_BENCH_THREADS"]) if os.environ.get("WEITIAO_BENCH_THREADS") else None
    print(f"{'method':8} {'estimate MB':>12} {'measured MB':>12} {'ratio':>6}   (threads: {threads or 'engine default'})")
    for method in ("lora", "qlora"):
        _, est = engine("estimate", {"base_model": model, "training_file": train, "method": method, "batch_size": 16,
                                     "max_seq_length": 256, "threads": threads})  # fmt: skip
        peak, _ = engine("train", {"base_model": model, "output_dir": str(tmp / f"job-{method}"), "training_file": train, "method": method,
                                   "hyperparameters": {"n_epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_seq_length": 256},
                                   "threads": threads})  # fmt: skip
        e = est["peak_memory_bytes"]
        print(f"{method:8} {e / 2**20:12.1f} {peak / 2**20:12.1f} {e / peak:6.2f}")


if __name__ == "__main__":
    main()
