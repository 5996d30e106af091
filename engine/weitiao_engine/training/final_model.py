"""The trained model in `<output_dir>/model/`: the recipe's weights, the tokenizer, and weitiao.json (lineage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .. import __version__, distributed
from ..atomic import atomic_dir
from ..protocol import log
from .state import TrainingState


def save_final_model(state: TrainingState, write_weights: Callable[[Path], None], **lineage: Any) -> str:
    """Writes `<output_dir>/model/` atomically (rank 0 only): `write_weights(directory)`, the tokenizer and
    weitiao.json, whose base fields `lineage` extends (format, precision, frozen…)."""
    final = state.output_dir / "model"
    if not distributed.is_main():
        return str(final)
    with atomic_dir(final) as tmp:
        write_weights(tmp)
        state.tokenizer.save_pretrained(tmp, save_jinja_files=False)
        record = {
            "base_model": str(Path(state.request.base_model).resolve()),
            "method": state.request.method,
            **lineage,
            "steps": state.step,
            "total_steps": state.total_steps,
            "trained_tokens": state.trained_tokens,
            "final_train_loss": state.train_loss,
            "final_valid_loss": state.valid_loss,
            "engine_version": __version__,
            "request": state.request.model_dump(),
        }
        (tmp / "weitiao.json").write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log(f"model saved to {final} / 模型已保存")
    return str(final)
