"""The coordinator's error hierarchy: each error carries its HTTP status and a stable code."""

from __future__ import annotations

from typing import Any


class FlywheelError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}  # sent with the error response


class BadRequest(FlywheelError):
    status_code = 400
    code = "bad_request"


class Unauthorized(FlywheelError):
    status_code = 401
    code = "unauthorized"


class Forbidden(FlywheelError):
    status_code = 403
    code = "forbidden"


class NotFound(FlywheelError):
    status_code = 404
    code = "not_found"


class Conflict(FlywheelError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(FlywheelError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(FlywheelError):
    status_code = 422
    code = "validation_error"


class ProtocolMismatch(FlywheelError):
    status_code = 426
    code = "protocol_mismatch"


class RateLimited(FlywheelError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, {"retry_after_s": retry_after_s})
        self.headers = {"Retry-After": str(retry_after_s)}
