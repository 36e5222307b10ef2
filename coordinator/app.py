"""`create_app()`: the coordinator's HTTP API (FastAPI), its middleware, errors and lifespan."""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator import errors
from coordinator.campaigns.endpoints import router as campaigns_router
from coordinator.config import Settings
from coordinator.credit.endpoints import router as credit_router
from coordinator.datasets.endpoints import router as datasets_router
from coordinator.db import migrate, read_transaction, transaction
from coordinator.deps import (
    PRINCIPAL_KEY,
    OperatorDep,
    RuntimeDep,
    SessionDep,
    authenticate,
    bearer,
    principal,
)
from coordinator.jobs.endpoints import router as jobs_router
from coordinator.metrics import Metrics
from coordinator.pipeline.endpoints import router as pipeline_router
from coordinator.pipeline.tasks import requeue_stalled
from coordinator.problems.endpoints import router as problems_router
from coordinator.results.endpoints import router as results_router
from coordinator.results.tasks import requeue_pending
from coordinator.runtime import Runtime, build_runtime, set_runtime
from coordinator.stats import collect_stats
from coordinator.trust import tasks as trust_tasks
from coordinator.trust.endpoints import router as trust_router
from coordinator.trust.ratelimit import RateLimit
from coordinator.workers.endpoints import router as workers_router
from shared import __version__
from shared.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    ErrorBody,
    ErrorInfo,
    Routes,
    ServerInfo,
    Stats,
)

log = logging.getLogger(__name__)
DASHBOARD = Path(__file__).resolve().parent / "dashboard.html"
STATIC = Path(__file__).resolve().parent / "static"  # the dashboard's script, styles and chart library
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


# Statuses any API call may be answered with, whatever the route (the middleware and the request
# parsing answer them), documented once for every operation.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "the body cannot be parsed",
        401: "missing or unknown bearer token",
        403: "banned token, or a scope that may not do this",
        404: "no such resource",
        413: "the body is over max_request_bytes",
        422: "the request is malformed",
        426: "the client speaks another protocol version",
        429: "over the rate limit (or, for leases, the verification budget); see Retry-After",
    }.items()
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorInfo(code=code, message=message, details=details))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.FlywheelError)
    async def flywheel_error(_: Request, exc: errors.FlywheelError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()[:50]]
        return error_response(422, "validation_error", "the request is malformed", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error")


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"requests are limited to {limit} bytes")


