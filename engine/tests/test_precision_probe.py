"""The precision probe (training/precision_probe.py): its decision on made-up figures, in both directions and
when bf16 is numerically unsafe, and its per-machine cache (hit, miss on another key, corrupt file ignored).
Nothing here asserts on a timing: the one real measurement only has to produce well-formed figures."""

import json

import pytest
from transformers import Qwen2Config

from weitiao_engine.training import precision_probe as pp


def figures(fp32: float, bf16: float, weights: float, native: bool = False, safe: bool = True, **extra) -> dict:
    return {
        "seconds": {"fp32": fp32, "bf16": bf16, "bf16-weights": weights},
        "native_bf16": native,
        "bf16_safe": safe,
        "bf16_error": 0.003 if safe else None,  # None: products not finite
        "threads": 2,
        **extra,
    }


def test_bf16_faster_by_the_margin_chooses_bf16():
    assert pp.decide(figures(1.0, 0.4, 1.4), bf16_checkpoint=True)["precision"] == "bf16"
    # Native bf16 matmuls: any gain is enough; emulated ones need the margin.
    assert pp.decide(figures(1.0, 0.95, 1.4, native=True), bf16_checkpoint=False)["precision"] == "bf16"
    assert pp.decide(figures(1.0, 0.95, 1.4, native=False), bf16_checkpoint=False)["precision"] == "fp32"


def test_bf16_slower_chooses_fp32_and_keeps_bf16_weights_only_when_they_do_not_slow():
    slow_bf16 = pp.decide(figures(1.0, 1.6, 1.02), bf16_checkpoint=True)
    assert slow_bf16["precision"] == "bf16-weights"  # half the base's memory at fp32 speed
    assert "bf16 0.62x fp32 (needs ≥ 1.15x)" in slow_bf16["reason"]
    assert pp.decide(figures(1.0, 1.6, 1.4), bf16_checkpoint=True)["precision"] == "fp32"  # upcasts cost 40%: fp32 weights
    assert pp.decide(figures(1.0, 1.6, 1.0), bf16_checkpoint=False)["precision"] == "fp32"  # fp32 checkpoint stays fp32


def test_unsafe_bf16_chooses_fp32_however_fast():
    choice = pp.decide(figures(1.0, 0.1, 1.4, native=True, safe=False), bf16_checkpoint=False)
    assert choice["precision"] == "fp32" and "not numerically safe (relative error not finite)" in choice["reason"]
    large = {**figures(1.0, 0.1, 1.4, native=True, safe=False), "bf16_error": 0.3}
    assert pp.decide(large, bf16_checkpoint=False)["precision"] == "fp32"


def test_the_whole_layer_step_decides_over_the_bare_matmuls():
    # Matmuls 2.2x faster in bf16, the layer's step (casts, bf16 elementwise ops) 3x slower: fp32.
    small_model = figures(1.0, 0.45, 1.1, native=True, layer_seconds={"fp32": 0.01, "bf16": 0.03, "bf16-weights": 0.012})
    assert pp.decide(small_model, bf16_checkpoint=False)["precision"] == "fp32"
    large_model = figures(1.0, 0.45, 1.1, native=True, layer_seconds={"fp32": 0.2, "bf16": 0.1, "bf16-weights": 0.25})
    assert pp.decide(large_model, bf16_checkpoint=True)["precision"] == "bf16"


def test_a_layer_probed_at_the_runs_tokens_decides_in_both_directions():
    # bf16 won clearly, so bf16-stored weights were not timed: bf16, and the reason names the layer's rows.
    won = figures(1.0, 2.0, 2.0, native=True, layer_tokens=256, layer_seconds={"fp32": 0.9, "bf16": 0.33})
    choice = pp.decide(won, bf16_checkpoint=True)
    assert choice["precision"] == "bf16" and "one layer's step at 256 tokens: bf16 2.73x fp32" in choice["reason"]
    # The same products, but the layer with LoRA at the run's rows is slower in bf16: bf16-stored weights at fp32 speed.
    lost = figures(1.0, 0.4, 2.0, native=True, layer_tokens=256, layer_seconds={"fp32": 0.9, "bf16": 1.2, "bf16-weights": 0.92})
    assert pp.decide(lost, bf16_checkpoint=True)["precision"] == "bf16-weights"
    assert pp.decide(lost, bf16_checkpoint=False)["precision"] == "fp32"


