"""reasoning-gym scoring, run inside a sandboxed service (see verifier/pool.py).

The dataset's own `score_answer` decides; this module only finds it, warms it on trusted data in
the long-lived service process, and runs it on the untrusted answer under the eval guard.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

import reasoning_gym
from reasoning_gym.factory import DATASETS

from verifier.scoring import safe_eval

MAX_DATASETS = 64
_scorers: dict[str, Callable[..., Any]] = {}
_datasets: dict[str, Any] = {}


def scorer(name: str) -> Callable[..., Any]:
    if name not in _scorers:
        if name not in DATASETS:
            raise KeyError(name)
        _scorers[name] = reasoning_gym.get_score_answer_fn(name)
    return _scorers[name]


def entry_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The entry as stored in the spec, or regenerated from (dataset, seed, size, options, index):
    reasoning-gym datasets are deterministic, and regenerating keeps types that JSON would lose
    (tuples in arc_agi's and rearc's metadata, for one)."""
    if "entry" in payload:
        return dict(payload["entry"])
    options = dict(payload.get("options") or {})
    key = json.dumps([payload["dataset"], payload["seed"], payload["size"], options], sort_keys=True)
    if key not in _datasets:
        if len(_datasets) >= MAX_DATASETS:
            _datasets.clear()
        _datasets[key] = reasoning_gym.create_dataset(
            str(payload["dataset"]), seed=int(payload["seed"]), size=int(payload["size"]), **options
        )
    return dict(_datasets[key][int(payload["index"])])


def prepare(payload: dict[str, Any]) -> None:
    """Runs in the long-lived process, on trusted data: builds (and caches) a regenerated entry,
    and scores the reference once per dataset so lazy imports and caches happen before any forked
    child meets an untrusted answer under the guard."""
    name = str(payload["dataset"])
    if name not in DATASETS:
        return
    entry = entry_of(payload)
    if name not in _scorers:
        with contextlib.suppress(Exception):  # a warm-up only; the real call reports its own failure
            scorer(name)(entry.get("answer"), entry)


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        fn = scorer(str(payload["dataset"]))
    except KeyError:
        return {"score": 0.0, "reason": f"unknown reasoning-gym dataset {payload['dataset']!r}"}
    entry = entry_of(payload)
    with safe_eval.installed():
        try:
            score = fn(payload["answer"], entry)
        except safe_eval.UnsafeExpression as exc:
            return {"score": 0.0, "reason": f"answer rejected: {exc}"}
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return {"score": 0.0, "reason": "the scorer returned no number"}
    return {"score": min(1.0, max(0.0, float(score))), "reason": ""}
