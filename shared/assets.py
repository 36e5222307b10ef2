"""Locations of data files that ship inside the distribution."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_MODEL_NAME = "flywheel/tiny-arith"


def tiny_model_dir() -> Path:
    """The bundled tiny arithmetic model (see shared/assets/tiny-arith/TRAINING.md)."""
    return ASSETS / "tiny-arith"


def resolve_model(name: str) -> str:
    """Map a model name to something `from_pretrained` can open; bundled names map to paths."""
    if name == TINY_MODEL_NAME:
        return str(tiny_model_dir())
    return name