def test_threads_all_logical_cpus_only_when_clearly_faster():
    faster = figures(1.0, 2.0, 2.0, threads_all={"threads": 4, "dtype": "fp32", "seconds": 0.8})
    assert pp.decide(faster, bf16_checkpoint=False)["threads"] == 4
    same = figures(1.0, 2.0, 2.0, threads_all={"threads": 4, "dtype": "fp32", "seconds": 0.97})
    assert pp.decide(same, bf16_checkpoint=False)["threads"] == 2


class CountingMeasure:
    """Stands in for the timing (the cache is under test, not the clock); counts how often it was asked."""

    def __init__(self):
        self.calls = 0

    def __call__(self, shapes):
        self.calls += 1
        return {**figures(1.0, 0.5, 1.2), "shapes": [list(s) for s in shapes]}


def test_cache_hit_then_miss_on_another_shape_set(tmp_path):
    measure = CountingMeasure()
    first = pp.probe([(64, 64), (64, 128)], cache_dir=tmp_path, measure=measure)
    again = pp.probe([(64, 64), (64, 128)], cache_dir=tmp_path, measure=measure)
    assert (first["cached"], again["cached"], measure.calls) == (False, True, 1)
    assert again["seconds"] == first["seconds"]
    other = pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure)
    assert other["cached"] is False and measure.calls == 2
    stored = json.loads((tmp_path / "precision-probe.json").read_text())
    assert len(stored) == 2 and all(k.startswith(f"v{pp.CACHE_VERSION}|") for k in stored)


