"""Training recipes, one per method, each readable top to bottom (setup / train / save_checkpoint / save_final);
the pieces they share are plain functions in training/, and no recipe imports another.

`train` runs `run(request)` here, which picks the recipe by `request.method`:

    lora, qlora -> lora_finetune.run      (a LoRA adapter on a frozen base)
    full        -> full_finetune.run      (every weight, saved as a complete Hugging Face model)
    dpo         -> dpo.run                (preference pairs; a LoRA policy against the base as reference)
    reinforcement -> grpo.run             (answers sampled and rewarded by the job's grader; GRPO)

Continued fine-tuning (`base_adapter` set) is handled here once for every method: the adapter is merged
into its base (PEFT's merge_and_unload) and saved as `<output_dir>/base`, a plain model the recipe then
trains as if it were the base. The final model's weitiao.json records both ancestors.

`nproc > 1` is handled here too: this process becomes the launcher (distributed.launch) of N torchrun
workers, each of which comes back here and runs the recipe inside a process group.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from .. import distributed
from ..atomic import atomic_dir

RECIPES = {
    "lora": "weitiao_engine.recipes.lora_finetune",
    "qlora": "weitiao_engine.recipes.lora_finetune",
    "full": "weitiao_engine.recipes.full_finetune",
    "dpo": "weitiao_engine.recipes.dpo",
    "reinforcement": "weitiao_engine.recipes.grpo",
}


def run(request) -> dict[str, Any]:
    """Runs the recipe of `request.method`; merges `base_adapter` into the base first when one is given."""
    from ..protocol import EngineError

    module_name = RECIPES.get(request.method)
    if module_name is None:
        raise EngineError("invalid_request", f"no recipe for method '{request.method}' / 不支持的训练方法", "method")
    ranks = distributed.processes(request)  # nproc per host × hosts (torchrun's PET_NNODES)
    if ranks > 1 and request.method == "dpo":
        raise EngineError("invalid_request", "dpo runs in one process: set nproc to 1 / DPO 仅支持单进程训练", "nproc")
    if ranks > 1 and request.hyperparameters.batch_size % ranks:
        raise EngineError(
            "invalid_request",
            f"batch_size {request.hyperparameters.batch_size} is not divisible by the {ranks} processes: each process takes"
            f" an equal share of the batch / batch_size 必须能被进程数 {ranks} 整除",
            "hyperparameters.batch_size",
        )
    continued_from = None
    if getattr(request, "base_adapter", None):
        continued_from = {"base_model": str(Path(request.base_model).resolve()), "adapter": str(Path(request.base_adapter).resolve())}
        merged = merge_adapter(request.base_model, request.base_adapter, Path(request.output_dir) / "base")
        request = request.model_copy(update={"base_model": merged, "base_adapter": None})
    if ranks > 1 and not distributed.in_worker():
        # The launcher: the merge above ran once, here; the workers get the merged base.
        result = distributed.launch(request)
    elif ranks > 1:
        with distributed.worker_session():
            result = importlib.import_module(module_name).run(request)
    else:
        result = importlib.import_module(module_name).run(request)
    if continued_from and result.get("model_dir"):
        record_lineage(Path(result["model_dir"]), continued_from)
    return result


def merge_adapter(base_model: str, adapter_dir: str, target: Path) -> str:
    """base + LoRA adapter -> one plain model in `target` (reused when present: a resumed run merges once)."""
    from ..loading import load_model
    from ..protocol import log

    if (target / "config.json").is_file():
        return str(target)
    model, tokenizer = load_model(base_model, adapter_dir=adapter_dir)
    model = model.merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp, save_jinja_files=False)
    log(f"merged the adapter {adapter_dir} into {base_model} -> {target} / 已将适配器合并进基础模型")
    return str(target)


def record_lineage(model_dir: Path, continued_from: dict[str, str]) -> None:
    """Adds where the merged base came from to the model's weitiao.json."""
    path = model_dir / "weitiao.json"
    lineage = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    lineage["continued_from"] = continued_from
    path.write_text(json.dumps(lineage, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
