"""Locations of data files that ship inside the distribution, what a model folder holds, and where
a model comes from (`ModelSource`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_MODEL_NAME = "flywheel/tiny-arith"
# Base-model files a serving directory needs besides the weights: what the trainer copies beside a
# checkpoint and what a worker copies beside a downloaded policy version.
SERVING_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def is_sha256(value: str) -> bool:
    """A lowercase hex sha256: how artifacts (checkpoints, policy versions) are named."""
    return bool(_SHA256.match(value))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tiny_model_dir() -> Path:
    """The bundled tiny arithmetic model (see shared/assets/tiny-arith/TRAINING.md)."""
    return ASSETS / "tiny-arith"


def resolve_model(name: str) -> str:
    """Map a model name to something `from_pretrained` can open; bundled names map to paths."""
    if name == TINY_MODEL_NAME:
        return str(tiny_model_dir())
    return name


@dataclass(frozen=True)
class ModelSource:
    """`base` is what `from_pretrained` opens (a directory or a Hugging Face id: config, tokenizer,
    weights); `weights`, when given, is one safetensors file of the full state dict laid over the
    base's weights: how a checkpoint or an RL policy version (`flywheel-artifact/<sha256>`) is
    loaded on top of the base model it was trained from."""

    base: str
    weights: Path | None = None
    revision: str | None = None

    @classmethod
    def named(cls, name: str, revision: str | None = None) -> ModelSource:
        """A model by the name a job carries: a bundled model, a local folder or a Hugging Face id."""
        return cls(resolve_model(name), None, revision)
