"""`bf16: auto` on a CPU, decided by measurement: the model's own linear shapes timed in fp32, bf16 and
bf16-stored weights upcast for fp32 compute (and fp16 where the hardware has it, for the record), well under a
second, once per machine: the figures are cached in `<cache>/precision-probe.json`, keyed by CPU model, a hash of
its flags, torch version, thread count and the shape set. (CPU flags alone chose wrong: torch's bf16 GEMM on
AVX512-BF16 without AMX measured 0.6x fp32 on one machine and ~4x on another, issue 17.)

A frozen base's training step is, per linear, y = x·Wᵀ forward and dx = dy·W backward (no weight gradient), so
the probe times exactly those two products at PROBE_TOKENS rows per shape (the estimate's matmul rate); and since
bf16 autocast changes every op of the step, not only the matmuls, the decision is taken on one decoder layer of
the model (random weights) run forward and backward in each variant. Full fine-tuning (`full=True`) times that
layer as it trains there instead: fp32 weights with their gradients, in fp32 and under bf16 autocast (which
casts every weight each call).

    choice = choose("auto", config, bf16_checkpoint=True)   # {"precision": "bf16", "figures": {...}, ...}
    choice = choose("auto", config, False, full=True)       # every weight trains: "bf16" (autocast) or "fp32"
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

PROBE_TOKENS = 128  # rows per product: a micro-batch's order of tokens, small enough for a sub-second probe
PROBE_SECONDS = 0.05  # timing budget per variant after a warm-up call each (linear products, then one layer: about a second)
BF16_MARGIN = 1.15  # without native bf16 matmuls, bf16 compute only when the probe shows it this much faster
WEIGHTS_TOLERANCE = 1.05  # bf16-stored weights (half the base's memory) unless they slow the matmuls more than noise
THREADS_MARGIN = 1.10  # all logical CPUs instead of one thread per physical core only when clearly faster
MAX_RELATIVE_ERROR = 2e-2  # bf16 keeps 8 mantissa bits: a product's relative error is ~1e-3, not 1e-2
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512-BF16, aarch64 BF16 (FEAT_BF16)
NATIVE_FP16_FLAGS = ("amx_fp16", "avx512_fp16", "fphp")
VARIANTS = ("fp32", "bf16", "bf16-weights")
CACHE_VERSION = 3  # 2: interleaved rounds, fastest pass; 3: one layer's step timed too


def choose(setting: str, config, bf16_checkpoint: bool, cache_dir: Optional[Path] = None, full: bool = False) -> dict[str, Any]:
    """The run's precision for `bf16` on/off/auto: {precision, source, figures?, ...} (figures: the probe's, for the log
    and the result). on/off are taken as they are; auto on a GPU follows torch.cuda.is_bf16_supported(); auto on a CPU
    probes this model's linear shapes and one of its layers (cached) and `decide`s. full: every weight trains (fp32
    weights; the choice is fp32 or bf16 autocast, never bf16-stored weights)."""
    if torch.cuda.is_available():
        auto = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return {"precision": auto if setting == "auto" else "bf16" if setting == "on" else "fp32", "source": f"bf16: {setting} (cuda)"}
    figures = probe(linear_shapes(config), cache_dir=cache_dir, config=config, full=full)  # also for on/off: the estimate's rate, the job's record
    if setting != "auto":
        fixed = "bf16" if setting == "on" else "fp32"
        return {"precision": fixed, "source": f"bf16: {setting}", "reason": "set by the job", "threads": figures["threads"], "figures": figures}
    return {**decide(figures, bf16_checkpoint and not full), "figures": figures}


def decide(figures: dict[str, Any], bf16_checkpoint: bool) -> dict[str, Any]:
    """The choice from the probe's figures (pure: tests feed it made-up ones).

    bf16 compute when its products were numerically sane and it is faster: by any amount where the hardware has
    native bf16 matmuls, by BF16_MARGIN where it does not. Otherwise fp32 compute, with a bf16 checkpoint's weights
    kept in bf16 (upcast per matmul) unless that is slower than fp32 weights by more than WEIGHTS_TOLERANCE.
    threads: the thread count that was faster (figures["threads_all"] when measured)."""
    # The whole layer's step where measured (casts, norms, activations included), else the linear shapes' products.
    seconds = figures.get("layer_seconds") or figures["seconds"]
    basis = "one layer's step: " if figures.get("layer_seconds") else "linear products: "
    fp32, bf16 = seconds["fp32"], seconds["bf16"]
    speedup = fp32 / bf16 if bf16 > 0 else 0.0
    needed = 1.0 if figures["native_bf16"] else BF16_MARGIN
    if not figures["bf16_safe"]:
        error = figures["bf16_error"]
        precision, why = "fp32", f"bf16 products not numerically safe (relative error {'not finite' if error is None else f'{error:.2g}'})"
    elif speedup >= needed:
        precision, why = "bf16", basis + f"bf16 {speedup:.2f}x fp32 (needs ≥ {needed:.2f}x)"
    else:
        precision, why = "fp32", basis + f"bf16 {speedup:.2f}x fp32 (needs ≥ {needed:.2f}x)"
    if precision == "fp32" and bf16_checkpoint:
        weights = seconds.get("bf16-weights", float("inf"))
        if weights <= fp32 * WEIGHTS_TOLERANCE:
            precision, why = "bf16-weights", why + f"; bf16-stored weights {fp32 / weights:.2f}x fp32 weights"
        else:
            why += f"; bf16-stored weights {fp32 / weights:.2f}x fp32 weights: kept in fp32"
    threads = figures["threads"]
    all_threads = figures.get("threads_all")  # {"threads": n, "seconds": s} of the chosen compute dtype
    if all_threads and all_threads["seconds"] * THREADS_MARGIN <= figures["seconds"]["bf16" if precision == "bf16" else "fp32"]:
        threads = all_threads["threads"]
    return {"precision": precision, "source": "probe", "reason": why, "threads": threads}


def linear_shapes(config) -> list[tuple[int, int]]:
    """Distinct (in, out) shapes of the decoder's Linear layers (the LM head aside: it sees only labelled positions)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    found = {(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head}
    return sorted(found)


