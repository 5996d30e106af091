"""`bf16: auto` on a CPU, decided by measurement: the model's own linear shapes timed in fp32, bf16 and
bf16-stored weights upcast for fp32 compute (and fp16 where the hardware has it, for the record), well under a
second, once per machine: the figures are cached in `<cache>/precision-probe.json`, keyed by CPU model, a hash of
its flags, torch version, thread count and the shape set. (CPU flags alone chose wrong: torch's bf16 GEMM on
AVX512-BF16 without AMX measured 0.6x fp32 on one machine and ~4x on another, issue 17.)

A frozen base's training step is, per linear, y = x·Wᵀ forward and dx = dy·W backward (no weight gradient), so
the probe times exactly those two products at PROBE_TOKENS rows per shape (the estimate's matmul rate); and since
bf16 autocast changes every op of the step, not only the matmuls, the decision is taken on one decoder layer of
the model (random weights) run forward and backward in each variant, as the recipe builds it (LoRA of the run's
rank on every linear, the fused RMSNorm) and at the run's tokens per micro-batch (`tokens`, rounded to a power of
two: bf16 GEMM's packing and casts amortise over more rows). Full fine-tuning (`full=True`) times that layer as
it trains there instead: fp32 weights with their gradients, in fp32 and under bf16 autocast (which casts every
weight each call).

A probe taken while other processes held the CPU is marked `contended` (its threads waited for a CPU more than
CONTENDED_WAIT of the time, /proc schedstat): it serves the run, and the next run probes again (up to
MAX_ATTEMPTS, then whenever the machine is idle), keeping the least contended figures. (A one-off probe on a busy machine, its fp32 layer step 2.3 s
where a fresh probe took 0.5 s under a load of 16, was cached with bf16 at 0.89x fp32; every later run on that machine
trained the 0.5B shape in fp32 at 0.63x bf16's speed, while fresh probes measured bf16 at 2.4-3.7x, issue 17.)

    choice = choose("auto", config, bf16_checkpoint=True, tokens=462, lora_rank=8)   # {"precision": "bf16", "figures": {...}}
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

PROBE_TOKENS = 128  # rows per linear product (the estimate's rate); the layer's step without a run's `tokens`
# The layer's rows: the run's tokens per micro-batch as a power of two within these. Capped for the probe's time: on
# the 0.5B shape 512 rows cost ~1 s more than 256 and moved the fp32/bf16 ratio by under 10% (2.19 vs 2.08, issue 17).
LAYER_TOKENS = (64, 256)
CONTENDED_WAIT = 0.25  # the probe's threads runnable but waiting for a CPU this share of the time: a contended probe
MAX_ATTEMPTS = 3  # probes of one key while they are all contended; then the least contended figures stay
PROBE_SECONDS = 0.05  # timing budget per variant after a warm-up call each (linear products, then one layer: about a second)
BF16_MARGIN = 1.15  # without native bf16 matmuls, bf16 compute only when the probe shows it this much faster
WEIGHTS_TOLERANCE = 1.05  # bf16-stored weights (half the base's memory) unless they slow the matmuls more than noise
THREADS_MARGIN = 1.10  # all logical CPUs instead of one thread per physical core only when clearly faster
MAX_RELATIVE_ERROR = 2e-2  # bf16 keeps 8 mantissa bits: a product's relative error is ~1e-3, not 1e-2
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX / AVX512-BF16, aarch64 BF16 (FEAT_BF16)
NATIVE_FP16_FLAGS = ("amx_fp16", "avx512_fp16", "fphp")
VARIANTS = ("fp32", "bf16", "bf16-weights")
CACHE_VERSION = 5  # 2: interleaved rounds, fastest pass; 3: one layer's step timed too; 4: at the run's tokens, with LoRA, contention; 5: fused q/k/v, gate/up, SiluMul


def choose(
    setting: str, config, bf16_checkpoint: bool, cache_dir: Optional[Path] = None, full: bool = False,
    tokens: Optional[int] = None, lora_rank: Optional[int] = None,
) -> dict[str, Any]:  # fmt: skip
    """The run's precision for `bf16` on/off/auto: {precision, source, figures?, ...} (figures: the probe's, for the log
    and the result). on/off are taken as they are; auto on a GPU follows torch.cuda.is_bf16_supported(); auto on a CPU
    probes this model's linear shapes and one of its layers (cached) and `decide`s. full: every weight trains (fp32
    weights; the choice is fp32 or bf16 autocast, never bf16-stored weights). tokens: the run's tokens per
    micro-batch (None: PROBE_TOKENS); lora_rank: the layer carries LoRA of that rank on every linear, as the run's."""
    if torch.cuda.is_available():
        auto = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return {"precision": auto if setting == "auto" else "bf16" if setting == "on" else "fp32", "source": f"bf16: {setting} (cuda)"}
    figures = probe(linear_shapes(config), cache_dir=cache_dir, config=config, full=full, tokens=tokens, lora_rank=lora_rank)  # also for on/off: the estimate's rate, the job's record
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
    basis = f"one layer's step at {figures.get('layer_tokens', PROBE_TOKENS)} tokens: " if figures.get("layer_seconds") else "linear products: "
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


