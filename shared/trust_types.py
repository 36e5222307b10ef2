"""Response models of the trust API: operator-facing, workers never see any of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.protocol import Wire

WorkerState = Literal["active", "quarantined", "banned"]


class ValidationOut(Wire):
    id: uuid.UUID
    trace_id: uuid.UUID
    worker_id: uuid.UUID
    purpose: str
    status: str
    reason: str
    position: int | None = Field(description="first failing position, or the worst one when passed")
    margin: float | None = Field(description="worst margin of a sampled token, logit units")
    logprob_error: float | None
    tolerance: float | None
    validator: dict[str, Any]
    seconds: float
    created_at: datetime


class TrustOut(Wire):
    worker_id: uuid.UUID
    name: str
    state: WorkerState
    trust: int = Field(description="consecutive passed spot-checks")
    check_probability: float = Field(description="chance that the worker's next trace is validated")
    passed: int
    failed: int
    skipped: int
    unverifiable: int
    withdrawn: int = Field(description="traces kept out of dumps until they pass a validation")
    vouched_until: datetime | None
    last_failure: dict[str, Any] | None
    recent: list[ValidationOut] = Field(default_factory=list)


class Requeued(Wire):
    worker_id: uuid.UUID
    traces: int


class TokenRevoked(Wire):
    worker_id: uuid.UUID
    revoked: bool
