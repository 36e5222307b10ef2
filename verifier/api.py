"""The verifier's public API: `verify(spec, answer) -> Verdict` and a start-up check.

`verify` is safe to call from any thread of any process, several at a time: all untrusted work
happens in sandboxes and sandboxed service pools (one pool per process), never in the caller.
It never raises on bad input: a malformed spec, a hostile answer or a verifier bug gives a zero
verdict with a reason. It raises `VerifierError` only when this machine cannot verify at all
(bubblewrap missing, a scoring service that will not start) or cannot verify now (`HostStalledError`:
a code trace's limit tripped while the host kept it off the CPU): retry later, store nothing.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from importlib import metadata

from shared.protocol import Verdict, VerifierSpec
from verifier import pool, sandbox
from verifier.code import verify_code
from verifier.environments import verify_environment
from verifier.errors import SandboxUnavailableError, VerifierError
from verifier.math import verify_math
from verifier.procedural import verify_reasoning_gym

log = logging.getLogger(__name__)

_DISPATCH: dict[str, Callable[[VerifierSpec, str], Verdict]] = {
    "math": verify_math,
    "reasoning_gym": verify_reasoning_gym,
    "code": verify_code,
    "verifiers": verify_environment,
}


def verify(spec: VerifierSpec, answer: str) -> Verdict:
    """Score `answer` (the full completion text, chain of thought included) against `spec`."""
    kind = getattr(spec, "kind", None)
    check = _DISPATCH.get(str(kind))
    if check is None:
        return Verdict(score=0.0, passed=False, reason=f"unknown verifier kind {kind!r}")
    if not isinstance(answer, str):
        return Verdict(score=0.0, passed=False, reason="the answer is not text")
    try:
        return check(spec, answer)
    except VerifierError:
        raise
    except Exception:  # a verifier bug must not turn one bad trace into a crashed task
        log.exception("verifier %s failed on an input", spec.kind)
        return Verdict(score=0.0, passed=False, reason="internal verifier error", details={"kind": spec.kind})


def check_available() -> dict[str, str | None]:
    """What this machine can verify. Raises SandboxUnavailableError (with the fix) if nothing.

    Starts one real sandbox and checks from inside it: uid 65534, only a loopback interface,
    a private pid namespace. Call it at start-up of every process that verifies.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(f"bwrap not found: {sandbox.INSTALL_HINT}")
    sandbox.probe()
    return {
        "bwrap": bwrap,
        "sandbox": sandbox.describe(),
        "python": sandbox.layout().python,
        "cpp": shutil.which("g++"),
        "math_verify": _version("math-verify"),
        "reasoning_gym": _version("reasoning-gym"),
        "verifiers": _version("verifiers"),
    }


def warm_up(kinds: tuple[str, ...] = ("math", "reasoning_gym")) -> None:
    """Start this process's scoring services now rather than on the first trace."""
    from verifier.math import SERVICE as MATH
    from verifier.procedural import SERVICE as RG

    specs = {"math": MATH, "reasoning_gym": RG}
    for kind in kinds:
        pool.get_pool(specs[kind]).warm()


def shutdown() -> None:
    """Stop this process's scoring services (they also die with the process)."""
    pool.close_all()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


__all__ = ["check_available", "shutdown", "verify", "warm_up"]
