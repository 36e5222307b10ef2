"""HTTP client for the coordinator's `/v1` worker routes: typed errors, retries with backoff."""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
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
    CreditOut,
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
    WaitingModels,
)
from worker.config import RetryPolicy
from worker.errors import (
    AuthError,
    CoordinatorError,
    ProtocolMismatch,
    RejectedError,
    ResponseTooLarge,
    TransientError,
)

log = logging.getLogger("flywheel.worker.client")
Model = TypeVar("Model", bound=BaseModel)
PROTOCOL_CODES = {"protocol_mismatch", "unsupported_protocol", "protocol_version"}
# The most of a body the worker reads. An error needs its code and message only; the largest
# answer is a lease grant of MAX_BATCH jobs, and 64 MiB is 256 KiB of prompt per job.
ERROR_BODY_LIMIT = 64 * 1024
RESPONSE_LIMIT = 64 * 1024 * 1024
_warned_plaintext: set[str] = set()


def is_loopback(host: str) -> bool:
    """True for names and addresses that never leave the machine."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_plaintext(base_url: str) -> bool:
    """Warn (once per URL and process) when tokens would cross a network in clear; True if it did."""
    url = urllib.parse.urlsplit(base_url)
    if url.scheme != "http" or is_loopback(url.hostname or "") or base_url in _warned_plaintext:
        return False
    _warned_plaintext.add(base_url)
    log.warning(
        "the coordinator URL %s is plain http to another host: the worker token and every trace "
        "travel unencrypted and can be read or altered on the way; use https://",
        base_url,
    )
    return True


def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of a streamed body (the rest is never read); True when it held more."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


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


def error_from_response(response: httpx.Response, body: bytes) -> CoordinatorError:
    """Map an error response (the one `ErrorBody` shape, or anything else) to a typed exception;
    `body` is what was read of it (at most ERROR_BODY_LIMIT bytes)."""
    status = response.status_code
    try:
        info = ErrorBody.model_validate_json(body).error
        code, message, details = info.code, info.message[:500], info.details
    except ValidationError:
        text = body[:500].decode("utf-8", "replace")
        code, message, details = f"http_{status}", text or response.reason_phrase, None
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
    return kind(text, status_code=status, code=code, details=details)


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
        warn_if_plaintext(self._root)
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

    def credit(self) -> CreditOut:
        """This worker's credit and place on the leaderboard."""
        return self._call("GET", Routes.credit, None, CreditOut)

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
            if exc.status_code in (404, 405):
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

    def waiting_models(self, dtype: str | None = None) -> WaitingModels:
        """Models with jobs waiting (of campaigns that take work computed in `dtype`), most first."""
        query = ("?" + urllib.parse.urlencode({"dtype": dtype})) if dtype else ""
        return self._call("GET", Routes.waiting_models + query, None, WaitingModels)

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
                    raise error_from_response(response, read_capped(response, ERROR_BODY_LIMIT)[0])
                yield response
        except httpx.TransportError as exc:
            raise TransientError(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ plumbing

    def _call(self, method: str, path: str, body: BaseModel | None, out: type[Model]) -> Model:
        status, content = self._send_with_retries(method, path, body)
        try:
            return out.model_validate_json(content)
        except ValidationError as exc:
            raise RejectedError(
                f"{method} {path}: unexpected response body: {exc.errors()[:3]}", status_code=status
            ) from exc

    def _exchange(self, method: str, path: str, content: bytes | None) -> tuple[httpx.Response, bytes]:
        """One request; the body is streamed and read only up to its limit, so a coordinator (or
        anything posing as one) cannot make the worker buffer an endless answer."""
        headers = {"Content-Type": "application/json"} if content is not None else {}
        request = self._http.build_request(method, path, content=content, headers=headers)
        response = self._http.send(request, stream=True)
        try:
            limit = RESPONSE_LIMIT if response.is_success else ERROR_BODY_LIMIT
            body, cut = read_capped(response, limit)
        finally:
            response.close()
        if cut and response.is_success:
            raise ResponseTooLarge(
                f"{method} {path}: the answer is larger than {RESPONSE_LIMIT} bytes; not read",
                status_code=response.status_code,
            )
        return response, body

    def _send_with_retries(self, method: str, path: str, body: BaseModel | None) -> tuple[int, bytes]:
        content = body.model_dump_json().encode() if body is not None else None
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response, answer = self._exchange(method, path, content)
            except httpx.TransportError as exc:
                error: CoordinatorError = TransientError(f"{method} {path}: {type(exc).__name__}: {exc}")
                wait = None
            else:
                if response.is_success:
                    return response.status_code, answer
                error = error_from_response(response, answer)
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
            raise TransientError(f"gave up retrying (shutting down): {error}", status_code=error.status_code)
