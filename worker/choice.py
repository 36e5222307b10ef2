"""Which model a worker started without --model serves: of the models with jobs waiting, one that
fits its memory and that it has (or can download), by a pure rule that the daemon's picker feeds.

The rule, in order: a model must have jobs waiting, be here or downloadable, have a known size and
fit the memory budget with room for activations and the KV cache (`OVERHEAD`). Of those that pass,
one present here beats one to download, the model already loaded beats a switch, then the most jobs
waiting, then the smallest; the name breaks ties.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from shared.protocol import ARTIFACT_MODEL_PREFIX, WaitingModel

GIB = 1024**3
OVERHEAD = 1.3  # weights x this: activations, the KV cache of a batch, the CUDA context


class Presence(Enum):
    LOCAL = "present here"
    DOWNLOADABLE = "downloadable from the hub"
    MISSING = "not here, and the hub is not reachable"


@dataclass(frozen=True)
class Budget:
    """The memory a model may take and what it is (`where`, for people), and the bytes a parameter
    takes at the dtype the engine will run."""

    memory_bytes: int
    where: str
    bytes_per_parameter: int

    def need(self, model: WaitingModel) -> int | None:
        """Bytes the model needs loaded here, or None when its size is unknown. A size on disk
        stands in for the parameter count at the dtype it is stored in."""
        if model.parameters is not None:
            return int(model.parameters * self.bytes_per_parameter * OVERHEAD)
        if model.size_bytes is not None:
            return int(model.size_bytes * OVERHEAD)
        return None


@dataclass(frozen=True)
class Choice:
    """A model to serve (None: none fits now) and why, with why each other model was passed over."""

    model: str | None
    reason: str
    mode: Literal["auto", "fixed"] = "auto"
    skipped: tuple[str, ...] = ()
    at: float = field(default_factory=time.time)

    def status(self) -> dict[str, Any]:
        """How `flywheel worker status` shows it (`daemon.json`'s "choice")."""
        return {"mode": self.mode, "model": self.model, "reason": self.reason,
                "skipped": list(self.skipped), "at": self.at}  # fmt: skip


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB // 10 else f"{n / 2**20:.0f} MiB"


def _merged(waiting: Sequence[WaitingModel]) -> list[WaitingModel]:
    """One entry per name: campaigns of one model at several revisions are served by one load."""
    by_name: dict[str, WaitingModel] = {}
    for model in waiting:
        seen = by_name.get(model.name)
        if seen is None:
            by_name[model.name] = model
        else:
            by_name[model.name] = seen.model_copy(
                update={"queued_jobs": seen.queued_jobs + model.queued_jobs}
            )
    return list(by_name.values())


def _why_not(
    model: WaitingModel, presence: Presence, need: int | None, budget: Budget, refused: Mapping[str, str]
) -> str | None:
    if model.name in refused:
        return f"failed to load here: {refused[model.name]}"
    if model.queued_jobs <= 0:
        return "no jobs waiting"
    if model.name.startswith(ARTIFACT_MODEL_PREFIX) and model.base_model is None:
        return "a pipeline artifact whose base model the coordinator does not name"
    if presence is Presence.MISSING:
        return presence.value
    if need is None:
        return "its size is unknown (the coordinator and this machine lack its config)"
    if need > budget.memory_bytes:
        return f"needs ~{gib(need)}, more than the {gib(budget.memory_bytes)} of {budget.where}"
    return None


def choose(
    waiting: Sequence[WaitingModel],
    presence: Mapping[str, Presence],
    budget: Budget,
    current: str | None = None,
    refused: Mapping[str, str] | None = None,
) -> Choice:
    """The model to serve of those `waiting`, by the rule in this module's docstring. `presence`
    says where each name is (a model missing from it counts as missing); `current` is the model
    loaded now; `refused` names models that failed to load here, with the error."""
    fits: list[tuple[tuple[bool, bool, int, int, str], WaitingModel, int]] = []
    skipped = []
    for model in _merged(waiting):
        where = presence.get(model.name, Presence.MISSING)
        need = budget.need(model)
        why = _why_not(model, where, need, budget, refused or {})
        if why is not None or need is None:
            skipped.append(f"{model.name}: {why}")
            continue
        key = (where is not Presence.LOCAL, model.name != current, -model.queued_jobs, need, model.name)
        fits.append((key, model, need))
    if not fits:
        why = "no model has jobs waiting" if not skipped else "no model with jobs waiting fits this worker"
        return Choice(None, why, skipped=tuple(skipped))
    _, best, need = min(fits, key=lambda fit: fit[0])
    where = presence[best.name]
    others = tuple(f"{m.name}: {m.queued_jobs} jobs waiting, ranked lower" for _, m, _ in sorted(fits)[1:])
    reason = (
        f"{best.queued_jobs} jobs waiting; {where.value}; needs ~{gib(need)} of the "
        f"{gib(budget.memory_bytes)} of {budget.where}" + ("; already loaded" if best.name == current else "")
    )
    return Choice(best.name, reason, skipped=(*others, *skipped))