def probe(shapes: list[tuple[int, int]], cache_dir: Optional[Path] = None, measure=None, config=None, full: bool = False) -> dict[str, Any]:
    """The probe's figures for these shapes on this machine: from the cache when its key matches, else measured
    (`measure(shapes)`, default `measure_shapes`, plus with a model config its one-layer step, `layer_seconds`,
    frozen or with `full` training weights) and stored. A corrupt or foreign cache file is ignored."""
    path = (cache_dir or default_cache_dir()) / "precision-probe.json"
    layer = None if config is None else f"{config.model_type} {config.hidden_size}/{config.intermediate_size}/{config.num_attention_heads}/{getattr(config, 'num_key_value_heads', None)}"
    key = cache_key(shapes) + ("" if layer is None else f"|layer {layer}") + ("|full" if full else "")
    entries = read_cache(path)
    if key in entries:
        return {**entries[key], "cached": True}
    # $WEITIAO_PROBE_SHARED_CACHE: a second cache dir read before measuring and written after (the node test runner
    # sets its per-run one, so the many test homes of one run probe once). The figures still land in `path`.
    shared = Path(os.environ["WEITIAO_PROBE_SHARED_CACHE"]) / "precision-probe.json" if os.environ.get("WEITIAO_PROBE_SHARED_CACHE") else None
    shared_entries = read_cache(shared) if shared else {}
    cached = key in shared_entries
    figures = shared_entries[key] if cached else (measure or measure_shapes)(shapes)
    if not cached and measure is None and config is not None:
        figures["layer_seconds"] = measure_layer(config, full)
    entries[key] = figures
    write_cache(path, entries)
    if shared and not cached:
        write_cache(shared, {**read_cache(shared), key: figures})
    return {**figures, "cached": cached}


