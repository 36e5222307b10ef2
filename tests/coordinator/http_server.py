"""A coordinator served by uvicorn in a thread, over real HTTP: for tests that need a socket (the
fuzzer, a browser, the worker's own client) rather than TestClient."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.db import migrate, transaction
from coordinator.runtime import Runtime, build_runtime, set_runtime
from coordinator.workers import service as workers
from shared.protocol import Scope


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