def test_cache_key_names_machine_torch_threads_and_shapes(monkeypatch):
    key = pp.cache_key([(64, 64)])
    assert pp.torch.__version__ in key and f"{pp.torch.get_num_threads()} threads" in key and "64x64" in key
    threads = pp.torch.get_num_threads()
    try:
        pp.torch.set_num_threads(threads + 1)
        assert pp.cache_key([(64, 64)]) != key
    finally:
        pp.torch.set_num_threads(threads)
    monkeypatch.setattr(pp, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert pp.cache_key([(64, 64)]) != key  # another CPU's flags


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": "not an entry"}', ""])
def test_corrupt_cache_file_is_ignored_and_replaced(tmp_path, content):
    (tmp_path / "precision-probe.json").write_text(content)
    measure = CountingMeasure()
    result = pp.probe([(32, 32)], cache_dir=tmp_path, measure=measure)
    assert result["cached"] is False and measure.calls == 1
    assert pp.probe([(32, 32)], cache_dir=tmp_path, measure=measure)["cached"] is True


def test_shared_cache_is_read_before_measuring_and_the_figures_still_land_in_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("WEITIAO_PROBE_SHARED_CACHE", str(tmp_path / "shared"))
    measure = CountingMeasure()
    first = pp.probe([(64, 64)], cache_dir=tmp_path / "home-a", measure=measure)
    second = pp.probe([(64, 64)], cache_dir=tmp_path / "home-b", measure=measure)
    assert (first["cached"], second["cached"], measure.calls) == (False, True, 1)
    assert second["seconds"] == first["seconds"]
    for home in ("home-a", "home-b"):
        assert len(json.loads((tmp_path / home / "precision-probe.json").read_text())) == 1
    monkeypatch.delenv("WEITIAO_PROBE_SHARED_CACHE")
    assert pp.probe([(64, 64)], cache_dir=tmp_path / "home-c", measure=measure)["cached"] is False and measure.calls == 2


def test_cache_dir_follows_weitiao_home(monkeypatch, tmp_path):
    monkeypatch.delenv("WEITIAO_CACHE_DIR", raising=False)
    monkeypatch.setenv("WEITIAO_HOME", str(tmp_path / "home"))
    assert pp.default_cache_dir() == tmp_path / "home" / "cache"
    monkeypatch.delenv("WEITIAO_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pp.default_cache_dir() == tmp_path / "xdg" / "weitiao"


def test_real_probe_on_a_tiny_model_config(tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "PROBE_TOKENS", 16)
    monkeypatch.setattr(pp, "PROBE_SECONDS", 0.005)
    monkeypatch.setattr(pp, "CONTENDED_WAIT", float("inf"))  # however busy the machine, the second call reads the cache
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, vocab_size=256)  # fmt: skip
    assert pp.linear_shapes(config) == [(64, 32), (64, 64), (64, 128), (128, 64)]  # k/v, q/o, gate/up, down
    choice = pp.choose("auto", config, bf16_checkpoint=True, cache_dir=tmp_path)
    f = choice["figures"]
    assert choice["precision"] in ("bf16", "bf16-weights", "fp32") and choice["source"] == "probe"
    assert set(pp.VARIANTS) <= set(f["seconds"]) and all(s > 0 for s in f["seconds"].values())
    assert f["bf16_safe"] and f["bf16_error"] < 0.02 and f["tokens"] == 16
    layer = f["layer_seconds"]
    assert {"fp32", "bf16"} <= set(layer) <= set(pp.VARIANTS) and all(s > 0 for s in layer.values())
    assert "bf16-weights" in layer or layer["fp32"] >= layer["bf16"] * pp.BF16_MARGIN  # measured unless bf16 clearly won
    assert f["layer_tokens"] == 16 and 0 <= f["cpu_wait"] and f["contended"] is False
    assert "probe" in pp.describe(choice) and "GFLOP/s" in pp.describe(choice) and "at 16 tokens" in pp.describe(choice)
    # on/off are the job's: taken as set, the (now cached) figures attached for the record.
    off = pp.choose("off", config, bf16_checkpoint=True, cache_dir=tmp_path)
    assert off["precision"] == "fp32" and off["figures"]["cached"] is True
    assert pp.choose("on", config, bf16_checkpoint=False, cache_dir=tmp_path)["precision"] == "bf16"
    # A run's micro-batch and LoRA rank: the layer carries LoRA and is timed at the tokens' bucket, a new entry.
    lora = pp.choose("auto", config, bf16_checkpoint=True, cache_dir=tmp_path, tokens=40, lora_rank=4)["figures"]
    assert lora["cached"] is False and lora["layer_tokens"] == 64 and {"fp32", "bf16"} <= set(lora["layer_seconds"])


def test_full_fine_tuning_probes_a_training_layer_and_never_keeps_bf16_weights(tmp_path):
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, vocab_size=256)  # fmt: skip
    shapes = pp.linear_shapes(config)
    # Frozen layer: bf16 0.5x slower, bf16-stored weights as fast as fp32. Training layer: bf16 autocast 2x faster.
    frozen = CountingMeasure()
    frozen_figures = lambda s: {**frozen(s), "layer_seconds": {"fp32": 1.0, "bf16": 2.0, "bf16-weights": 1.0}}  # noqa: E731
    pp.probe(shapes, cache_dir=tmp_path, measure=frozen_figures, config=config)
    full_figures = lambda s: {**figures(1.0, 0.5, 1.0), "layer_seconds": {"fp32": 1.0, "bf16": 0.5}}  # noqa: E731
    pp.probe(shapes, cache_dir=tmp_path, measure=full_figures, config=config, full=True)
    assert len(json.loads((tmp_path / "precision-probe.json").read_text())) == 2  # one entry each: neither serves the other

    assert pp.choose("auto", config, bf16_checkpoint=True, cache_dir=tmp_path)["precision"] == "bf16-weights"
    full = pp.choose("auto", config, bf16_checkpoint=True, cache_dir=tmp_path, full=True)
    assert full["precision"] == "bf16" and full["figures"]["cached"] and "bf16 2.00x fp32" in full["reason"]
    # The other direction: autocast slower on the training layer -> fp32, and a bf16 checkpoint changes nothing.
    slow = {**figures(1.0, 0.5, 1.0), "layer_seconds": {"fp32": 1.0, "bf16": 1.5}}
    assert pp.decide(slow, bf16_checkpoint=False)["precision"] == "fp32"


