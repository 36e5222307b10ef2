"""`verifiers` environments, run inside a sandboxed service (see verifier/pool.py).

The long-lived service process loads each environment once (`prepare`, trusted: the operator's
installed package and arguments) and scores its reference answer once, so lazy imports happen
before any untrusted text is read. Each request then runs in a forked child: listing a page of the
environment's tasks, or running its rubric's reward functions on one completion under the eval
guard (verifier/scoring/safe_eval.py), so a completion that a reward function evaluates cannot
execute code to forge its score.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import verifiers as vf
from verifiers.types import flatten_task_input
from verifiers.utils.message_utils import normalize_messages

from verifier.scoring import safe_eval

MAX_ENVIRONMENTS = 16
SPLITS = {"train": "build_dataset", "eval": "build_eval_dataset"}
_envs: dict[str, Any] = {}
_warmed: set[str] = set()


def _key(payload: dict[str, Any]) -> str:
    return json.dumps([payload["environment"], payload.get("args") or {}], sort_keys=True)


def environment(payload: dict[str, Any]) -> Any:
    key = _key(payload)
    if key not in _envs:
        if len(_envs) >= MAX_ENVIRONMENTS:
            _envs.clear()
        _envs[key] = vf.load_environment(str(payload["environment"]), **dict(payload.get("args") or {}))
    return _envs[key]


def prepare(payload: dict[str, Any]) -> None:
    """Load the environment in the service process (a failure is reported by `handle`, which
    loads it again in its child and says why)."""
    with contextlib.suppress(Exception):
        env = environment(payload)
        key = _key(payload)
        if payload.get("op") == "score" and key not in _warmed:
            _warmed.add(key)
            row = dict(payload["row"])
            _score(env, row, str(row.get("answer", "")))


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    try:
        env = environment(payload)
    except Exception as exc:  # a missing package, bad arguments, a download the sandbox refuses
        return {"error": f"the environment could not be loaded: {type(exc).__name__}: {exc}"[:600]}
    reason = unsupported(env)
    if reason is not None:
        return {"error": reason}
    if payload.get("op") == "tasks":
        return _tasks(env, payload)
    row, completion = dict(payload["row"]), str(payload["completion"])
    with safe_eval.installed():
        reward, metrics = _score(env, row, completion)
    threshold = float(getattr(env, "pass_threshold", 0.5))
    if not math.isfinite(reward):
        return {"error": "the rubric returned no finite reward"}
    return {"reward": reward, "metrics": metrics, "pass_threshold": threshold}


def unsupported(env: Any) -> str | None:
    """Why Flywheel cannot serve this environment, or None: single-turn, tool-free environments
    scored one completion at a time by reward functions that need no network."""
    if isinstance(env, vf.EnvGroup) or not isinstance(env, vf.SingleTurnEnv):
        return (
            f"{type(env).__name__} is not a SingleTurnEnv: multi-turn and tool environments are not supported"
        )
    if getattr(env, "tool_defs", None):
        return "the environment declares tools: tool environments are not supported"
    for rubric in _rubrics(env.rubric):
        if isinstance(rubric, vf.JudgeRubric):
            return "its rubric asks a judge model (JudgeRubric): the verifier sandbox has no network"
    if env.rubric.has_group_rewards:
        return "its rubric has group reward functions: a trace is verified alone"
    return None


def _rubrics(rubric: Any) -> list[Any]:
    inner = getattr(rubric, "rubrics", None)
    return [rubric] + [r for child in inner for r in _rubrics(child)] if inner else [rubric]


def _tasks(env: Any, payload: dict[str, Any]) -> dict[str, Any]:
    split = str(payload.get("split", "eval"))
    if split not in SPLITS:
        return {"error": f"no split {split!r}: use 'train' (the dataset) or 'eval' (the eval dataset)"}
    dataset = getattr(env, SPLITS[split])()
    if dataset is None:
        return {"error": f"the environment has no {split} dataset"}
    start, count = int(payload.get("offset", 0)), int(payload.get("count", 100))
    stop = min(len(dataset), start + count)
    rows = [json.loads(json.dumps(dict(dataset[i]), default=str)) for i in range(start, stop)]
    return {"tasks": rows, "total": len(dataset)}


def _score(env: Any, row: dict[str, Any], completion: str) -> tuple[float, dict[str, float]]:
    """The rubric on one completion, as the environment's own rollout would score it: a state
    built from the task row with the completion as the one assistant message."""
    state = vf.State(input=dict(row))
    state["task"] = flatten_task_input(dict(row))
    state["prompt"] = normalize_messages(row["prompt"], field_name="input.prompt")
    message = [{"role": "assistant", "content": completion}]
    state["completion"] = normalize_messages(message, field_name="completion")
    state["trajectory"] = []
    asyncio.run(env.rubric.score_rollout(state))
    # The monitor rubric a multi-turn base class adds counts turns of a rollout Flywheel did not run.
    monitors = {name for r in _rubrics(env.rubric) if _is_monitor(r) for name in _names(r)}
    metrics = {str(k): float(v) for k, v in (state.get("metrics") or {}).items() if k not in monitors}
    return float(state.get("reward") or 0.0), metrics


def _is_monitor(rubric: Any) -> bool:
    return type(rubric).__name__ == "MultiTurnMonitorRubric"


def _names(rubric: Any) -> list[str]:
    return [getattr(f, "__name__", repr(f)) for f in getattr(rubric, "funcs", [])]
