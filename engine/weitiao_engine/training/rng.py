"""Random number generators: seeding, and every RNG state training draws from (saved in each checkpoint, per
rank, so a resumed run draws the same dropout masks as an uninterrupted one)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .. import distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG training draws from, as plain lists and tensors (so torch.load(weights_only=True) reads it)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"],
                  "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rank_rng_state(saved: dict[str, Any]) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint; rank 0's when the run that wrote it had fewer processes."""
    per_rank = saved.get("rng_per_rank") or [saved["rng"]]  # absent before scale-out
    return per_rank[distributed.rank()] if distributed.rank() < len(per_rank) else per_rank[0]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
         "has_gauss": n["has_gauss"], "gauss": n["gauss"]}
    )  # fmt: skip
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