@pytest.mark.parametrize("method, full, expected", [("lora", False, "fp32"), ("dpo", False, "fp32"), ("full", True, "bf16"), ("reinforcement", True, "bf16")])
def test_every_recipe_decides_auto_through_choose_for_run(tiny_model, tmp_path, monkeypatch, method, full, expected):
    """The one rule of every recipe (training/precision.choose_for_run): the probe of this model, with its layer
    frozen (LoRA, DPO, a LoRA policy) or training (full fine-tuning, a full policy); made-up figures in which bf16
    loses on the frozen layer and wins on the training one, so the method's kind shows in the choice."""
    from types import SimpleNamespace

    from weitiao_engine import protocol
    from weitiao_engine.training import precision

    monkeypatch.setenv("WEITIAO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(protocol, "_out", __import__("io").StringIO())
    measured = []
    described = {"gflops": {"fp32": 1.0, "bf16": 1.1}, "cpu": "test CPU", "flags": []}  # what the log line names
    monkeypatch.setattr(pp, "measure_shapes", lambda shapes: figures(1.0, 0.9, 1.0, **described))
    layers = []  # (full, tokens, LoRA rank) of each layer probe

    def measure_layer(config, full=False, tokens=pp.PROBE_TOKENS, lora_rank=None):
        layers.append((full, tokens, lora_rank))
        measured.append(full)
        return {"fp32": 1.0, "bf16": 0.5 if full else 2.0, "bf16-weights": 1.0}

    monkeypatch.setattr(pp, "measure_layer", measure_layer)
    monkeypatch.setattr(pp, "CONTENDED_WAIT", float("inf"))  # a busy machine's probe is measured again: not what this test is about
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": [{"role": "user", "content": "好吃"}, {"role": "assistant", "content": "好评"}]}\n' * 3, encoding="utf-8")
    hp = SimpleNamespace(bf16="auto", batch_size=64, gradient_accumulation_steps=1, max_seq_length=1024)
    request = SimpleNamespace(base_model=tiny_model, method=method, threads=1, hyperparameters=hp, training_file=str(train), nproc=1,
                              lora=SimpleNamespace(r=4))  # fmt: skip
    choice = precision.choose_for_run(request, full=full)
    assert (choice["precision"], choice["source"], measured) == (expected, "probe", [full])
    # 64 short examples per micro-batch: some hundreds of tokens, the probe's largest bucket; LoRA's rank where LoRA trains.
    assert layers[0][1] == 256 and layers[0][2] == (None if full else 4)
    assert "precision " + expected in protocol._out.getvalue()  # logged with the probe's figures
    assert precision.choose_for_run(request, full=full)["figures"]["cached"] and measured == [full]  # once per machine
    off = SimpleNamespace(**{**vars(request), "hyperparameters": SimpleNamespace(**{**vars(hp), "bf16": "off"})})
    assert precision.choose_for_run(off, full=full)["precision"] == "fp32"


def test_layer_tokens_round_to_a_power_of_two_within_the_probe_range():
    assert [pp.token_bucket(t) for t in (None, 0, 10, 90, 100, 200, 462, 5000)] == [pp.PROBE_TOKENS, pp.PROBE_TOKENS, 64, 64, 128, 256, 256, 256]


def test_cache_key_includes_the_token_bucket_and_the_lora_rank(tmp_path):
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=2, vocab_size=256)  # fmt: skip
    measure = CountingMeasure()
    probe = lambda **kw: pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure, config=config, **kw)  # noqa: E731
    assert probe(tokens=230, lora_rank=8)["cached"] is False
    assert probe(tokens=280, lora_rank=8)["cached"] is True  # same bucket (256): one entry
    assert probe(tokens=100, lora_rank=8)["cached"] is False  # 128 tokens: another
    assert probe(tokens=230, lora_rank=16)["cached"] is False  # another rank
    assert probe(tokens=230)["cached"] is False  # no LoRA
    keys = list(json.loads((tmp_path / "precision-probe.json").read_text()))
    assert measure.calls == 4 and sum("|256 tokens|lora r8" in k for k in keys) == 1 and sum("|128 tokens|" in k for k in keys) == 1


