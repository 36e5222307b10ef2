"""What the coordinator's command-line entry points share; imports nothing heavy, so `--help`
stays quick (the CLI and the pipeline's CLI both build on it without importing each other)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_once(work: Callable[[Any], Any]) -> Any:
    """`coordinator.db.run_once`, imported on use: starting the CLI (and --help) loads no SQLAlchemy."""
    from coordinator.db import run_once as run

    return run(work)
