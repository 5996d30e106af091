"""Text embeddings for `text_similarity`'s cosine metric, from a local sentence-embedding model folder
(e.g. a sentence-transformers model such as bge-small-zh): the pooling its `1_Pooling/config.json`
names (CLS or mean; mean when absent), then unit length.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable


@lru_cache(maxsize=2)
def load_embedder(model_dir: str) -> Callable[[list[str]], "object"]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    pooling = Path(model_dir, "1_Pooling", "config.json")
    cls = pooling.exists() and bool(json.loads(pooling.read_text(encoding="utf-8")).get("pooling_mode_cls_token"))

    @torch.no_grad()
    def embed(texts: list[str]):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        if cls:
            vectors = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(vectors.float(), dim=-1)

    return embed
