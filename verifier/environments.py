"""`verifiers` environments (the Environments Hub format): their tasks and their rubrics.

Everything that runs an environment's code runs in a sandboxed scoring service
(verifier/scoring/vf_handler.py): listing its tasks when a problem set is imported, and its reward
functions on each completion during verification. The calling process never imports `verifiers`
or the environment (docs/verifiers.md, "verifiers environments").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from shared.protocol import Verdict, VerifierSpec
from verifier.errors import SpecError
from verifier.math import MAX_COMPLETION_CHARS
from verifier.pool import Reply, Service, ServiceSpec, get_pool

# A request's child gets 30 s wall and 20 s CPU; loading an environment in the service process
# (importing `verifiers`, building its datasets) shares the reply deadline on first use.
SERVICE = ServiceSpec("verifier.scoring.vf_handler", timeout_s=30.0, memory_mb=4096, cpu_s=20.0)
PAGE = 100  # tasks per reply: a reply is capped at 1 MiB


def tasks(environment: str, args: dict[str, Any], split: str, limit: int | None) -> list[dict[str, Any]]:
    """The environment's task rows (`prompt` messages, `answer`, `info`, ...) in order, listed by
    a service of its own that is stopped afterwards (an import is rare; an idle service holding
    an environment in memory would outlive it); SpecError says why there are none (not
    installed, not single-turn, ...)."""
    service = Service(SERVICE)
    try:
        return list(_pages(service, {"environment": environment, "args": args, "split": split}, limit))
    finally:
        service.close()


def _pages(service: Service, request: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    offset, total = 0, None
    while total is None or offset < min(total, limit or total):
        count = PAGE if limit is None else min(PAGE, limit - offset)
        result = _result(request, service.call(request | {"op": "tasks", "offset": offset, "count": count}))
        rows, total = result.get("tasks"), result.get("total")
        if not isinstance(rows, list) or not isinstance(total, int):
            raise SpecError(f"environment {request['environment']!r}: the service returned no tasks")
        if not rows:
            return
        yield from rows
        offset += len(rows)


def _result(payload: dict[str, Any], reply: Reply) -> dict[str, Any]:
    if reply.result is None:
        raise SpecError(f"environment {payload['environment']!r}: the service failed: {reply.failure}")
    if "error" in reply.result:
        raise SpecError(f"environment {payload['environment']!r}: {reply.result['error']}")
    return reply.result


def config_error(config: dict[str, Any]) -> str | None:
    """What is wrong with a spec's config, or None: `environment` (str), `args` (object) and
    `row` (the task row, with its `prompt`)."""
    if not isinstance(config.get("environment"), str) or not config["environment"]:
        return "verifiers spec needs config.environment (the environment's id)"
    if not isinstance(config.get("args", {}), dict):
        return "config.args must be an object (the environment's load_environment arguments)"
    row = config.get("row")
    if not isinstance(row, dict) or "prompt" not in row:
        return "config.row must be the environment's task row (an object with its prompt)"
    return None


def verify_environment(spec: VerifierSpec, answer: str) -> Verdict:
    """The environment's rubric on the completion: score = its weighted reward clamped to [0, 1],
    passed = reward >= the environment's pass_threshold, each reward function's value in details."""
    error = config_error(spec.config)
    if error is not None:
        return _zero(error)
    environment = spec.config["environment"]
    if len(answer) > MAX_COMPLETION_CHARS:
        return _zero(f"completion longer than {MAX_COMPLETION_CHARS} characters")
    payload = {"op": "score", "environment": environment, "args": spec.config.get("args", {})}
    reply = get_pool(SERVICE).call(payload | {"row": spec.config["row"], "completion": answer})
    details: dict[str, Any] = {"environment": environment}
    result = reply.result
    if result is None:
        return _zero(f"scorer failed: {reply.failure}", details)
    if "error" in result:
        return _zero(str(result["error"]), details)
    reward, threshold = float(result["reward"]), float(result["pass_threshold"])
    details |= {"reward": reward, "rewards": dict(result.get("metrics") or {})}
    passed = math.isfinite(reward) and reward >= threshold
    reason = "" if passed else f"reward {reward:g} below the environment's pass threshold {threshold:g}"
    return Verdict(score=min(1.0, max(0.0, reward)), passed=passed, reason=reason, details=details)


def _zero(reason: str, details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(score=0.0, passed=False, reason=reason, details=details or {})
