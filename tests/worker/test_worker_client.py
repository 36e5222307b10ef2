"""The coordinator client against a real local HTTP server: headers, error mapping, retries."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from worker_fakes import Endless, FakeCoordinator, Reply, error_reply

from shared.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    EngineInfo,
    LeaseRequest,
    RegisterRequest,
    Routes,
)
from tests.waiting import wait_for
from worker.client import RESPONSE_LIMIT, CoordinatorClient, parse_retry_after
from worker.config import RetryPolicy
from worker.errors import (
    AuthError,
    CoordinatorError,
    ProtocolMismatch,
    RejectedError,
    ResponseTooLarge,
    TransientError,
)

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05)
LEASE = API_PREFIX + Routes.lease
INFO = API_PREFIX + Routes.info


def client_for(server: FakeCoordinator, retry: RetryPolicy = FAST, **kw: object) -> CoordinatorClient:
    return CoordinatorClient(server.url, "secret-token", retry=retry, timeout_s=5, **kw)  # type: ignore[arg-type]


def test_sends_token_and_protocol_headers(coordinator: FakeCoordinator) -> None:
    with client_for(coordinator) as client:
        info = client.check_protocol()
    assert info.protocol_version == PROTOCOL_VERSION
    _, path, headers, _ = coordinator.requests[-1]
    assert path == INFO
    assert headers["authorization"] == "Bearer secret-token"
    assert headers[PROTOCOL_HEADER.lower()] == str(PROTOCOL_VERSION)


def test_register_without_token_returns_one() -> None:
    server = FakeCoordinator()
    server.start()
    try:
        with CoordinatorClient(server.url, retry=FAST) as client:
            response = client.register(RegisterRequest(name="box", engine=EngineInfo(name="transformers")))
        assert response.token.startswith("fw_")
        assert "authorization" not in server.requests[-1][2]
    finally:
        server.stop()


def test_retries_5xx_then_succeeds(coordinator: FakeCoordinator) -> None:
    coordinator.fail_next(LEASE, error_reply(503, "unavailable"), error_reply(502, "bad_gateway"))
    with client_for(coordinator) as client:
        grant = client.lease(LeaseRequest(max_jobs=2))
    assert grant.jobs == []
    assert coordinator.count(LEASE) == 3


def test_429_honours_retry_after(coordinator: FakeCoordinator) -> None:
    coordinator.fail_next(LEASE, error_reply(429, "rate_limited", headers={"Retry-After": "1"}))
    slow_cap = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=5)
    started = time.monotonic()
    with client_for(coordinator, retry=slow_cap) as client:
        client.lease(LeaseRequest())
    assert time.monotonic() - started >= 1.0
    assert coordinator.count(LEASE) == 2


def test_gives_up_after_the_last_attempt(coordinator: FakeCoordinator) -> None:
    coordinator.fail_next(LEASE, *[error_reply(500, "boom", "kaput")] * 10)
    with client_for(coordinator) as client, pytest.raises(TransientError) as caught:
        client.lease(LeaseRequest())
    assert caught.value.status_code == 500 and caught.value.code == "boom" and "kaput" in str(caught.value)
    assert coordinator.count(LEASE) == FAST.attempts


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (error_reply(401, "unauthorized", "unknown token"), AuthError),
        (error_reply(403, "banned", "worker banned"), AuthError),
        (error_reply(409, "protocol_mismatch", "v2 only"), ProtocolMismatch),
        (error_reply(426, "upgrade_required"), ProtocolMismatch),
        (error_reply(422, "validation_error", "max_jobs too large"), RejectedError),
        (Reply(400, b"<html>bad request</html>"), RejectedError),
    ],
)
def test_4xx_maps_to_typed_errors_without_retry(
    coordinator: FakeCoordinator, reply: Reply, kind: type[CoordinatorError]
) -> None:
    coordinator.fail_next(LEASE, reply)
    with client_for(coordinator) as client, pytest.raises(kind) as caught:
        client.lease(LeaseRequest())
    assert caught.value.status_code == reply.status
    assert coordinator.count(LEASE) == 1


def test_non_json_error_body_keeps_the_text(coordinator: FakeCoordinator) -> None:
    coordinator.fail_next(LEASE, Reply(400, b"plain words"))
    with client_for(coordinator) as client, pytest.raises(RejectedError, match="plain words") as caught:
        client.lease(LeaseRequest())
    assert caught.value.code == "http_400"


def test_protocol_version_mismatch_is_refused() -> None:
    server = FakeCoordinator(protocol_version=PROTOCOL_VERSION + 1)
    server.start()
    try:
        with client_for(server) as client, pytest.raises(ProtocolMismatch, match="upgrade the worker"):
            client.check_protocol()
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_network_errors_are_retried_then_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with (
        CoordinatorClient(url, "t", retry=FAST) as client,
        pytest.raises(TransientError, match="ConnectError"),
    ):
        client.info()
    # Three backoff sleeps of at least half their ceiling (0.01, 0.02, 0.04) happened.
    assert time.monotonic() - started >= 0.035


def test_stop_event_cuts_the_backoff_short(coordinator: FakeCoordinator) -> None:
    coordinator.fail_next(LEASE, *[error_reply(503, "unavailable")] * 10)
    stop = threading.Event()
    patient = RetryPolicy(attempts=10, base_delay_s=30, max_delay_s=60)

    def stop_in_the_backoff() -> None:  # after the first answer, whenever it came
        wait_for(lambda: coordinator.count(LEASE) >= 1, 60, lambda: f"requests: {coordinator.requests}")
        stop.set()

    threading.Thread(target=stop_in_the_backoff, daemon=True).start()
    started = time.monotonic()
    with client_for(coordinator, retry=patient, stop=stop) as client, pytest.raises(TransientError):
        client.lease(LeaseRequest())
    # The first backoff sleeps at least half its ceiling: returning sooner means the stop cut it.
    assert time.monotonic() - started < patient.base_delay_s / 2
    assert coordinator.count(LEASE) == 1


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("7") == 7.0
    now = datetime.now(UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon") is None


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_delay_s=1, max_delay_s=8)
    assert [policy.delay(n, 0.999999) for n in range(5)] == pytest.approx([1, 2, 4, 8, 8], rel=1e-5)
    assert policy.delay(3, 0.0) == pytest.approx(4)


def test_error_bodies_are_read_only_up_to_the_limit(coordinator: FakeCoordinator) -> None:
    body = Endless(total=128 << 20)
    coordinator.fail_next(LEASE, Reply(500, body))
    once = RetryPolicy(attempts=1)
    with client_for(coordinator, retry=once) as client, pytest.raises(TransientError) as err:
        client.lease(LeaseRequest(max_jobs=1))
    assert body.done.wait(10)
    assert body.sent < body.total // 2  # the rest was never asked for (kernel buffers hold a few MiB)
    assert len(str(err.value)) < 1000


def test_an_answer_over_the_limit_is_refused_unread_and_not_retried(coordinator: FakeCoordinator) -> None:
    body = Endless(total=2 * RESPONSE_LIMIT)
    coordinator.fail_next(LEASE, Reply(200, body))
    with client_for(coordinator) as client, pytest.raises(ResponseTooLarge):
        client.lease(LeaseRequest(max_jobs=1))
    assert body.done.wait(10) and body.sent < body.total
    assert coordinator.count(LEASE) == 1


def test_plain_http_to_another_host_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    remote = f"http://coordinator-{uuid.uuid4().hex[:8]}.example.org:8000"
    local = ["http://localhost:8000", "http://127.0.0.1:1", "http://[::1]:80", "http://box.localhost"]
    with caplog.at_level(logging.WARNING, logger="flywheel.worker.client"):
        for url in [remote, remote, remote.replace("http://", "https://"), *local]:
            CoordinatorClient(url, retry=FAST).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and remote in warnings[0] and "unencrypted" in warnings[0]
