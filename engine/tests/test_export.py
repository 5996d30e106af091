"""`export` on the tiny Qwen2 (ChatML) and Llama (Llama 3 template) models: HF folders equal the PEFT model,
GGUF metadata/tensors/vocabulary read back right, and llama.cpp itself (node-llama-cpp) loads the GGUFs and
answers token for token as the engine does, merged and as base + LoRA GGUF."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, run_train, train_request, waimai_rows

from weitiao_engine import export
from weitiao_engine.chat_format import prompt_ids, render
from weitiao_engine.loading import load_model, stop_token_ids
from weitiao_engine.protocol import CreateTinyRequest, EngineError, ExportRequest

# node-llama-cpp's prebuilt libllama (its file name carries the llama.cpp release: libllama.v0.4.0.so, …)
LIBLLAMA = next(iter(sorted((REPO_ROOT / "node_modules/@node-llama-cpp/linux-x64/bins/linux-x64").glob("libllama*.so"))), REPO_ROOT / "node_modules/@node-llama-cpp/libllama-not-installed.so")
GREEDY_SCRIPT = Path(__file__).with_name("llamacpp_greedy.ts")
SYSTEM = {"role": "system", "content": "你是一位外卖评论好评差评评论专家。"}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory) -> str:
    """The conftest tiny shape as a Llama with Llama 3's template and special tokens."""
    from weitiao_engine import tiny

    root = tmp_path_factory.mktemp("llama")
    rows = random.Random(0).sample(waimai_rows(), 2000)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["review"] for r in rows) + "\n", encoding="utf-8")
    request = CreateTinyRequest(
        output_dir=str(root / "llama-tiny"), architecture="llama", chat_template="llama3", hidden_size=64, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, vocab_size=1024,
        corpus_files=[str(corpus)], seed=0,
    )  # fmt: skip
    return tiny.run(request)["path"]