def measure_shapes(shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """Times forward (x·Wᵀ) and input-gradient (dy·W) products over every shape per variant; seconds per pass,
    GFLOP/s, the bf16 products' error against fp32, and fp16 where native; all logical CPUs when there are more
    of them than this process's threads."""
    flags = cpu_flags()
    threads = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(PROBE_TOKENS, i, generator=gen) for i, _ in shapes]
    ws = [torch.randn(o, i, generator=gen) / i**0.5 for i, o in shapes]
    flops = sum(2 * 2 * PROBE_TOKENS * i * o for i, o in shapes)
    native_bf16 = any(f in flags for f in NATIVE_BF16_FLAGS)
    # fp16 where native, for the record: without a loss scaler fp16 training is unsafe, so it is never chosen.
    seconds = _time_variants(list(VARIANTS) + (["fp16"] if any(f in flags for f in NATIVE_FP16_FLAGS) else []), xs, ws)
    error = _bf16_error(xs, ws)  # inf (not finite products) becomes null: JSON has no Infinity
    figures: dict[str, Any] = {
        "cpu": cpu_model(),
        "flags": sorted(f for f in flags if f in RELEVANT_FLAGS),
        "torch": torch.__version__,
        "threads": threads,
        "shapes": [list(s) for s in shapes],
        "tokens": PROBE_TOKENS,
        "seconds": seconds,
        "gflops": {v: flops / s / 1e9 for v, s in seconds.items()},
        "native_bf16": native_bf16,
        "bf16_error": error if math.isfinite(error) else None,
        "bf16_safe": error <= MAX_RELATIVE_ERROR,
    }
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or threads)
    if logical > threads:  # hyper-threads: try them once with the faster dtype
        faster = "bf16" if seconds["bf16"] < seconds["fp32"] and figures["bf16_safe"] else "fp32"
        torch.set_num_threads(logical)
        try:
            figures["threads_all"] = {"threads": logical, "dtype": faster, "seconds": _time_variants([faster], xs, ws)[faster]}
        finally:
            torch.set_num_threads(threads)
    return figures


RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile", "bf16", "asimd", "sve")


def _time_variants(variants: list[str], xs: list[torch.Tensor], ws: list[torch.Tensor]) -> dict[str, float]:
    """Seconds of one forward + input-gradient pass over the linear shapes, per variant (`_time_passes`)."""
    return _time_passes({v: _one_pass(v, xs, ws) for v in variants})


def _time_passes(passes: dict[str, Any]) -> dict[str, float]:
    """Seconds of one call of each function: rounds that call each once in turn (after a warm-up call each) for
    ≈ PROBE_SECONDS per function, the fastest call kept. Interleaved and the minimum: on a shared machine, another
    process's burst slows one call, not one variant's whole measurement."""
    best = {v: float("inf") for v in passes}
    for fn in passes.values():
        fn()  # warm-up: thread pool, packed-weight caches
    start, rounds = time.perf_counter(), 0
    while rounds < 2 or time.perf_counter() - start < PROBE_SECONDS * len(passes):
        for v, fn in passes.items():
            t = time.perf_counter()
            fn()
            best[v] = min(best[v], time.perf_counter() - t)
        rounds += 1
        if rounds >= 2 and time.perf_counter() - start > PROBE_SECONDS * len(passes) * 3:
            break  # a slow (emulated) dtype: two rounds are enough
    return best


def measure_layer(config, full: bool = False) -> dict[str, float]:
    """Seconds of one decoder layer's forward + backward to its input (frozen weights, as under LoRA) at PROBE_TOKENS,
    per variant: fp32; bf16 weights under bf16 autocast; bf16 weights upcast per matmul (precision.compute_in_fp32).
    full: the weights train (their gradients too), fp32-stored: fp32, and bf16 autocast over the fp32 weights.
    The whole layer, not only its matmuls: autocast's casts and the bf16 norms/activations decide small models
    (a 128-wide model's matmuls ran 2.2x faster in bf16 while its training step ran 0.27x, issue 17)."""
    from transformers import AutoModelForCausalLM

    from .precision import autocast_context, compute_in_fp32

    fields = {**config.to_dict(), "num_hidden_layers": 1, "vocab_size": 256, "tie_word_embeddings": False}
    if isinstance(fields.get("layer_types"), list):  # per-layer attention kinds: keep the first
        fields["layer_types"] = fields["layer_types"][:1]
    small = config.__class__.from_dict(fields)
    ids = torch.randint(0, 256, (1, PROBE_TOKENS), generator=torch.Generator().manual_seed(0))
    passes = {}
    for variant in ("fp32", "bf16") if full else VARIANTS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small, dtype=torch.float32 if variant == "fp32" or full else torch.bfloat16)
        model.requires_grad_(full)
        model.get_input_embeddings().weight.requires_grad_(True)  # gradients flow back through the layer, as to LoRA's
        if variant == "bf16-weights":
            compute_in_fp32(model)

        def one(decoder=model.get_decoder(), bf16=variant == "bf16"):
            with autocast_context(bf16):
                out = decoder(input_ids=ids, use_cache=False).last_hidden_state
            out.float().sum().backward()
            decoder.zero_grad(set_to_none=True)  # full: the next call's weight gradients are new tensors, as after a step

        passes[variant] = one
    return _time_passes(passes)


