"""The verifier's one error base class.

A verifier never raises on bad input (a hostile or malformed answer gets a zero verdict with a
reason). These errors mean the *machine* cannot verify right now (no bwrap, a sandbox that will
not start): the caller should retry later rather than store a verdict.
"""

from __future__ import annotations


class VerifierError(Exception):
    """Base of every error the verifier raises; `http_status` for callers that map it to HTTP."""

    http_status = 503


class SandboxUnavailableError(VerifierError):
    """bubblewrap is missing or cannot create the namespaces the sandbox requires."""


class ServiceError(VerifierError):
    """A sandboxed scoring service could not be started or kept running."""


class SpecError(VerifierError):
    """A problem's verifier spec is malformed (raised by spec builders, never by `verify`)."""

    http_status = 422
