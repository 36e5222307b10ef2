"""Small real HTTP servers standing in for what is outside the worker's machine.

`FakeCoordinator` speaks the `/v1` worker routes of shared.protocol (the real coordinator is
tested end to end elsewhere); `FakeOpenAI` speaks the two OpenAI-compatible routes the openai
engine uses. Both run `http.server` in a thread on an ephemeral port.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from shared import __version__
from shared.protocol import (
    API_PREFIX,
    PROTOCOL_VERSION,
    Ack,
    AckStatus,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSpec,
    LeasedJob,
    LeaseGrant,
    LeaseRequest,
    RegisterRequest,
    RegisterResponse,
    ReleaseRequest,
    ReleaseResponse,
    Routes,
    Scope,
    ServerInfo,
    SubmitRequest,
    SubmitResponse,
    TraceSubmission,
)


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Endless:
    """A body of `total` bytes streamed without a Content-Length (read until the connection
    closes); `sent` counts what reached the socket before the reader hung up, `done` is set after."""

    total: int
    sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def write(self, out: Any) -> None:
        chunk = b"x" * 65536
        try:
            while self.sent < self.total:
                out.write(chunk)
                self.sent += len(chunk)
        except OSError:  # the reader closed the connection: what it did not read was never sent
            pass
        finally:
            self.done.set()


def error_reply(status: int, code: str, message: str = "", headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"code": code, "message": message or code, "details": None}}
    return Reply(status, body, headers or {})


Handler = Callable[[dict[str, str], bytes], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class JsonServer:
    """Routes `METHOD path` to handlers; scripted replies in `script[path]` are served first."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.script: dict[str, deque[Reply]] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(self, path: str, *replies: Reply) -> None:
        self.script.setdefault(path, deque()).extend(replies)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p, _, _ in self.requests if p == path)

    def dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self.lock:
            self.requests.append((method, path, headers, body))
            queued = self.script.get(path)
            if queued:
                return queued.popleft()
        handler = self.routes.get((method, path))
        if handler is None:
            return error_reply(404, "not_found", f"no route {method} {path}")
        return handler(headers, body)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = server.dispatch(self.command, self.path, headers, body)
                if isinstance(reply.body, Endless):
                    self.send_response(reply.status)
                    self.end_headers()
                    reply.body.write(self.wfile)
                    return
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return _Handler


def _dump(model: Any) -> Any:
    return json.loads(model.model_dump_json())


