"""Per-token rate limits: a token bucket per bearer token (per client address for tokenless calls).

A plain ASGI middleware in front of the API: a request over its token's budget is answered 429 with
`Retry-After` before any database work, which the worker's client honours. Buckets live in the API
process (no shared store); with several API processes behind a balancer, each one allows the rate.
The bucket map holds at most `capacity` keys and forgets the least recently used first, so a flood
of made-up tokens costs bounded memory and cannot reset a busy token's bucket.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.protocol import API_PREFIX, ErrorBody, ErrorInfo


class TokenBuckets:
    """`rate` requests per second sustained, `burst` at once, per key."""

    def __init__(self, rate: float, burst: int, capacity: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.capacity = capacity
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one request; 0 if allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        level, stamp = self._buckets.pop(key, (self.burst, now))
        level = min(self.burst, level + (now - stamp) * self.rate)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            wait = (1.0 - level) / self.rate
        self._buckets[key] = (level, now)
        if len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return wait


def request_key(headers: Headers, client: tuple[str, int] | None) -> str:
    """Whose budget a request spends: its bearer token's (hashed: no secret is kept), else its
    address's."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return "token:" + hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
    return "address:" + (client[0] if client else "unknown")


def too_many(wait_s: float) -> JSONResponse:
    retry = max(1, math.ceil(wait_s))
    body = ErrorBody(
        error=ErrorInfo(
            code="rate_limited", message="too many requests for this token", details={"retry_after_s": retry}
        )
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=429, headers={"Retry-After": str(retry)})


class RateLimit:
    """ASGI middleware applying TokenBuckets to every API call (`/v1/...`); `rate` 0 turns it off."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.buckets is not None and scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            wait = self.buckets.take(request_key(Headers(scope=scope), scope.get("client")))
            if wait > 0:
                await too_many(wait)(scope, receive, send)
                return
        await self.app(scope, receive, send)