class _Guard:
    """Size, transfer-coding and protocol checks before any work; metrics and the protocol header on
    every response.

    A plain ASGI middleware: `@app.middleware("http")` (Starlette's BaseHTTPMiddleware) runs every
    request through a task group and memory streams, which costs more than a lease itself.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.header = (PROTOCOL_HEADER.lower().encode(), str(PROTOCOL_VERSION).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        refusal = self._refusal(Headers(scope=scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        status = 500

        async def send_stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, self._counted(receive), send_stamped)
        route = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _counted(self, receive: Receive) -> Receive:
        """`receive` that stops a body at the size limit as it arrives, whatever the headers said:
        reading past it raises a 413 (FastAPI passes HTTP errors from body reading through)."""
        limit, received = self.settings.max_request_bytes, 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        return counted

    def _refusal(self, headers: Headers) -> JSONResponse | None:
        limit = self.settings.max_request_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return error_response(413, "payload_too_large", f"requests are limited to {limit} bytes")
        codings = ",".join(headers.getlist("transfer-encoding"))
        if codings:
            return _coding_refusal(codings, length is not None)
        version = headers.get(PROTOCOL_HEADER)
        if version is not None and version != str(PROTOCOL_VERSION):
            message = f"this coordinator speaks protocol {PROTOCOL_VERSION}"
            details = {"server": PROTOCOL_VERSION, "client": version}
            return error_response(426, "protocol_mismatch", message, details)
        return None


def _coding_refusal(codings: str, has_length: bool) -> JSONResponse:
    """Bodies come with a Content-Length and no Transfer-Encoding: a coding (gzip, ...) would have
    to be undone before the size limit could be applied, and both headers at once is how requests
    are smuggled past proxies that read the other one."""
    if [c.strip().lower() for c in codings.split(",")] != ["chunked"]:
        message = f"transfer coding {codings!r} is not supported; send the body with a Content-Length"
        return error_response(501, "unsupported_transfer_encoding", message)
    if has_length:
        return error_response(400, "bad_request", "send Content-Length or Transfer-Encoding, not both")
    return error_response(411, "length_required", "send a Content-Length header")


class _Authenticate:
    """Checks the bearer token of a call to any route that needs one before the call's body is read,
    so an unknown caller cannot make the coordinator receive and parse megabytes first; the caller
    found is left in the scope for the `principal` dependency (no second lookup)."""

    def __init__(self, app: ASGIApp, public: Sequence[re.Pattern[str]]) -> None:
        self.app = app
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._needs_token(scope["path"]):
            token = bearer(Headers(scope=scope).get("authorization"))
            try:
                scope[PRINCIPAL_KEY] = await authenticate(scope["app"].state.runtime, token)
            except errors.FlywheelError as exc:
                refusal = error_response(exc.status_code, exc.code, exc.message, exc.details)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _needs_token(self, path: str) -> bool:
        return path.startswith(API_PREFIX) and not any(p.match(path) for p in self.public)


def _uses_principal(dependant: Dependant) -> bool:
    return any(d.call is principal or _uses_principal(d) for d in dependant.dependencies)


def _public_paths(routers: Sequence[tuple[str, APIRouter]]) -> list[re.Pattern[str]]:
    """The API routes any caller may use (registration, info): those not depending on `principal`."""
    paths = [
        prefix + route.path
        for prefix, router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and not _uses_principal(route.dependant)
    ]
    return [compile_path(path)[0] for path in paths if path.startswith(API_PREFIX)]


def _sweeper(runtime: Runtime, stop: threading.Event) -> None:
    """Finds verification work a crash or a lost task left behind; first pass at start-up."""
    age = 0.0
    while not stop.is_set():
        try:
            requeue_pending(runtime, older_than_s=age)
            trust_tasks.requeue_stale(runtime, older_than_s=age)
            requeue_stalled(runtime)
        except Exception:
            log.exception("sweeper pass failed")
        age = runtime.settings.requeue_pending_after_s
        stop.wait(age)


def _meta_router(metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get(API_PREFIX + Routes.info, response_model=ServerInfo, tags=["meta"])
    def info() -> ServerInfo:
        return ServerInfo(version=__version__)

    @router.get(API_PREFIX + Routes.stats, response_model=Stats, tags=["meta"])
    def stats(session: SessionDep, _: OperatorDep) -> Stats:
        return collect_stats(session)

    @router.get("/healthz", tags=["meta"])
    def healthz(rt: RuntimeDep) -> dict[str, str]:
        # The database answers: nothing more, since anyone may ask (rate-limited per address); a
        # read transaction, so on SQLite it never waits for the writer lock.
        with read_transaction(rt.sessions) as session:
            session.execute(text("SELECT 1"))
        return {"status": "ok"}

    @router.get("/metrics", tags=["meta"])
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    @router.get("/leaderboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        # Volunteers name themselves: the page sets names as text, and the policy keeps any script
        # or style but the coordinator's own files from running should one ever slip through.
        return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"), headers={"Content-Security-Policy": CSP})

    return router


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else Settings())
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            migrate(settings)
        rt = runtime or build_runtime(settings)
        # Each sync endpoint holds at most one connection, so threads beyond the pool would only queue
        # for one, and make the pool open and close overflow connections all the time under load.
        to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size
        app.state.runtime = rt
        set_runtime(rt)
        # Start-up leaves ~10^5 long-lived objects (modules, mappers, wire models); freezing them keeps
        # the cyclic garbage collector from walking all of them again on every full collection. Once
        # per process: a later freeze would also pin whatever garbage exists by then.
        if gc.get_freeze_count() == 0:
            gc.freeze()
        stop = threading.Event()
        sweeper = threading.Thread(target=_sweeper, args=(rt, stop), name="flywheel-sweeper", daemon=True)
        sweeper.start()
        try:
            yield
        finally:
            stop.set()
            sweeper.join(timeout=5)
            if runtime is None:
                rt.close()

    app = FastAPI(title="Flywheel coordinator", version=__version__, lifespan=lifespan)
    _install_error_handlers(app)
    routers = [
        (API_PREFIX, router)
        for router in (
            workers_router,
            jobs_router,
            results_router,
            problems_router,
            campaigns_router,
            datasets_router,
            trust_router,
            pipeline_router,
            credit_router,
        )
    ]
    routers.append(("", _meta_router(metrics)))
    for prefix, router in routers:
        app.include_router(router, prefix=prefix, responses=COMMON_ERRORS)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_middleware(app, settings, metrics, _public_paths(routers))
    return app


def _add_middleware(
    app: FastAPI, settings: Settings, metrics: Metrics, public: Sequence[re.Pattern[str]]
) -> None:
    """Outermost first: _Guard, RateLimit, _Authenticate. A request refused for its size or protocol
    spends no budget, and an unknown token is looked up only within its address's budget."""
    app.add_middleware(_Authenticate, public=public)
    app.add_middleware(
        RateLimit,
        rate=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
        registration_per_s=settings.registration_per_hour / 3600,
        registration_burst=settings.registration_burst,
        auth_cache_s=settings.auth_cache_s,
        trusted_proxies=settings.trusted_proxies,
    )
    app.add_middleware(_Guard, settings=settings, metrics=metrics)


__all__ = ["create_app", "transaction"]