def probe(
    shapes: list[tuple[int, int]], cache_dir: Optional[Path] = None, measure=None, config=None, full: bool = False,
    tokens: Optional[int] = None, lora_rank: Optional[int] = None,
) -> dict[str, Any]:  # fmt: skip
    """The probe's figures for these shapes on this machine: from the cache when its key matches, else measured
    (`measure(shapes)`, default `measure_shapes`, plus with a model config its one-layer step, `layer_seconds`,
    frozen (with LoRA of `lora_rank`) or with `full` training weights, at `tokens` rounded by `token_bucket`) and
    stored. A contended entry (`cpu_wait` above CONTENDED_WAIT) is measured again, up to MAX_ATTEMPTS probes, and
    the least contended figures are kept and used. A corrupt or foreign cache file is ignored."""
    path = (cache_dir or default_cache_dir()) / "precision-probe.json"
    bucket = token_bucket(tokens)
    key = cache_key(shapes)
    if config is not None:
        layer = f"{config.model_type} {config.hidden_size}/{config.intermediate_size}/{config.num_attention_heads}/{getattr(config, 'num_key_value_heads', None)}"
        key += f"|layer {layer}|{bucket} tokens" + ("|full" if full else f"|lora r{lora_rank}" if lora_rank else "")
    entries = read_cache(path)
    if key in entries and not _measure_again(entries[key]):
        return {**entries[key], "cached": True}
    # $WEITIAO_PROBE_SHARED_CACHE: a second cache dir read before measuring and written after (the node test runner
    # sets its per-run one, so the many test homes of one run probe once). The figures still land in `path`.
    shared = Path(os.environ["WEITIAO_PROBE_SHARED_CACHE"]) / "precision-probe.json" if os.environ.get("WEITIAO_PROBE_SHARED_CACHE") else None
    shared_entries = read_cache(shared) if shared else {}
    if key in shared_entries and not _measure_again(shared_entries[key]):
        entries[key] = shared_entries[key]
        write_cache(path, entries)
        return {**shared_entries[key], "cached": True}
    earlier = entries.get(key) or shared_entries.get(key)  # contended figures of an earlier probe
    if measure is None:
        waited = _cpu_wait()
        figures = measure_shapes(shapes)
        if config is not None:
            figures["layer_seconds"] = measure_layer(config, full, bucket, lora_rank)
            figures["layer_tokens"] = bucket
        figures["cpu_wait"] = waited()
    else:
        figures = measure(shapes)
    if figures.get("cpu_wait") is not None:
        figures["contended"] = figures["cpu_wait"] > CONTENDED_WAIT
    figures["attempts"] = 1 + (earlier.get("attempts", 1) if earlier else 0)
    if earlier and earlier.get("cpu_wait", 0.0) <= figures.get("cpu_wait", 0.0):
        figures = {**earlier, "attempts": figures["attempts"]}  # the earlier probe waited less: its figures stand
    entries[key] = figures
    write_cache(path, entries)
    if shared:
        write_cache(shared, {**read_cache(shared), key: figures})
    return {**figures, "cached": False}


def token_bucket(tokens: Optional[int]) -> int:
    """The layer probe's rows for a run of `tokens` per micro-batch: the nearest power of two within LAYER_TOKENS
    (PROBE_TOKENS when unknown), so runs of similar batches share one cache entry."""
    if not tokens or tokens <= 0:
        return PROBE_TOKENS
    low, high = LAYER_TOKENS
    return min(high, max(low, 2 ** round(math.log2(tokens))))


def _measure_again(entry: dict[str, Any]) -> bool:
    """A cached probe that ran contended is measured again, until MAX_ATTEMPTS probes of its key, and after that
    whenever the machine looks idle (so a busy day's figures do not stay for good)."""
    return bool(entry.get("contended")) and (entry.get("attempts", 1) < MAX_ATTEMPTS or machine_idle())


