"""Every selection and refinement step by name, and the loop that applies a spec's steps in order
(the filters of selection.py and the refinement steps of refine.py, which build on them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from coordinator.pipeline.ops import refine, selection
from coordinator.pipeline.ops.selection import Candidate, Context, StepReport
from shared.pipeline_types import SelectionStep

STEPS: dict[str, Callable[[list[Candidate], Any, int, Context], None]] = {**selection.STEPS, **refine.STEPS}


def run(
    records: Iterable[dict[str, Any]], steps: Sequence[SelectionStep], ctx: Context
) -> tuple[list[Candidate], list[StepReport]]:
    """Apply the steps in order; returns every candidate (kept or not) and a report per step."""
    cands = [Candidate(record=r) for r in records]
    reports = []
    for index, step in enumerate(steps):
        alive = [c for c in cands if c.dropped is None]
        ctx.progress(0.0, f"step {index} ({step.op}) over {len(alive)} traces")
        if alive:
            STEPS[step.op](alive, step, index, ctx)
        kept = sum(c.dropped is None for c in alive)
        reports.append(StepReport(step.op, step.model_dump(mode="json"), len(alive), kept))
    return cands, reports
