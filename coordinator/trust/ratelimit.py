"""Rate limits: a token bucket per known worker, per client address otherwise, and per address for
registration.

A plain ASGI middleware in front of the API: a request over its budget is answered 429 with
`Retry-After` before any database work, which the worker's client honours. A bearer token earns a
budget of its own only once this process knows it valid (its holder is in the auth cache); until then
the request spends its client address's budget, so made-up tokens cannot buy unlimited requests.
Registration also spends from a stricter bucket per address. Behind reverse proxies listed in
`trusted_proxies` the client is the right-most X-Forwarded-For address that is not a proxy.

Buckets live in the API process (no shared store); with several API processes behind a balancer,
each one allows the rate. A bucket map holds at most `capacity` keys and forgets the least recently
used first, so a flood of addresses costs bounded memory.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.deps import bearer
from coordinator.workers import service as workers
from shared.protocol import API_PREFIX, ErrorBody, ErrorInfo, Routes

REGISTER_PATH = API_PREFIX + Routes.register
HEALTH_PATH = "/healthz"  # unauthenticated, so budgeted per address like any tokenless call
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(headers: Headers, client: tuple[str, int] | None, proxies: Sequence[Network]) -> str:
    """The calling client's address: the peer's, or behind trusted proxies the right-most
    X-Forwarded-For entry that is not one (entries left of it could be made up by the client)."""
    address = client[0] if client else "unknown"
    if not proxies or not _trusted(address, proxies):
        return address
    for hop in reversed(headers.get("x-forwarded-for", "").split(",")):
        if hop.strip() and not _trusted(hop, proxies):
            return hop.strip()
    return address


def too_many(wait_s: float) -> JSONResponse:
    retry = max(1, math.ceil(wait_s))
    body = ErrorBody(
        error=ErrorInfo(
            code="rate_limited", message="too many requests; slow down", details={"retry_after_s": retry}
        )
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=429, headers={"Retry-After": str(retry)})


class RateLimit:
    """ASGI middleware applying the buckets to every API call (`/v1/...`) and `/healthz`; a rate of 0
    turns one off.

    A token counts as known valid while its holder is in this process's auth cache (`auth_cache_s`;
    0 keeps no cache, so every request then spends its address's budget).
    """

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: int,
        *,
        registration_per_s: float = 0.0,
        registration_burst: int = 1,
        auth_cache_s: float = 60.0,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None
        self.registrations = (
            TokenBuckets(registration_per_s, registration_burst) if registration_per_s > 0 else None
        )
        self.auth_cache_s = auth_cache_s
        self.proxies = [ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"].startswith(API_PREFIX) or scope["path"] == HEALTH_PATH):
            wait = self._wait(scope)
            if wait > 0:
                await too_many(wait)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _wait(self, scope: Scope) -> float:
        headers = Headers(scope=scope)
        address = "address:" + client_address(headers, scope.get("client"), self.proxies)
        if self.registrations is not None and scope["path"] == REGISTER_PATH:
            wait = self.registrations.take(address)
            if wait > 0:
                return wait
        if self.buckets is None:
            return 0.0
        holder = workers.remembered(bearer(headers.get("authorization")), self.auth_cache_s)
        return self.buckets.take(address if holder is None else f"worker:{holder.worker_id}")
