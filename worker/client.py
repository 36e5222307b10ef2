"""HTTP client for the coordinator's `/v1` worker routes: typed errors, retries with backoff."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from shared import __version__
from shared.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    ErrorBody,
    HeartbeatRequest,
    HeartbeatResponse,
    LeaseGrant,
    LeaseRequest,
    PolicyList,
    RegisterRequest,
    RegisterResponse,
    ReleaseRequest,
    ReleaseResponse,
    Routes,
    ServerInfo,
    SubmitRequest,
    SubmitResponse,
)
from worker.config import RetryPolicy
from worker.errors import (
    AuthError,
    CoordinatorError,
    ProtocolMismatch,
    RejectedError,
    TransientError,
)

log = logging.getLogger("flywheel.worker.client")
Model = TypeVar("Model", bound=BaseModel)
PROTOCOL_CODES = {"protocol_mismatch", "unsupported_protocol", "protocol_version"}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_response(response: httpx.Response) -> CoordinatorError:
    """Map an error response (the one `ErrorBody` shape, or anything else) to a typed exception."""
    status = response.status_code
    try:
        info = ErrorBody.model_validate_json(response.content).error
        code, message, details = info.code, info.message, info.details
    except ValidationError:
        code, message, details = f"http_{status}", response.text[:500] or response.reason_phrase, None
    text = f"{response.request.method} {response.request.url.path}: {status} {code}: {message}"
    kind: type[CoordinatorError]
    if code in PROTOCOL_CODES or status == 426:
        kind = ProtocolMismatch
    elif status in (401, 403):
        kind = AuthError
    elif status == 429 or status >= 500:
        kind = TransientError
    else:
        kind = RejectedError
    return kind(text, status=status, code=code, details=details)


class CoordinatorClient:
    """One worker's connection to the coordinator; thread-safe (the heartbeat thread shares it).

    `stop` makes backoff sleeps end early: a daemon asked to shut down stops retrying at once.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 60.0,
        stop: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {PROTOCOL_HEADER: str(PROTOCOL_VERSION), "User-Agent": f"flywheel-worker/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retry = retry or RetryPolicy()
        self.stop = stop or threading.Event()
        self._root = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self._root + API_PREFIX, headers=headers, timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ routes

    def info(self) -> ServerInfo:
        return self._call("GET", Routes.info, None, ServerInfo)

    def check_protocol(self) -> ServerInfo:
        """Fetch the server info and refuse to go on when the protocol versions differ."""
        info = self.info()
        if info.protocol_version != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"the coordinator speaks protocol v{info.protocol_version} (server {info.version}); "
                f"this worker speaks v{PROTOCOL_VERSION}: upgrade the worker (pip install -U openflywheel)"
            )
        return info

    def register(self, request: RegisterRequest) -> RegisterResponse:
        return self._call("POST", Routes.register, request, RegisterResponse)

    def lease(self, request: LeaseRequest) -> LeaseGrant:
        return self._call("POST", Routes.lease, request, LeaseGrant)

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        return self._call("POST", Routes.heartbeat, request, HeartbeatResponse)

    def check_token(self) -> None:
        """Refuse to go on (AuthError) when the coordinator does not accept the token.

        A heartbeat for a lease id nobody holds is authenticated like any worker call and changes
        nothing on the coordinator (the id comes back as lost), so it costs no job.
        """
        self.heartbeat(HeartbeatRequest(lease_ids=[uuid.UUID(int=0)]))

    def release(self, request: ReleaseRequest) -> ReleaseResponse | None:
        """Give leases back; None from a coordinator that predates the route (they will expire)."""
        try:
            return self._call("POST", Routes.release, request, ReleaseResponse)
        except RejectedError as exc:
            if exc.status in (404, 405):
                return None
            raise

    def submit(self, request: SubmitRequest) -> SubmitResponse:
        # Safe to retry: the coordinator dedups on (lease id, attempt id).
        return self._call("POST", Routes.submit, request, SubmitResponse)

    # ------------------------------------------------------------------ model weights

    def policies(self, base_model: str | None = None) -> PolicyList:
        """Policy versions with rollout jobs waiting, newest first (those built on `base_model`)."""
        query = ("?" + urllib.parse.urlencode({"base_model": base_model})) if base_model else ""
        return self._call("GET", Routes.policies + query, None, PolicyList)

    def artifact_info(self, sha256: str, out: type[Model]) -> Model:
        """The coordinator's record of an artifact, read into `out` (fields it does not name are ignored)."""
        return self._call("GET", f"{Routes.artifacts}/{sha256}/info", None, out)

    @contextlib.contextmanager
    def download(self, path: str, start: int = 0) -> Iterator[httpx.Response]:
        """Stream a file at `path` under the coordinator URL, from byte `start` on (a Range request:
        the answer is 206 when honoured, 200 with the whole file when not). Not retried here: the
        caller resumes from what it has. An error answer or a broken connection raises the typed
        error (TransientError for the network, 5xx and 429)."""
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            with self._http.stream("GET", self._root + path, headers=headers) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise TransientError(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, body: BaseModel | None, out: type[Model]) -> Model:
        response = self._send_with_retries(method, path, body)
        try:
            return out.model_validate_json(response.content)
        except ValidationError as exc:
            raise RejectedError(
                f"{method} {path}: unexpected response body: {exc.errors()[:3]}", status=response.status_code
            ) from exc

    def _send_with_retries(self, method: str, path: str, body: BaseModel | None) -> httpx.Response:
        content = body.model_dump_json().encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                error: CoordinatorError = TransientError(f"{method} {path}: {type(exc).__name__}: {exc}")
                wait = None
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
                wait = parse_retry_after(response.headers.get("Retry-After"))
            if not isinstance(error, TransientError) or last:
                raise error
            self._backoff(attempt, wait, error)
        raise AssertionError("unreachable: the last attempt raises")

    def _backoff(self, attempt: int, retry_after: float | None, error: CoordinatorError) -> None:
        delay = self.retry.delay(attempt, random.random())
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.retry.max_delay_s)
        log.info("%s; retrying in %.1fs (attempt %d/%d)", error, delay, attempt + 2, self.retry.attempts)
        if self.stop.wait(delay):
            raise TransientError(f"gave up retrying (shutting down): {error}", status=error.status)
