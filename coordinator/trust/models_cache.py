"""A model's vocabulary size from its config, read without torch: the API process bounds the token
ids of a submission by it. Loading models for validation is the model code's (ml/scorer.py)."""

from __future__ import annotations

import json
from pathlib import Path

from shared.assets import resolve_model

_VOCAB: dict[tuple[str, str | None], int] = {}


def vocab_size(name: str, revision: str | None = None) -> int | None:
    """The vocabulary size of a model from its config.json where this machine holds it (a bundled
    model, a local folder, or the Hugging Face cache), or None: read without torch, so the API
    process can bound token ids at submission. Found sizes are kept for the life of the process;
    a model not found is looked up again next time (it may be downloaded meanwhile)."""
    key = (name, revision)
    found = _VOCAB.get(key)
    if found is None:
        found = _read_vocab(_local_config(resolve_model(name), revision))
        if found is not None:
            _VOCAB[key] = found
    return found


def local_config(name: str, revision: str | None = None) -> Path | None:
    """The config.json of a model where this machine holds it (see `vocab_size`), or None."""
    return _local_config(resolve_model(name), revision)


def _local_config(path: str, revision: str | None) -> Path | None:
    folder = Path(path)
    if (folder / "config.json").is_file():
        return folder / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # a coordinator installed without the model libraries
        return None
    try:
        cached = try_to_load_from_cache(path, "config.json", revision=revision)
    except ValueError:  # not a repository id (a path that does not exist here)
        return None
    return Path(cached) if isinstance(cached, str) else None


def _read_vocab(config: Path | None) -> int | None:
    """`vocab_size` of a config (or of its text model's, for a multimodal config)."""
    if config is None:
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for part in (data, data.get("text_config") or {}):
        value = part.get("vocab_size") if isinstance(part, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None
