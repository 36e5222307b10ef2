"""The verifier's errors, all under one base class:

    VerifierError (status_code 503)
    ├── SandboxUnavailableError   bubblewrap missing, namespaces refused
    ├── ServiceError              a sandboxed scoring service will not start or stay up
    ├── HostStalledError          a limit tripped while the host kept the program off the CPU
    └── SpecError (422)           a malformed verifier spec (spec builders only)

A verifier never raises on bad input (a hostile or malformed answer gets a zero verdict with a
reason). These errors mean the *machine* cannot verify right now: the caller should retry later
rather than store a verdict (HostStalledError carries what the attempt measured, for a caller that
has retried enough).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.protocol import Verdict


class VerifierError(Exception):
    """Base of every error the verifier raises; `status_code` for callers that map it to HTTP."""

    status_code = 503


class SandboxUnavailableError(VerifierError):
    """bubblewrap is missing or cannot create the namespaces the sandbox requires."""


class ServiceError(VerifierError):
    """A sandboxed scoring service could not be started or kept running."""


class HostStalledError(VerifierError):
    """The verdict is indeterminate: a limit tripped because the host kept the sandbox off the CPU,
    not because of the program. Retry later; `verdict` is what this attempt measured, for a caller
    that has retried enough and stores it anyway."""

    def __init__(self, reason: str, verdict: Verdict) -> None:
        super().__init__(reason)
        self.reason = reason
        self.verdict = verdict


class SpecError(VerifierError):
    """A problem's verifier spec is malformed (raised by spec builders, never by `verify`)."""

    status_code = 422
