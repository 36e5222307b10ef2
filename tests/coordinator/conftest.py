from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.db import migrate, transaction
from coordinator.queue import InProcessQueue
from coordinator.runtime import Runtime, build_runtime, set_runtime
from coordinator.workers import service as workers
from shared.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, Scope


@dataclass
class Api:
    client: TestClient
    runtime: Runtime
    operator: dict[str, str]
    researcher: dict[str, str]

    def volunteer(self, name: str = "w") -> dict[str, str]:
        response = self.client.post(
            "/v1/workers/register", json={"name": name, "engine": {"name": "transformers"}}
        )
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}

    def drain(self) -> None:
        assert isinstance(self.runtime.queue, InProcessQueue)
        assert self.runtime.queue.join(timeout=120)


def make_settings(database_url: str, **overrides: object) -> Settings:
    # Fabricated traces stand in for generation in these tests: validation by re-scoring, which
    # would flag them, is off unless a test turns it on (tests/trust does).
    fields = {"validation_enabled": False, **overrides}
    return Settings(database_url=database_url, redis_url=None, **fields)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(
        database_url, lease_ttl_s=30, max_in_flight_per_worker=16, max_request_bytes=1_000_000
    )


@contextmanager
def serve(settings: Settings, wrap: Callable[[FastAPI], FastAPI] = lambda app: app) -> Iterator[Api]:
    """A migrated coordinator over TestClient (its app passed through `wrap`) with an operator and
    a researcher token."""
    migrate(settings)
    runtime = build_runtime(settings)
    set_runtime(runtime)  # tasks on the in-process queue look the runtime up
    with transaction(runtime.sessions) as session:
        _, op = workers.create(session, "op", Scope.operator)
        _, rs = workers.create(session, "rs", Scope.researcher)
    with TestClient(wrap(create_app(settings, runtime))) as client:
        yield Api(client, runtime, {"Authorization": f"Bearer {op}"}, {"Authorization": f"Bearer {rs}"})
    runtime.close()
    set_runtime(None)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with serve(settings) as served:
        yield served