class FakeCoordinator(JsonServer):
    """Hands out queued jobs, tracks leases, acks submissions like the real coordinator would.

    `outstanding` is the set of leases granted and not yet ended by a submission, a release or
    a loss; `peak_outstanding` the most there ever were at once. A released job goes back to
    the front of the queue. With `supports_release=False` it answers the release route 404, as
    a coordinator from before that route does. With `token` set, other tokens get 401.
    """

    def __init__(
        self,
        protocol_version: int = PROTOCOL_VERSION,
        heartbeat_interval_s: float = 0.3,
        token: str | None = None,
    ) -> None:
        super().__init__()
        self.protocol_version = protocol_version
        self.heartbeat_interval_s = heartbeat_interval_s
        self.token = token
        self.queue: deque[JobSpec] = deque()
        self.leases: dict[uuid.UUID, JobSpec] = {}
        self.lost: set[uuid.UUID] = set()
        self.stored: dict[uuid.UUID, TraceSubmission] = {}
        self.released: set[uuid.UUID] = set()
        self.outstanding: set[uuid.UUID] = set()
        self.peak_outstanding = 0
        self.lease_dtypes: list[str] = []  # what each lease request said the engine computes in
        self.supports_release = True
        self.submit_times: list[float] = []
        self.submit_status: int | None = None  # set to e.g. 503 to refuse every submission
        self.reject_reason: str | None = None  # set to ack every result as rejected
        # a whole-request answer chosen from the results, e.g. 500 for a trace the database refuses
        self.refuse_request: Callable[[SubmitRequest], Reply | None] = lambda request: None
        self.overgrant = 0  # jobs granted beyond what a lease request asks for
        p = API_PREFIX
        self.routes = {
            ("GET", p + Routes.info): self._info,
            ("POST", p + Routes.register): self._register,
            ("POST", p + Routes.lease): self._authed(self._lease),
            ("POST", p + Routes.heartbeat): self._authed(self._heartbeat),
            ("POST", p + Routes.release): self._authed(self._release),
            ("POST", p + Routes.submit): self._authed(self._submit),
        }

    def _authed(self, handler: Handler) -> Handler:
        def check(headers: dict[str, str], body: bytes) -> Reply:
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                return error_reply(401, "unauthorized", "unknown token")
            return handler(headers, body)

        return check

    def _release(self, headers: dict[str, str], body: bytes) -> Reply:
        if not self.supports_release:
            return error_reply(404, "not_found", "no route")
        request = ReleaseRequest.model_validate_json(body)
        with self.lock:
            released = [lid for lid in request.lease_ids if lid in self.outstanding]
            for lid in reversed(released):
                self.queue.appendleft(self.leases[lid])
            self.outstanding.difference_update(released)
            self.released.update(released)
        return Reply(200, _dump(ReleaseResponse(released=released)))

    def _info(self, headers: dict[str, str], body: bytes) -> Reply:
        return Reply(200, _dump(ServerInfo(version=__version__, protocol_version=self.protocol_version)))

    def _register(self, headers: dict[str, str], body: bytes) -> Reply:
        RegisterRequest.model_validate_json(body)
        token = f"fw_{uuid.uuid4().hex}"
        return Reply(200, _dump(RegisterResponse(worker_id=uuid.uuid4(), token=token, scope=Scope.volunteer)))

    def _lease(self, headers: dict[str, str], body: bytes) -> Reply:
        request = LeaseRequest.model_validate_json(body)
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        granted: list[LeasedJob] = []
        with self.lock:
            self.lease_dtypes.append(request.dtype)
            while self.queue and len(granted) < request.max_jobs + self.overgrant:
                lease = LeasedJob(lease_id=uuid.uuid4(), deadline=deadline, spec=self.queue.popleft())
                self.leases[lease.lease_id] = lease.spec
                self.outstanding.add(lease.lease_id)
                granted.append(lease)
            self.peak_outstanding = max(self.peak_outstanding, len(self.outstanding))
        grant = LeaseGrant(jobs=granted, heartbeat_interval_s=self.heartbeat_interval_s, lease_ttl_s=60)
        return Reply(200, _dump(grant))

    def _heartbeat(self, headers: dict[str, str], body: bytes) -> Reply:
        request = HeartbeatRequest.model_validate_json(body)
        until = datetime.now(UTC) + timedelta(seconds=60)
        with self.lock:
            lost = [lid for lid in request.lease_ids if lid in self.lost or lid not in self.outstanding]
            self.outstanding.difference_update(lost)
            extended = {lid: until for lid in request.lease_ids if lid not in lost}
        return Reply(200, _dump(HeartbeatResponse(extended=extended, lost=lost)))

    def _submit(self, headers: dict[str, str], body: bytes) -> Reply:
        if self.submit_status is not None:
            return error_reply(self.submit_status, "unavailable", "submissions are paused")
        request = SubmitRequest.model_validate_json(body)
        refused = self.refuse_request(request)
        if refused is not None:
            return refused
        with self.lock:
            self.submit_times.append(time.monotonic())
            acks = [self._ack(result) for result in request.results]
        return Reply(200, _dump(SubmitResponse(acks=acks)))

    def _ack(self, result: TraceSubmission) -> Ack:
        def ack(status: AckStatus, reason: str | None = None) -> Ack:
            return Ack(lease_id=result.lease_id, attempt_id=result.attempt_id, status=status, reason=reason)

        if self.reject_reason is not None:
            return ack(AckStatus.rejected, self.reject_reason)
        if result.attempt_id in self.stored:
            return ack(AckStatus.duplicate)
        if result.lease_id in self.lost or result.lease_id not in self.outstanding:
            return ack(AckStatus.rejected, "lease lost")
        self.outstanding.discard(result.lease_id)
        self.stored[result.attempt_id] = result
        return ack(AckStatus.accepted)


class FakeOpenAI(JsonServer):
    """An OpenAI-compatible server that answers with a fixed completion and its logprobs."""

    def __init__(self, tokens: list[tuple[int, str, float]], finish_reason: str = "stop") -> None:
        super().__init__()
        self.tokens = tokens
        self.finish_reason = finish_reason
        self.routes = {
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/chat/completions"): self._chat,
        }

    def _completions(self, headers: dict[str, str], body: bytes) -> Reply:
        request = json.loads(body)
        as_ids = request.get("return_tokens_as_token_ids", False)
        logprobs = {
            "tokens": [f"token_id:{i}" if as_ids else text for i, text, _ in self.tokens],
            "token_logprobs": [lp for _, _, lp in self.tokens],
        }
        choice = {"text": "".join(t for _, t, _ in self.tokens), "logprobs": logprobs}
        usage = {"prompt_tokens": len(request["prompt"]), "completion_tokens": len(self.tokens)}
        return Reply(200, {"choices": [{**choice, "finish_reason": self.finish_reason}], "usage": usage})

    def _chat(self, headers: dict[str, str], body: bytes) -> Reply:
        content = [{"token": text, "logprob": lp} for _, text, lp in self.tokens]
        message = {"role": "assistant", "content": "".join(t for _, t, _ in self.tokens)}
        choice = {"message": message, "logprobs": {"content": content}, "finish_reason": self.finish_reason}
        return Reply(200, {"choices": [choice], "usage": {"prompt_tokens": 5}})