def _one_pass(variant: str, xs: list[torch.Tensor], ws: list[torch.Tensor]):
    """A function running forward (x·Wᵀ) and input gradient (dy·W) over every shape in this variant."""
    if variant in ("bf16", "bf16-weights", "fp16"):
        dtype = torch.float16 if variant == "fp16" else torch.bfloat16
        ws = [w.to(dtype) for w in ws]
        if variant != "bf16-weights":
            xs = [x.to(dtype) for x in xs]
    upcast = variant == "bf16-weights"  # as precision._FrozenUpcastLinear: an upcast for the forward, another for the backward

    @torch.no_grad()
    def one_pass():
        for x, w in zip(xs, ws):
            y = x @ (w.float() if upcast else w).t()
            y @ (w.float() if upcast else w)

    return one_pass


def _bf16_error(xs: list[torch.Tensor], ws: list[torch.Tensor]) -> float:
    """Largest relative (Frobenius) error of a bf16 product against fp32 over the shapes; inf when not finite."""
    worst = 0.0
    with torch.no_grad():
        for x, w in zip(xs, ws):
            exact = x @ w.t()
            approx = (x.bfloat16() @ w.bfloat16().t()).float()
            if not torch.isfinite(approx).all():
                return float("inf")
            worst = max(worst, float((approx - exact).norm() / exact.norm().clamp_min(1e-30)))
    return worst


# --------------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """$WEITIAO_CACHE_DIR (the control plane passes its home's cache/), else $WEITIAO_HOME/cache, else
    $XDG_CACHE_HOME/weitiao, else ~/.cache/weitiao."""
    if os.environ.get("WEITIAO_CACHE_DIR"):
        return Path(os.environ["WEITIAO_CACHE_DIR"])
    if os.environ.get("WEITIAO_HOME"):
        return Path(os.environ["WEITIAO_HOME"]) / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weitiao"


def cache_key(shapes: list[tuple[int, int]]) -> str:
    """What the figures depend on: CPU model and flags, torch version, thread count, shapes and rows per product."""
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    shape_text = ",".join(f"{i}x{o}" for i, o in shapes)
    return f"v{CACHE_VERSION}|{cpu_model()}|{flags}|torch {torch.__version__}|{torch.get_num_threads()} threads|{PROBE_TOKENS}|{shape_text}"


def read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries, or none when the file is missing, unreadable or not what this module writes."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and isinstance(v.get("seconds"), dict)}


def write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Atomically (another engine process may read it meanwhile); a read-only cache dir only costs a re-probe."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------- machine


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, aarch64 `Features`); none elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    line = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return set(line.split(":", 1)[-1].split())


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(choice: dict[str, Any]) -> str:
    """One log line: the choice, why, and the probe's figures."""
    figures = choice.get("figures")
    if not figures:
        return f"precision {choice['precision']} ({choice['source']})"
    rates = ", ".join(f"{v} {g:.1f}" for v, g in figures["gflops"].items())
    if figures.get("layer_seconds"):
        rates += "; one layer's step ms " + ", ".join(f"{v} {1000 * t:.1f}" for v, t in figures["layer_seconds"].items())
    return (
        f"precision {choice['precision']} ({choice['source']}{', cached probe' if figures.get('cached') else ''}): {choice['reason']};"
        f" GFLOP/s {rates} on {figures['threads']} threads, {figures['cpu']} [{' '.join(figures['flags'])}]"
        f" / 按实测选择精度"
    )
