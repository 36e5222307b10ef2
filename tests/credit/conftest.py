"""Fixtures for the credit tests: the coordinator over TestClient with validation off (fabricated
traces) and on (the tiny model's real traces, from tests/trust), and one served by uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.coordinator.conftest import api, make_settings, settings
from tests.coordinator.http_server import Served, serve_http
from tests.trust.conftest import engine, one_thread, trust_api

__all__ = ["Served", "api", "engine", "one_thread", "settings", "trust_api"]


@pytest.fixture
def http_coordinator(database_url: str) -> Iterator[Served]:
    config = make_settings(
        database_url, rate_limit_per_s=0, registration_per_hour=0, initial_in_flight_per_worker=64,
        max_in_flight_per_worker=64, max_request_bytes=1_000_000,
    )  # fmt: skip
    yield from serve_http(config)
