"""Fixtures for the credit tests: the coordinator over TestClient with validation off (fabricated
traces) and on (the tiny model's real traces, from tests/trust), and one served by uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.db import migrate, transaction
from coordinator.runtime import Runtime, build_runtime, set_runtime
from coordinator.workers import service as workers
from shared.protocol import Scope
from tests.coordinator.conftest import api, make_settings, settings
from tests.trust.conftest import engine, one_thread, trust_api

__all__ = ["api", "engine", "one_thread", "settings", "trust_api"]


@dataclass
class Served:
    url: str
    runtime: Runtime
    operator_token: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_http(config: Settings) -> Iterator[Served]:
    """A migrated coordinator served by uvicorn in a thread, with an operator token."""
    migrate(config)
    runtime = build_runtime(config)
    set_runtime(runtime)
    with transaction(runtime.sessions) as session:
        _, token = workers.create(session, "operator", Scope.operator)
    port = _free_port()
    app = create_app(config, runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the coordinator did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", runtime, token)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        runtime.close()
        set_runtime(None)


@pytest.fixture
def http_coordinator(database_url: str) -> Iterator[Served]:
    config = make_settings(
        database_url, rate_limit_per_s=0, registration_per_hour=0, initial_in_flight_per_worker=64,
        max_in_flight_per_worker=64, max_request_bytes=1_000_000,
    )  # fmt: skip
    yield from serve_http(config)
