"""A model's vocabulary size from its config, read without torch: the API process bounds the token
ids of a submission by it. Loading models for validation is the model code's (ml/scorer.py)."""

from __future__ import annotations

from shared.model_size import local_config, read_config
from shared.model_size import vocab_size as config_vocab

_VOCAB: dict[tuple[str, str | None], int] = {}


def vocab_size(name: str, revision: str | None = None) -> int | None:
    """The vocabulary size of a model from its config.json where this machine holds it (a bundled
    model, a local folder, or the Hugging Face cache), or None: read without torch, so the API
    process can bound token ids at submission. Found sizes are kept for the life of the process;
    a model not found is looked up again next time (it may be downloaded meanwhile)."""
    key = (name, revision)
    found = _VOCAB.get(key)
    if found is None:
        config = read_config(local_config(name, revision))
        found = config_vocab(config) if config is not None else None
        if found is not None:
            _VOCAB[key] = found
    return found
