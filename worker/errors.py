"""Worker errors: one base class; coordinator errors carry the HTTP status and the error code."""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""

    status_code: int | None = None  # the HTTP status, where one came with the error
    code: str = "worker_error"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code


class ConfigError(WorkerError):
    """Flags or environment variables that do not form a valid configuration."""

    code = "config_error"


class EngineError(WorkerError):
    """The engine could not load the model or failed while generating."""

    code = "engine_error"


class PolicyError(WorkerError):
    """A policy version (model weights from the pipeline) cannot be downloaded, verified or stored."""

    code = "policy_error"


class SpoolError(WorkerError):
    """The spool directory is unusable (locked by another daemon, unwritable)."""

    code = "spool_error"


class CoordinatorError(WorkerError):
    """The coordinator answered with an error body (or did not answer at all)."""

    code = "coordinator_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message, status_code=status_code, code=code)
        self.details = details


class AuthError(CoordinatorError):
    """The token is missing, unknown, banned or lacks the scope (401/403): fix the token."""

    code = "unauthorized"


class ProtocolMismatch(CoordinatorError):
    """The coordinator speaks another protocol version: upgrade the worker."""

    code = "protocol_mismatch"


class RejectedError(CoordinatorError):
    """A 4xx other than auth/429: the request itself is wrong and re-sending will not help."""

    code = "rejected"


class TransientError(CoordinatorError):
    """Network failure, 5xx or 429 that outlived the retries: worth trying again later."""

    code = "transient"


class ResponseTooLarge(TransientError):
    """An answer over the worker's size limit, left unread. Not retried at once (it would come
    back as large), but transient to its callers: results stay in the spool, leasing tries later."""

    code = "response_too_large"