class ContendedMeasure:
    """Made-up figures of probes that waited for a CPU these shares of the time, in turn."""

    def __init__(self, *waits: float):
        self.waits, self.calls = list(waits), 0

    def __call__(self, shapes):
        wait, self.calls = self.waits[self.calls], self.calls + 1
        described = {"gflops": {"fp32": 1.0}, "cpu": "test CPU", "flags": []}  # what the log line names
        return {**figures(1.0, 0.5 + wait, 1.2, **described), "cpu_wait": wait}  # a busier probe: another bf16 time, to tell them apart


def test_a_contended_probe_is_measured_again_and_the_least_contended_figures_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "machine_idle", lambda: False)
    measure = ContendedMeasure(0.6, 0.1, 0.9)
    first = pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure)
    assert first["contended"] is True and first["cached"] is False
    second = pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure)  # contended before: measured again
    assert (second["cached"], second["contended"], second["seconds"]["bf16"], second["attempts"]) == (False, False, 0.6, 2)
    third = pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure)  # quiet figures: cached from now on
    assert third["cached"] is True and third["seconds"]["bf16"] == 0.6 and measure.calls == 2


def test_a_busier_probe_does_not_replace_a_less_contended_one_and_probing_stops_after_max_attempts(tmp_path, monkeypatch):
    monkeypatch.setattr(pp, "machine_idle", lambda: False)  # a machine busy throughout
    measure = ContendedMeasure(0.5, 0.8, 0.7, 0.1)
    results = [pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure) for _ in range(pp.MAX_ATTEMPTS + 1)]
    assert [r["seconds"]["bf16"] for r in results] == [1.0, 1.0, 1.0, 1.0]  # the 0.5-wait figures each time
    assert [r["cached"] for r in results] == [False] * pp.MAX_ATTEMPTS + [True] and measure.calls == pp.MAX_ATTEMPTS
    assert "waited for a CPU 50% of the probe" in pp.describe({**pp.decide(results[-1], False), "figures": results[-1]})
    # Once the machine is idle, the contended figures are measured again and the quiet ones replace them.
    monkeypatch.setattr(pp, "machine_idle", lambda: True)
    quiet = pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure)
    assert (quiet["cached"], quiet["contended"], quiet["seconds"]["bf16"]) == (False, False, 0.6)
    assert pp.probe([(64, 64)], cache_dir=tmp_path, measure=measure)["cached"] is True and measure.calls == pp.MAX_ATTEMPTS + 1


def test_micro_batch_tokens_follow_the_training_file_batch_and_accumulation(tiny_model, tmp_path):
    from types import SimpleNamespace

    from weitiao_engine.chat_format import tokenize_examples
    from weitiao_engine.tokens import auto_tokenizer
    from weitiao_engine.training.data import load_examples
    from weitiao_engine.training.precision import micro_batch_tokens

    from conftest import chat_example, waimai_rows, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", [chat_example(r) for r in waimai_rows()[:40]])
    hp = SimpleNamespace(batch_size=8, gradient_accumulation_steps=1, max_seq_length=1024)
    request = SimpleNamespace(base_model=tiny_model, training_file=str(train), hyperparameters=hp, nproc=1)
    estimated = micro_batch_tokens(request)
    examples, _ = tokenize_examples(auto_tokenizer(tiny_model), load_examples(str(train), "training_file"), 1024)
    real = 8 * sum(len(e.input_ids) for e in examples) / len(examples)
    assert 0.7 * real <= estimated <= 1.4 * real  # the chat template's tokens approximated, the text's counted
    hp.gradient_accumulation_steps = 2
    assert abs(micro_batch_tokens(request) - estimated / 2) <= 1  # half the examples per forward/backward
    hp.max_seq_length = 4
    assert micro_batch_tokens(request) == 4 * 4  # each example capped at max_seq_length
    assert micro_batch_tokens(SimpleNamespace(**{**vars(request), "training_file": str(tmp_path / "missing.jsonl")})) is None
