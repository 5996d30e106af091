"""Command `export`: a model (a base, or a base with its LoRA adapter merged in) for use outside weitiao.

- `hf`: a standalone Hugging Face folder (hf.py), or with `adapter_only` the PEFT adapter as it is.
- `gguf`: `model.gguf` for llama.cpp (gguf_model.py, gguf_vocab.py, quantize.py), or with `adapter_only`
  `adapter.gguf`, a LoRA for llama.cpp's --lora on the base's own GGUF (gguf_lora.py).

Everything is written into a temporary folder beside `output_dir` and renamed at the end (atomic.atomic_dir),
so the control plane never sees half an export.

```python
run(ExportRequest(model="/…/models/tiny", adapter="/…/jobs/ftjob-1/model", format="gguf", quantize="q8_0", output_dir="/…/exports/e1"))
```
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir
from ..protocol import EngineError, ExportRequest, log
from .special import SpecialTokens, generation_eos, special_tokens


def run(request: ExportRequest) -> dict[str, Any]:
    """Writes the export into `request.output_dir`; returns what src/engine/protocol.ts's ExportResult describes."""
    _check(request)
    out = Path(request.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        if request.format == "hf":
            facts = _export_hf(request, tmp)
        else:
            facts = _export_gguf(request, tmp)
    files = [_file_entry(out, p) for p in sorted(out.rglob("*")) if p.is_file()]
    main = out if request.format == "hf" else out / facts.pop("file")
    log(f"exported {request.format} to {main} / 导出完成")
    return {"format": request.format, "path": str(main), "files": files, "adapter_only": request.adapter_only, **facts}


def _check(request: ExportRequest) -> None:
    if request.adapter_only and request.adapter is None:
        raise EngineError("invalid_request", "adapter_only needs an adapter / adapter_only 需要提供适配器", "adapter_only")
    if request.format == "hf" and request.quantize != "f16":
        raise EngineError("invalid_request", "quantize applies to gguf exports only / 只有 GGUF 导出支持量化", "quantize")
    if request.format == "gguf" and request.adapter_only and request.quantize not in ("f32", "f16"):
        raise EngineError("invalid_request", "a LoRA GGUF is written in f32 or f16 / LoRA GGUF 只能是 f32 或 f16", "quantize")


def _export_hf(request: ExportRequest, tmp: Path) -> dict[str, Any]:
    from . import hf

    if request.adapter_only:
        from ..tokens import auto_tokenizer
        from transformers import AutoConfig

        tokenizer = auto_tokenizer(request.model)
        config = AutoConfig.from_pretrained(request.model)
        count = hf.copy_adapter(request.adapter, request.model, tokenizer, tmp)
        special = special_tokens(tokenizer, generation_eos(request.model))
        return _facts(tokenizer, special, config, count, quantize=None)
    model, tokenizer = hf.load_merged(request.model, request.adapter)
    special = special_tokens(tokenizer, model.generation_config.eos_token_id)
    hf.save_model(model, tokenizer, request.model, tmp, special)
    return _facts(tokenizer, special, model.config, sum(p.numel() for p in model.parameters()), quantize=None)


def _export_gguf(request: ExportRequest, tmp: Path) -> dict[str, Any]:
    from . import gguf_file

    if request.adapter_only:
        from ..tokens import auto_tokenizer
        from transformers import AutoConfig

        tokenizer = auto_tokenizer(request.model)
        config = AutoConfig.from_pretrained(request.model)
        special = special_tokens(tokenizer, generation_eos(request.model))
        count = gguf_file.write_lora(request, config, tmp / "adapter.gguf")
        return {**_facts(tokenizer, special, config, count, request.quantize), "file": "adapter.gguf"}
    from . import hf

    model, tokenizer = hf.load_merged(request.model, request.adapter)
    special = special_tokens(tokenizer, model.generation_config.eos_token_id)
    count = gguf_file.write_model(request, model, tokenizer, special, tmp)
    return {**_facts(tokenizer, special, model.config, count, request.quantize), "file": "model.gguf"}


def _facts(tokenizer: Any, special: SpecialTokens, config: Any, parameters: int, quantize: Any) -> dict[str, Any]:
    name = lambda i: tokenizer.convert_ids_to_tokens(i) if i is not None else None  # noqa: E731
    return {
        "architecture": config.model_type,
        "quantize": quantize,
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
        "bos_token": name(special.bos),
        "eos_token": name(special.eos),
        "stop_tokens": [name(i) for i in special.stop],
        "context_length": int(config.max_position_embeddings),
        "parameters": int(parameters),
    }


def _file_entry(root: Path, path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