def random_adapter(base: str, out: Path, **lora: Any) -> str:
    """A LoRA with random, non-zero B matrices, so it really changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora))
    if lora.get("modules_to_save"):  # a trained copy that differs from the base's
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def models(tiny_model, llama_model, waimai_small, tmp_path_factory) -> dict[str, dict[str, str]]:
    """Per architecture: the base and a LoRA adapter fine-tuned on waimai reviews (it answers 好评/差评 and ends
    its turn), trained by the engine's own recipe."""
    out = {}
    for arch, base in (("qwen2", tiny_model), ("llama", llama_model)):
        root = tmp_path_factory.mktemp(f"ft-{arch}")
        raw = train_request(base, waimai_small, root, hyperparameters={"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "seed": 7})
        with pytest.MonkeyPatch.context() as mp:
            result, _ = run_train(raw, mp)
        out[arch] = {"base": base, "adapter": result["model_dir"]}
    return out


def export_(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    """Runs `export` in this process."""
    return export.run(ExportRequest.model_validate({"output_dir": str(tmp_path / "export"), **fields}))


# ----------------------------------------------------------------------------------------- engine vs llama.cpp


def engine_greedy(model: Any, tokenizer: Any, ids: list[int], max_tokens: int) -> list[int]:
    """The engine's greedy tokens (as generate.chat_completion picks them), the stop token included."""
    stops = stop_token_ids(model, tokenizer)
    out: list[int] = []
    past, step = None, torch.tensor([ids])
    with torch.no_grad():
        while len(out) < max_tokens:
            result = model(input_ids=step, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, int(result.logits[0, -1].argmax())
            out.append(token)
            if token in stops:
                break
            step = torch.tensor([[token]])
    return out


def llamacpp_greedy(tmp_path: Path, runs: list[tuple[str, str | None]], prompts: list[str], check: list[int] = (), max_tokens: int = 16) -> list[dict[str, Any]]:
    """Greedy tokens from llama.cpp (node-llama-cpp) for rendered prompts, per (gguf, lora gguf or None) run
    (engine/tests/llamacpp_greedy.ts): [{results: [{prompt_tokens, tokens, stopped}], eog: {id: bool}}]."""
    request = tmp_path / "greedy.json"
    runs_ = [{"model": model, "lora": lora} for model, lora in runs]
    request.write_text(json.dumps({"runs": runs_, "prompts": prompts, "max_tokens": max_tokens, "check_tokens": list(check)}), encoding="utf-8")
    proc = subprocess.run(["node", "--import", "tsx", str(GREEDY_SCRIPT), str(request)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["runs"]


def validation_prompts(waimai_small: dict[str, str], n: int = 4) -> list[list[dict[str, str]]]:
    lines = Path(waimai_small["validation"]).read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["messages"][:-1] for line in lines] + [[SYSTEM, {"role": "user", "content": "量太少了，而且很咸"}]]


def assert_llamacpp_answers_as_the_engine(tmp_path: Path, base: str, adapter: str, conversations: list[Any], also: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Exports `base` + `adapter` to GGUF f16 twice (merged; base + LoRA GGUF), greedy-decodes `conversations`
    with llama.cpp and asserts its prompt tokens and answers equal the engine's, token for token. Merged exports
    in the quantizations `also` are decoded in the same process; their runs follow, unchecked."""
    model, tokenizer = load_model(base, adapter)
    merged = export_(tmp_path / "merged", model=base, adapter=adapter, format="gguf")["path"]
    plain = export_(tmp_path / "base", model=base, format="gguf")["path"]
    lora = export_(tmp_path / "lora", model=base, adapter=adapter, format="gguf", adapter_only=True)["path"]
    quantized = [(export_(tmp_path / q, model=base, adapter=adapter, format="gguf", quantize=q)["path"], None) for q in also]
    stops = sorted(stop_token_ids(model, tokenizer))
    runs = llamacpp_greedy(tmp_path, [(merged, None), (plain, lora), *quantized], [render(tokenizer, c, True) for c in conversations], check=stops)
    for run in runs[:2]:
        for conversation, answer in zip(conversations, run["results"]):
            ids = prompt_ids(tokenizer, conversation)
            assert answer["prompt_tokens"] == ids  # llama.cpp's tokenizer = the engine's, special tokens included
            assert answer["tokens"] == engine_greedy(model, tokenizer, ids, 16), tokenizer.decode(answer["tokens"])
        # every token the engine stops at ends generation in llama.cpp too (<|im_end|>/<|endoftext|>, <|eot_id|>/<|end_of_text|>)
        assert all(run["eog"][str(t)] for t in stops), run["eog"]
    return runs


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_llamacpp_answers_as_the_engine(arch, models, waimai_small, tmp_path) -> None:
    """The acceptance test: llama.cpp greedy-decodes the f16 GGUF of the fine-tuned model (merged, and base + LoRA
    GGUF) to the engine's tokens, and stops at the end-of-turn token where the engine does."""
    conversations = validation_prompts(waimai_small)
    f16, lora, q8_0 = assert_llamacpp_answers_as_the_engine(tmp_path, models[arch]["base"], models[arch]["adapter"], conversations, also=("q8_0",))
    for run in (f16, lora):  # the fine-tuned model answers a label and ends its turn
        assert sum(answer["stopped"] for answer in run["results"]) >= len(conversations) - 1
    # q8_0 is not bit-exact, but the fine-tuned model's answers (labels) must survive it
    assert [a["tokens"] for a in q8_0["results"]] == [a["tokens"] for a in f16["results"]]


def test_qwen3_gguf_answers_as_the_engine(tiny_model, tmp_path) -> None:
    """Qwen3 (q/k norms, a head size that is not hidden / heads), built from the tiny Qwen2's tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    base = tmp_path / "qwen3"
    shutil.copytree(tiny_model, base, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    qwen2 = json.loads((Path(tiny_model) / "config.json").read_text(encoding="utf-8"))
    torch.manual_seed(3)
    config = Qwen3Config(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         vocab_size=1024, max_position_embeddings=512, tie_word_embeddings=True, eos_token_id=qwen2["eos_token_id"],
                         pad_token_id=qwen2["pad_token_id"], bos_token_id=None)  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(base)
    meta, _ = read_gguf(export_(tmp_path / "meta", model=str(base), format="gguf")["path"])
    assert meta["general.architecture"] == "qwen3" and meta["qwen3.attention.key_length"] == 32
    conversations = [[SYSTEM, {"role": "user", "content": text}] for text in ("很快，好吃，味道足，量大", "送餐太慢了，菜都凉了")]
    assert_llamacpp_answers_as_the_engine(tmp_path, str(base), random_adapter(str(base), tmp_path / "lora"), conversations)


# ------------------------------------------------------------------------------------------------------ hf


def logits(model: Any, tokenizer: Any) -> torch.Tensor:
    ids = prompt_ids(tokenizer, [SYSTEM, {"role": "user", "content": "送餐很快，味道也不错，下次还点！"}])
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_hf_export_is_the_peft_model(arch, tiny_model, llama_model, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = {"qwen2": tiny_model, "llama": llama_model}[arch]
    adapter = random_adapter(base, tmp_path / "lora")
    result = export_(tmp_path, model=base, adapter=adapter, format="hf")
    folder = Path(result["path"])
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    peft_model, engine_tokenizer = load_model(base, adapter)
    torch.testing.assert_close(logits(exported, tokenizer), logits(peft_model, engine_tokenizer), atol=1e-5, rtol=1e-5)
    assert tokenizer.chat_template == engine_tokenizer.chat_template
    assert json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"] == engine_tokenizer.chat_template
    # generation_config stops at every end-of-turn id the engine stops at
    eos = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    expected = {"qwen2": ["<|im_end|>", "<|endoftext|>"], "llama": ["<|eot_id|>", "<|end_of_text|>"]}[arch]
    assert set(eos) == stop_token_ids(peft_model, engine_tokenizer) == set(tokenizer.convert_tokens_to_ids(expected))
    assert result["stop_tokens"][0] == expected[0] and set(result["stop_tokens"]) == set(expected)
    assert result["eos_token"] == expected[0] and result["architecture"] == arch and result["quantize"] is None
    assert result["parameters"] == sum(p.numel() for p in exported.parameters())
    assert {f["name"]: (f["bytes"], f["sha256"]) for f in result["files"]} == {
        p.name: (p.stat().st_size, sha256(p)) for p in folder.iterdir()
    }
    assert not list(tmp_path.glob(".export.tmp-*"))  # the temporary folder was renamed


@pytest.mark.parametrize("tied", [True, False], ids=["weight-tying", "untied-head"])
def test_hf_export_of_an_adapter_with_modules_to_save(tied, tiny_model, tmp_path) -> None:
    """A trained embedding (modules_to_save) is merged in; a tied base whose head did not follow keeps its own head."""
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(tiny_model, tmp_path / "lora", modules_to_save=["embed_tokens"], ensure_weight_tying=tied)
    folder = Path(export_(tmp_path, model=tiny_model, adapter=adapter, format="hf")["path"])
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    peft_model, tokenizer = load_model(tiny_model, adapter)
    torch.testing.assert_close(logits(exported, tokenizer), logits(peft_model, tokenizer), atol=1e-5, rtol=1e-5)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is tied


def test_hf_export_merges_in_fp32_and_keeps_the_base_dtype(tiny_model, tmp_path) -> None:
    """A bf16 base: the merge runs in fp32 and the folder is saved in bf16; without an adapter (a full fine-tune)
    the weights are copied unchanged."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = tmp_path / "bf16"
    shutil.copytree(tiny_model, base, ignore=shutil.ignore_patterns("*.safetensors"))
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(base)
    adapter = random_adapter(str(base), tmp_path / "lora")
    merged = load_file(Path(export_(tmp_path / "m", model=str(base), adapter=adapter, format="hf")["path"]) / "model.safetensors")
    peft_model, _ = load_model(str(base), adapter)  # fp32
    want = peft_model.merge_and_unload().state_dict()
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, want[name].to(torch.bfloat16), atol=0, rtol=0)
    copied = load_file(Path(export_(tmp_path / "c", model=str(base), format="hf")["path"]) / "model.safetensors")
    source = load_file(base / "model.safetensors")
    assert copied.keys() == source.keys() and all(torch.equal(copied[k], source[k]) for k in source)


def test_hf_adapter_only_is_a_peft_folder_naming_its_base(tiny_model, adapter, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export_(tmp_path, model=tiny_model, adapter=adapter, format="hf", adapter_only=True)
    folder = Path(result["path"])
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == str(Path(tiny_model).resolve())
    assert sha256(folder / "adapter_model.safetensors") == sha256(Path(adapter) / "adapter_model.safetensors")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), str(folder)).eval()
    peft_model, tokenizer = load_model(tiny_model, adapter)
    torch.testing.assert_close(logits(loaded, tokenizer), logits(peft_model, tokenizer))
    assert result["adapter_only"] is True and result["parameters"] == sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


def test_export_through_the_engine_process_reports_progress_and_the_result_schema(tiny_model, adapter, tmp_path, run_engine) -> None:
    """A k-quant: libllama runs inside the engine, and its logging must not reach stdout (every line there is an event)."""
    if not LIBLLAMA.is_file():
        pytest.skip(f"{LIBLLAMA} is not installed")
    request = {"model": tiny_model, "adapter": adapter, "format": "gguf", "quantize": "q4_k_m", "llama_library": str(LIBLLAMA), "output_dir": str(tmp_path / "e")}
    code, events = run_engine("export", request)  # run_engine parses every stdout line as JSON
    assert code == 0, events[-1]
    phases = {e["phase"] for e in events if e["type"] == "progress"}
    assert {"merge", "convert", "write", "quantize"} <= phases
    result = events[-1]["data"]
    # src/engine/protocol.ts's ExportResult, key for key
    assert set(result) == {"format", "path", "files", "architecture", "quantize", "adapter_only", "chat_template", "bos_token",
                           "eos_token", "stop_tokens", "context_length", "parameters"}  # fmt: skip
    assert result["path"] == str(tmp_path / "e" / "model.gguf") and result["files"][0]["name"] == "model.gguf"
    assert result["context_length"] == 512 and result["bos_token"] is None
    code, events = run_engine("export", {"model": tiny_model, "format": "hf", "quantize": "q8_0", "output_dir": str(tmp_path / "x")})
    assert code == 1 and events[-1]["code"] == "invalid_request" and events[-1]["param"] == "quantize"
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------- gguf


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """({key: value}, {tensor name: ReaderTensor}) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def as_float(tensor: Any) -> np.ndarray:
    from gguf import quants

    return quants.dequantize(tensor.data, tensor.tensor_type)  # the reader's arrays are in PyTorch's (rows, columns) order


def llama_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order for Llama q/k: per head, rows (j, j + d/2) become (2j, 2j + 1)."""
    d = weight.shape[0] // heads
    order = [h * d + j + half * d // 2 for h in range(heads) for j in range(d // 2) for half in (0, 1)]
    return weight[order]


def expected_tensors(base: str, adapter: str, arch: str) -> dict[str, np.ndarray]:
    """The PEFT-merged weights under their GGUF names, Llama's q/k rows in llama.cpp's order."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    model, _ = load_model(base, adapter)
    model = model.merge_and_unload()
    config = model.config
    names = get_tensor_name_map({"qwen2": MODEL_ARCH.QWEN2, "llama": MODEL_ARCH.LLAMA}[arch], config.num_hidden_layers)
    out = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if arch == "llama" and ".attn_q." in name:
            tensor = llama_rotary_rows(tensor, config.num_attention_heads)
        if arch == "llama" and ".attn_k." in name:
            tensor = llama_rotary_rows(tensor, config.num_key_value_heads)
        out[name] = tensor.float().numpy()
    return out


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_gguf_f16_metadata_vocabulary_and_tensors(arch, tiny_model, llama_model, tmp_path) -> None:
    from gguf import GGMLQuantizationType as Q, TokenType

    base = {"qwen2": tiny_model, "llama": llama_model}[arch]
    adapter = random_adapter(base, tmp_path / "lora")
    result = export_(tmp_path, model=base, adapter=adapter, format="gguf", name="外卖评论 waimai")
    meta, tensors = read_gguf(result["path"])
    _, tokenizer = load_model(base)
    config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    assert meta["general.architecture"] == arch and meta["general.name"] == "外卖评论 waimai" and meta["general.file_type"] == 1
    assert {k.removeprefix(arch + "."): meta[k] for k in meta if k.startswith(arch + ".")} == pytest.approx({
        "vocab_size": 1024, "context_length": 512, "embedding_length": 64, "block_count": 2, "feed_forward_length": 256,
        "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 16, "attention.value_length": 16,
        "rope.dimension_count": 16, "rope.freq_base": config["rope_parameters"]["rope_theta"],
        "attention.layer_norm_rms_epsilon": config["rms_norm_eps"],
    })  # fmt: skip

    # vocabulary: every token and merge as tokenizer.json has them; special tokens are control tokens
    spec = json.loads((Path(base) / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"  # tiny models split as Qwen2
    assert meta["tokenizer.ggml.tokens"] == [by_id.get(i, f"[PAD{i}]") for i in range(1024)]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in spec["model"]["merges"]]
    specials = {t["id"] for t in spec["added_tokens"] if t["special"]}
    assert [i for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == TokenType.CONTROL] == sorted(specials)
    ids = lambda *names: [tokenizer.convert_tokens_to_ids(n) for n in names]  # noqa: E731
    if arch == "qwen2":
        assert [meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.eot_token_id"]] == ids("<|im_end|>", "<|im_end|>")
        assert "tokenizer.ggml.bos_token_id" not in meta
    else:
        assert [meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.eot_token_id"]] == ids("<|eot_id|>", "<|eot_id|>")
        assert meta["tokenizer.ggml.bos_token_id"] == ids("<|begin_of_text|>")[0]
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the template writes bos itself
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template == result["chat_template"]

    # tensors: the merged weights, 2-D in f16 and 1-D (norms, biases) in f32; a tied head is left out
    expected = expected_tensors(base, adapter, arch)
    assert set(tensors) == set(expected) and "output.weight" not in tensors
    for name, want in expected.items():
        assert tensors[name].tensor_type == (Q.F16 if want.ndim == 2 else Q.F32), name
        np.testing.assert_array_equal(as_float(tensors[name]), want.astype(np.float16 if want.ndim == 2 else np.float32).astype(np.float32), err_msg=name)


def test_gguf_q8_0_is_within_its_error(tiny_model, adapter, tmp_path) -> None:
    from gguf import GGMLQuantizationType as Q

    result = export_(tmp_path, model=tiny_model, adapter=adapter, format="gguf", quantize="q8_0")
    meta, tensors = read_gguf(result["path"])
    assert meta["general.file_type"] == 7
    for name, want in expected_tensors(tiny_model, adapter, "qwen2").items():
        got = as_float(tensors[name])
        if want.ndim == 1:
            np.testing.assert_array_equal(got, want)
            continue
        assert tensors[name].tensor_type == Q.Q8_0
        # one f16 scale d = amax / 127 per 32 weights: off by half a step, plus up to 127 times the scale's rounding (2^-11 d)
        step = np.abs(want.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        assert (np.abs(got.reshape(-1, 32) - want.reshape(-1, 32)) <= (0.5 + 127 * 2**-11) * step + 1e-8).all(), name


def test_rows_that_do_not_fill_blocks_fall_back_to_f16_and_vectors_stay_f32() -> None:
    from gguf import GGMLQuantizationType as Q

    from weitiao_engine.export.quantize import encode

    assert encode("w", np.ones((4, 48), np.float32), Q.Q8_0)[1] == Q.F16
    assert encode("w", np.ones((4, 64), np.float32), Q.Q4_0)[1] == Q.Q4_0
    assert encode("norm", np.ones(64, np.float32), Q.Q8_0)[1] == Q.F32


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_lora_gguf_holds_a_and_b_in_llamacpp_orientation(arch, tiny_model, llama_model, tmp_path) -> None:
    from safetensors.torch import load_file

    base = {"qwen2": tiny_model, "llama": llama_model}[arch]
    adapter = random_adapter(base, tmp_path / "lora")
    result = export_(tmp_path, model=base, adapter=adapter, format="gguf", adapter_only=True, quantize="f32")
    meta, tensors = read_gguf(result["path"])
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == 8
    assert meta["general.architecture"] == arch and result["path"].endswith("adapter.gguf")
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    assert len(tensors) == len(weights)
    layer = {"q_proj": ("attn_q", 4), "k_proj": ("attn_k", 2), "v_proj": ("attn_v", 0), "o_proj": ("attn_output", 0),
             "gate_proj": ("ffn_gate", 0), "up_proj": ("ffn_up", 0), "down_proj": ("ffn_down", 0)}  # fmt: skip
    for key, value in weights.items():
        parts = key.split(".")  # base_model.model.model.layers.<i>.<self_attn|mlp>.<proj>.lora_<A|B>.weight
        gguf_name, heads = layer[parts[6]]
        if parts[7] == "lora_B" and arch == "llama" and heads:
            value = llama_rotary_rows(value, heads)
        got = as_float(tensors[f"blk.{parts[4]}.{gguf_name}.weight.{parts[7].lower()}"])
        np.testing.assert_array_equal(got.reshape(value.shape), value.numpy())  # PEFT's (r, in) / (out, r): ggml's ne reversed


def test_lora_gguf_refuses_modules_to_save(tiny_model, tmp_path) -> None:
    adapter = random_adapter(tiny_model, tmp_path / "lora", modules_to_save=["embed_tokens"], ensure_weight_tying=True)
    with pytest.raises(EngineError) as e:
        export_(tmp_path, model=tiny_model, adapter=adapter, format="gguf", adapter_only=True)
    assert e.value.code == "invalid_request" and e.value.param == "adapter_only" and "modules_to_save" in e.value.message


def test_k_quants_need_libllama_and_llamacpp_loads_them(tiny_model, adapter, tmp_path) -> None:
    with pytest.raises(EngineError) as e:
        export_(tmp_path, model=tiny_model, adapter=adapter, format="gguf", quantize="q4_k_m")
    assert (e.value.code, e.value.param) == ("invalid_request", "quantize") and "llama_model_quantize" in e.value.message
    if not LIBLLAMA.is_file():
        pytest.skip(f"{LIBLLAMA} is not installed")
    result = export_(tmp_path, model=tiny_model, adapter=adapter, format="gguf", quantize="q4_k_m", llama_library=str(LIBLLAMA))
    meta, tensors = read_gguf(result["path"])
    assert meta["general.file_type"] == 15 and [f["name"] for f in result["files"]] == ["model.gguf"]
    assert {t.tensor_type.name for t in tensors.values()} >= {"Q4_K", "F32"}
    model, tokenizer = load_model(tiny_model, adapter)
    conversation = [SYSTEM, {"role": "user", "content": "很快，好吃，味道足，量大"}]
    answer = llamacpp_greedy(tmp_path, [(result["path"], None)], [render(tokenizer, conversation, True)], max_tokens=4)[0]["results"][0]
    assert answer["prompt_tokens"] == prompt_ids(tokenizer, conversation) and len(answer["tokens"]) >= 1


def test_unknown_pre_tokenizers_and_glm_are_refused_clearly(tiny_model, tmp_path) -> None:
    from types import SimpleNamespace

    from weitiao_engine.export import gguf_model

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    spec = json.loads((copy / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,5}|\s+"
    (copy / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(EngineError) as e:
        export_(tmp_path, model=str(copy), format="gguf")
    assert e.value.param == "format" and r"\p{N}{1,5}" in e.value.message and "qwen2" in e.value.message
    assert not (tmp_path / "export").exists()
    with pytest.raises(EngineError) as e:
        gguf_model.architecture(SimpleNamespace(model_type="glm4"))
    assert e.value.param == "format" and "GLM-4" in e.value.message


def test_llama3_tokenizers_are_llama_bpe(tiny_model, tmp_path) -> None:
    from weitiao_engine.export.gguf_vocab import pre_tokenizer_name

    spec = json.loads((Path(tiny_model) / "tokenizer.json").read_text(encoding="utf-8"))
    assert pre_tokenizer_name(spec) == "qwen2"
    split = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace(r"|\p{N}|", r"|\p{N}{1,3}|")  # Meta-Llama-3's split: digits in threes
    assert pre_tokenizer_name(spec) == "llama-bpe"


def test_llama31_rope_scaling_writes_llamacpp_frequency_factors() -> None:
    """Llama 3.1's rope_type llama3: rope_freqs.weight holds the factor each base frequency is divided by,
    computed here from the published piecewise rule (wavelength against the original context)."""
    import math

    from transformers import LlamaConfig

    from weitiao_engine.export.gguf_model import rope_tensors

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}  # fmt: skip
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, rope_parameters=rope, max_position_embeddings=131072)
    [(name, factors)] = list(rope_tensors(config))
    expected = []
    for i in range(0, 128, 2):
        wavelength = 2 * math.pi * 500000.0 ** (i / 128)
        if wavelength < 8192 / 4.0:
            expected.append(1.0)
        elif wavelength > 8192 / 1.0:
            expected.append(8.0)
        else:
            smooth = (8192 / wavelength - 1.0) / (4.0 - 1.0)
            expected.append(1 / ((1 - smooth) / 8.0 + smooth))
    assert name == "rope_freqs.weight"
    np.testing.assert_allclose(factors, expected, rtol=1e-5)