def machine_idle() -> bool:
    """Fewer runnable processes over the last minute than logical CPUs (os.getloadavg); False where unknown."""
    try:
        return os.getloadavg()[0] < (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return False


def _cpu_wait():
    """Starts a clock of this process's CPU waiting: the returned function gives the share of (wall time × threads)
    its threads spent runnable but not running (Linux /proc/self/task/*/schedstat), or None where unreadable."""

    def run_delay() -> Optional[float]:
        try:
            return sum(int((task / "schedstat").read_text().split()[1]) for task in Path("/proc/self/task").iterdir()) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    start, delay = time.perf_counter(), run_delay()

    def waited() -> Optional[float]:
        now = run_delay()
        if delay is None or now is None:
            return None
        return max(0.0, now - delay) / max((time.perf_counter() - start) * torch.get_num_threads(), 1e-9)

    return waited


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


def measure_layer(config, full: bool = False, tokens: int = PROBE_TOKENS, lora_rank: Optional[int] = None) -> dict[str, float]:
    """Seconds of one decoder layer's forward + backward at `tokens` rows, per variant: fp32; bf16 weights under bf16
    autocast; bf16 weights upcast per matmul (precision.compute_in_fp32), only where bf16 compute did not win by
    BF16_MARGIN (a choice between fp32 and bf16-stored weights). Frozen weights, as the LoRA recipe's: with
    `lora_rank`, LoRA of that rank on every linear (fp32, its dropout, its input kept bf16 under autocast), else the
    gradient flows back to the input only; RMSNorm and SwiGLU fused as the recipes fuse them. full: the weights train (their
    gradients too), fp32-stored: fp32, and bf16 autocast over the fp32 weights.
    The whole layer, not only its matmuls: autocast's casts and the bf16 norms/activations decide small models
    (a 128-wide model's matmuls ran 2.2x faster in bf16 while its training step ran 0.27x, issue 17)."""
    from transformers import AutoModelForCausalLM

    from .fused_ops import use_fused_ops
    from .precision import autocast_context, compute_in_fp32

    fields = {**config.to_dict(), "num_hidden_layers": 1, "vocab_size": 256, "tie_word_embeddings": False}
    if isinstance(fields.get("layer_types"), list):  # per-layer attention kinds: keep the first
        fields["layer_types"] = fields["layer_types"][:1]
    small = config.__class__.from_dict(fields)
    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(0))

    def build(variant: str):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(small, dtype=torch.float32 if variant == "fp32" or full else torch.bfloat16)
        model.requires_grad_(full)
        if lora_rank and not full:
            model = _with_lora(model, lora_rank, variant == "bf16")
        else:
            model.get_input_embeddings().weight.requires_grad_(True)  # gradients flow back through the layer, as to LoRA's
        if variant == "bf16-weights":
            compute_in_fp32(model)
        use_fused_ops(model)
        model.train()
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model

        def one(decoder=causal_lm.get_decoder(), bf16=variant == "bf16"):
            with autocast_context(bf16):
                out = decoder(input_ids=ids, use_cache=False).last_hidden_state
            out.float().sum().backward()
            decoder.zero_grad(set_to_none=True)  # the next call's gradients are new tensors, as after a step

        return one

    fp32 = build("fp32")
    seconds = _time_passes({"fp32": fp32, "bf16": build("bf16")})
    if not full and seconds["fp32"] < seconds["bf16"] * BF16_MARGIN:
        # bf16 compute may lose: then bf16-stored weights are the choice to weigh. Timed against fp32 again and scaled
        # by fp32's first time (the ratio is what counts); skipped when bf16 clearly wins, which saves a third of the probe.
        again = _time_passes({"fp32": fp32, "bf16-weights": build("bf16-weights")})
        seconds["bf16-weights"] = again["bf16-weights"] * seconds["fp32"] / again["fp32"]
    return seconds


def _with_lora(model, rank: int, bf16: bool):
    """The one-layer model with LoRA as training/lora.add_lora puts it on (every linear, fp32 adapter weights, its dropout)."""
    from peft import LoraConfig, get_peft_model

    from .lora import FAST_LORA_DROPOUT, lora_input_in_compute_dtype
    from .precision import trainable_in_fp32

    head = model.get_output_embeddings()
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head})
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM"))
    trainable_in_fp32(model)
    from .fused_projections import use_fused_projections
    from .lora_forward import use_lean_lora_forward

    use_lean_lora_forward(model)
    use_fused_projections(model)
    if FAST_LORA_DROPOUT:
        from .lora_dropout import use_lora_dropout

        use_lora_dropout(model)
    if bf16:
        lora_input_in_compute_dtype(model)
    return model


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
        rates += f"; one layer's step at {figures.get('layer_tokens', PROBE_TOKENS)} tokens, ms " + ", ".join(
            f"{v} {1000 * t:.1f}" for v, t in figures["layer_seconds"].items()
        )
    if figures.get("cpu_wait") is not None:  # how much of the probe other processes took: a busy machine skews it
        rates += f"; waited for a CPU {100 * figures['cpu_wait']:.0f}% of the probe{' (contended: probed again next run)' if _measure_again(figures) else ''}"
    return (
        f"precision {choice['precision']} ({choice['source']}{', cached probe' if figures.get('cached') else ''}): {choice['reason']};"
        f" GFLOP/s {rates} on {figures['threads']} threads, {figures['cpu']} [{' '.join(figures['flags'])}]"
        f" / 按实测选择精度"
    )
