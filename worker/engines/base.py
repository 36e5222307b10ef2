"""The engine protocol: turn leased jobs into generations, one model per engine."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.protocol import EngineInfo, FinishReason, JobSpec

# Called between decode steps; True asks the engine to abandon the batch (shutdown requested).
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class Generation:
    """One finished completion.

    `completion_token_ids` includes the stop token that ended it (finish_reason `stop`), because
    that token was sampled by the same seeded rule and a validator checks it too; `text` does not.
    `logprobs[i]` is the sampler's log-probability of token i (see docs/worker.md).
    """

    text: str
    completion_token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    prompt_tokens: int
    generate_s: float
    verifiable: bool = True


@runtime_checkable
class Engine(Protocol):
    """A loaded model that generates with the verifiable sampler (shared/sampling.py)."""

    info: EngineInfo
    model_name: str
    verifiable: bool  # False: the backend cannot apply the seeded sampler; traces can't be validated
    default_batch: int  # the most jobs `--batch-size auto` puts in one batch on this engine and device

    def generate(self, jobs: Sequence[JobSpec], should_stop: ShouldStop | None = None) -> list[Generation]:
        """One Generation per job, in order. May return fewer only when `should_stop` fired."""
        ...

    def max_batch(self, jobs: Sequence[JobSpec]) -> int:
        """How many jobs shaped like these fit in one batch in the memory free now (>= 1)."""
        ...

    def unsupported(self, job: JobSpec) -> str | None:
        """Why this engine cannot run the job as specified, or None; such jobs are given back."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SwapsWeights(Protocol):
    """An engine that can put another version's weights into the model it has loaded (same
    architecture, one safetensors file of full weights): much cheaper than loading again."""

    def swap_weights(self, name: str, weights: Path) -> None:
        """Run `name` from now on, with the weights in `weights`; raises EngineError."""
        ...


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)[:64]
    except importlib.metadata.PackageNotFoundError:
        return ""
