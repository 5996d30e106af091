"""Where one training step's time goes (torch.profiler over the engine's own LoRA recipe), as shares.

    .venv/bin/python bench/profile_step.py --shape qwen2.5-0.5b            (the bench's 0.5B shape, random bf16 weights)
    .venv/bin/python bench/profile_step.py --shape tiny --batch 4
    .venv/bin/python bench/profile_step.py --compare-precision 5      (bf16 on vs off: one real layer's step and whole steps)
    .venv/bin/python bench/profile_step.py --compare packed-attention --rounds 7   (a recipe switch off vs on: whole steps)
    .venv/bin/python bench/profile_step.py --sources                  (also: which module/function each large op comes from)

Builds the shape as bench/run.py does (same work dir, reused), runs the recipe's setup with `bf16: auto` (the
precision probe decides), one warm-up step, then profiles `--steps` steps (forward, backward, AdamW). Each op's
self CPU time goes to one category; what no op covers (wall time minus the ops' self time) is Python and
dispatch between them. On a shared machine the absolute times are noise: read the shares.

--compare-precision N builds the recipe twice in one process (`bf16: on` and `off`) and times, in interleaved rounds,
(c) the first decoder layer's forward + backward as the recipe built it (LoRA, checkpointing, its real inputs from a
step) 4N times and (d) N whole steps; it prints the fp32/bf16 ratios (median, spread) and what the precision probe
decides for this run (`auto`), so a probe that disagrees with the real step shows at once. Ratios, not times.

--compare VARIANT builds the recipe twice in one process, with one of its switches (VARIANTS) off and on, and times
whole steps in interleaved rounds (which goes first alternates): off/on ratios of wall and of process CPU time
(which other processes' load disturbs less), median and spread, and the loss of the same batches each way (the
switches change speed, not what is computed).

--sources records Python stacks too and lists, for each op above 1% of the ops' time, where it is called from: the
first engine/transformers/PEFT frame, or in backward the autograd node, and whether in forward, in backward or in
checkpointing's recomputation.
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
    parser.add_argument("--compare-precision", type=int, default=0, metavar="ROUNDS", help="bf16 on vs off, interleaved rounds")
    parser.add_argument("--compare", choices=sorted(VARIANTS), help="a recipe switch off vs on, whole steps in interleaved rounds")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of --compare")
    parser.add_argument("--sources", action="store_true", help="attribute the largest ops to the code that calls them")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (the engine's default 0; the dropout switches of --compare need > 0)")
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
    n = args.batch * (max(args.steps, args.compare_precision, args.rounds if args.compare else 0) + 1)
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

    def request_for(bf16: str) -> TrainRequest:
        return TrainRequest.model_validate({
            "base_model": model, "output_dir": str(work / f"profile-run-{bf16}"), "training_file": train,
            "lora": {"r": 8, "alpha": 16, "dropout": args.lora_dropout, "target_modules": "all-linear"},
            "hyperparameters": {"n_epochs": 1, "batch_size": args.batch, "learning_rate": 1e-3, "seed": SEED, "bf16": bf16},
        })  # fmt: skip

    if args.compare_precision:
        compare_precision(request_for, args.batch, args.compare_precision)
        return
    if args.compare:
        compare_switch(request_for, args.batch, args.compare, args.rounds, args.bf16)
        return
    state = lora_finetune.setup(request_for(args.bf16))
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

    with profile(activities=[ProfilerActivity.CPU], with_stack=args.sources) as prof:
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
    if args.sources:
        print_sources(prof, total)


# --compare: a recipe switch (module, attribute) and what it is.
VARIANTS = {
    "packed-attention": ("weitiao_engine.training.packed_attention", "PACKED_ATTENTION", "packed rows' attention one sequence at a time, fp32"),
    "folded-dropout": ("weitiao_engine.training.lora_dropout", "FOLD_INTO_LORA_A", "LoRA dropout folded into lora_A (its 1/(1-p) on A's weights; off: LoraDropout before lora_A)"),
    "fast-dropout": ("weitiao_engine.training.lora", "FAST_LORA_DROPOUT", "geometric-mask LoRA dropout (off: nn.Dropout)"),
    "lean-lora-forward": ("weitiao_engine.training.lora_forward", "LEAN_LORA_FORWARD", "plain LoRA as one addmm over the base output"),
    "silu-mul": ("weitiao_engine.training.fused_ops", "SILU_MUL", "SwiGLU keeping gate and up only (silu recomputed in backward)"),
    "fused-projections": ("weitiao_engine.training.fused_projections", "FUSE_PROJECTIONS", "q/k/v and gate/up as one matmul each"),
}


def compare_switch(request_for, batch: int, variant: str, rounds: int, bf16: str) -> None:
    """Whole steps with the switch off over on, in interleaved rounds (module docstring)."""
    import importlib
    import statistics

    import torch

    from run import SEED
    from weitiao_engine import distributed
    from weitiao_engine.recipes import lora_finetune
    from weitiao_engine.training import batching
    from weitiao_engine.training.sft import sft_step
    from weitiao_engine.training.step_metrics import Throughput

    module_name, attribute, what = VARIANTS[variant]
    module = importlib.import_module(module_name)
    states = {}
    for value in (True, False):  # the switch is read while the recipe sets the model up
        setattr(module, attribute, value)
        states[value] = lora_finetune.setup(request_for(bf16))
    setattr(module, attribute, True)
    lengths = [len(e.input_ids) for e in states[True].train_data]
    batches = batching.epoch_batches(SEED, 0, lengths, batch, False)
    calls = {v: distributed.data_parallel(s.model) for v, s in states.items()}
    params = {v: [p for p in s.model.parameters() if p.requires_grad] for v, s in states.items()}
    losses: dict[bool, list[float]] = {True: [], False: []}

    def step(v: bool, indices: list[int], seed: int) -> None:
        s = states[v]
        torch.manual_seed(seed)  # the same dropout masks both ways (one generator serves both models)
        sft_step(s, calls[v], [s.train_data[i] for i in indices], params[v], Throughput())
        losses[v].append(s.train_loss)

    print(f"{variant}: {what}; precision {states[True].precision}, checkpointing {states[True].checkpointing}, packed {states[True].packed}")
    for v in states:  # warm-up
        step(v, batches[0], SEED)
    found, cpu_found = [], []
    for r in range(rounds):
        indices, seconds, cpu = batches[1 + r % (len(batches) - 1)], {}, {}
        for v in (False, True) if r % 2 == 0 else (True, False):
            start, cpu_start = time.perf_counter(), time.process_time()
            step(v, indices, SEED + 1 + r)
            seconds[v], cpu[v] = time.perf_counter() - start, time.process_time() - cpu_start
        found.append(seconds[False] / seconds[True])
        cpu_found.append(cpu[False] / cpu[True])
        print(f"  round {r + 1}: off {seconds[False]:.2f} s (CPU {cpu[False]:.2f} s), on {seconds[True]:.2f} s (CPU {cpu[True]:.2f} s)", flush=True)
    for name, ratios in (("wall time", found), ("CPU time (less sensitive to other processes)", cpu_found)):
        ratios.sort()
        print(f"whole steps, off/on {name}: median {statistics.median(ratios):.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f}, n {len(ratios)})")
    drift = max(abs(a - b) / abs(b) for a, b in zip(losses[True], losses[False]))
    print(f"training loss, same batches and masks: on {losses[True][-1]:.4f}, off {losses[False][-1]:.4f} after {len(losses[True])} steps;"
          f" largest relative difference of a step's loss {100 * drift:.3f}%")


def print_sources(prof, total: float) -> None:
    """For each op above 1% of the ops' self time: its share by (phase, first engine/transformers/PEFT frame or
    autograd node). Phases: fwd, bwd, recompute (gradient checkpointing's second forward)."""
    import re
    from collections import Counter, defaultdict

    frame = re.compile(r"(weitiao_engine/[^ ]*|(transformers|peft)/[^ ]*)\.py\(\d+\): \w+")
    by_op: Counter = Counter()
    where: dict[str, Counter] = defaultdict(Counter)
    for event in prof.events():
        if not event.name.startswith("aten::") or event.self_cpu_time_total <= 0:
            continue
        phase, source, parent = "fwd", None, event.cpu_parent
        while parent is not None:
            name = parent.name
            if "checkpoint.py" in name and ("recompute" in name or "unpack" in name):
                phase = "recompute"
            if name.startswith("autograd::engine::evaluate_function:"):
                phase = "recompute" if phase == "recompute" else "bwd"
                source = source or name.split(": ", 1)[1]
                break
            match = frame.search(name)
            if match and source is None:
                source = match.group(0).split("site-packages/")[-1]
            parent = parent.cpu_parent
        by_op[event.name] += event.self_cpu_time_total
        where[event.name][f"{phase:9s} {source or '?'}"] += event.self_cpu_time_total
    ops = sum(by_op.values())
    print("\nwhere the largest ops come from (% of the ops' self time; phase, caller):")
    for name, t in by_op.most_common():
        if t < 0.01 * ops:
            break
        print(f"  {name:40s} {100 * t / ops:5.1f}%")
        for place, tt in where[name].most_common(4):
            if tt >= 0.002 * ops:
                print(f"      {100 * tt / ops:5.1f}%  {place}")


def compare_precision(request_for, batch: int, rounds: int) -> None:
    """(c) one real decoder layer's step and (d) whole steps, `bf16: off` over `on`, in interleaved rounds (module docstring)."""
    import statistics

    from run import SEED
    from weitiao_engine import distributed
    from weitiao_engine.recipes import lora_finetune
    from weitiao_engine.training import batching, precision, precision_probe
    from weitiao_engine.training.sft import sft_step
    from weitiao_engine.training.step_metrics import Throughput

    states = {b: lora_finetune.setup(request_for(b)) for b in ("on", "off")}
    lengths = [len(e.input_ids) for e in states["on"].train_data]
    batches = batching.epoch_batches(SEED, 0, lengths, batch, False)
    calls = {b: distributed.data_parallel(s.model) for b, s in states.items()}
    params = {b: [p for p in s.model.parameters() if p.requires_grad] for b, s in states.items()}
    meter, inputs = Throughput(), {}

    def step(b: str, indices: list[int]) -> None:
        s = states[b]
        sft_step(s, calls[b], [s.train_data[i] for i in indices], params[b], meter)

    def layer0(b: str):
        return states[b].model.get_base_model().get_decoder().layers[0]

    for b in states:  # warm-up step; it also records what the first layer is called with
        hook = layer0(b).register_forward_pre_hook(lambda _m, a, k, b=b: inputs.setdefault(b, (a, k)), with_kwargs=True)
        step(b, batches[0])
        hook.remove()

    def layer_step(b: str) -> None:
        args, kwargs = inputs[b]
        kwargs = dict(kwargs)
        hidden = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach().requires_grad_(True)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"], args = hidden, ()
        else:
            args = (hidden, *args[1:])
        with precision.autocast(states[b]):
            out = layer0(b)(*args, **kwargs)
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()
        states[b].model.zero_grad(set_to_none=True)

    def ratios(fn, n: int, arg=lambda r: ()) -> list[float]:
        found = []
        for r in range(n):
            seconds = {}
            for b in ("off", "on") if r % 2 == 0 else ("on", "off"):  # alternate which goes first
                start = time.perf_counter()
                fn(b, *arg(r))
                seconds[b] = time.perf_counter() - start
            found.append(seconds["off"] / seconds["on"])
        return sorted(found)

    def show(name: str, found: list[float]) -> None:
        print(f"{name}: fp32/bf16 median {statistics.median(found):.2f} (min {found[0]:.2f}, max {found[-1]:.2f}, n {len(found)})", flush=True)

    tokens = [sum(lengths[i] for i in b) for b in batches]
    print(f"tokens per micro-batch: median {statistics.median(tokens):.0f}; checkpointing {states['on'].checkpointing}, packed {states['on'].packed}")
    [layer_step(b) for b in states]
    args, kwargs = inputs["on"]
    shape = tuple((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape)
    show(f"(c) the first decoder layer as built, hidden states {shape}", ratios(layer_step, 4 * rounds))
    show("(d) whole training steps", ratios(step, rounds, lambda r: (batches[1 + r % (len(batches) - 1)],)))
    request = request_for("auto")
    config = states["on"].model.get_base_model().config
    choice = precision_probe.choose("auto", config, True, tokens=precision.micro_batch_tokens(request), lora_rank=request.lora.r)
    print(precision_probe.describe(choice))


if __name__ == "__main__":
    main()
