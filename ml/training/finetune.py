"""The SFT entry point the pipeline calls: one process (ml/training/sft.py), or several under FSDP2
when the spec asks for `nproc > 1` (ml/training/distributed.py, which runs sft.py's loop)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.training import distributed, sft
from shared.assets import ModelSource
from shared.pipeline_types import SftSpec


def train(
    rows: Sequence[dict[str, Any]], source: ModelSource, spec: SftSpec, workdir: Path, progress: sft.Progress
) -> sft.SftResult:
    if spec.nproc > 1:
        if not rows:
            raise ValueError("the dataset has no rows")
        return distributed.launch(rows, source, spec, workdir, progress)
    return sft.train(rows, source, spec, workdir, progress)
