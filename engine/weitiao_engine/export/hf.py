"""Hugging Face exports: a standalone merged model folder, or the PEFT adapter as it is."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..loading import checkpoint_dtype, load_model
from ..protocol import EngineError, log, progress
from ..tokens import auto_tokenizer
from .special import SpecialTokens


def load_merged(model_dir: str, adapter_dir: Optional[str]) -> tuple[Any, Any]:
    """The base with the adapter merged in (PEFT's merge_and_unload, in fp32), and the base's own tokenizer
    (load_model's copy may have a pad token set for batching, which is not part of the model)."""
    progress("merge", 0, 1, "loading / 加载模型")
    model, _ = load_model(model_dir, adapter_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = model.merge_and_unload()
        # A tied base whose embedding was trained (modules_to_save) without ensure_weight_tying has a head of its
        # own now: keep it, or save_pretrained would tie the head to the trained embedding.
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if model.config.tie_word_embeddings and head is not None and head.weight is not embedding.weight:
            if torch.equal(head.weight, embedding.weight):
                head.weight = embedding.weight
            else:
                log("the adapter trains the embedding but not the tied LM head: the export keeps them apart")
                model.config.tie_word_embeddings = False
                if hasattr(model.config, "get_text_config"):
                    model.config.get_text_config().tie_word_embeddings = False
        log(f"merged {adapter_dir} into {model_dir} / 已合并适配器")
    progress("merge", 1, 1)
    return model, auto_tokenizer(model_dir)


def save_model(model: Any, tokenizer: Any, model_dir: str, out: Path, special: SpecialTokens) -> None:
    """A folder transformers and vLLM load as is: weights in the base's dtype, tokenizer with its chat template,
    generation_config stopping at every end-of-turn token."""
    dtype = checkpoint_dtype(model_dir) or torch.float32
    progress("write", 0, 1, "saving / 保存")
    model.to(dtype)
    model.generation_config.eos_token_id = special.stop if len(special.stop) > 1 else special.stop[0]
    if special.bos is not None:
        model.generation_config.bos_token_id = special.bos
    if special.pad is not None:
        model.generation_config.pad_token_id = special.pad
    model.save_pretrained(out)
    # chat_template inside tokenizer_config.json (older vLLM and TGI read it only there); transformers reads both.
    tokenizer.save_pretrained(out, save_jinja_files=False)
    progress("write", 1, 1)


def copy_adapter(adapter_dir: str, model_dir: str, tokenizer: Any, out: Path) -> int:
    """The PEFT adapter for multi-LoRA servers (vLLM --lora-modules, LoRAX): adapter_config.json naming the base,
    adapter_model.safetensors, and the tokenizer with its chat template. Returns the adapter's parameter count."""
    from safetensors import safe_open

    source = Path(adapter_dir)
    weights = source / "adapter_model.safetensors"
    if not weights.is_file():
        raise EngineError("not_found", f"no adapter_model.safetensors in {adapter_dir} / 适配器目录中没有 adapter_model.safetensors", "adapter")
    config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(Path(model_dir).resolve())
    progress("write", 0, 1, "copying the adapter / 复制适配器")
    shutil.copyfile(weights, out / "adapter_model.safetensors")
    (out / "adapter_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out, save_jinja_files=False)
    progress("write", 1, 1)
    with safe_open(str(weights), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
