"""Fixtures for the pipeline tests: the coordinator app with the pipeline routes and a data folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from coordinator.config import Settings
from coordinator.pipeline.endpoints import router as pipeline_router
from shared.protocol import API_PREFIX
from tests.coordinator.conftest import Api, make_settings, serve


def with_pipeline(app: FastAPI) -> FastAPI:
    """The app with the pipeline routes, unless app.py already includes them."""
    paths = {getattr(route, "path", "") for route in app.routes}
    if API_PREFIX + "/pipeline/jobs" not in paths:
        app.include_router(pipeline_router, prefix=API_PREFIX)
    return app


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains little from more threads, and loses much when CI's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        lease_ttl_s=30,
        max_in_flight_per_worker=64,
        data_dir=tmp_path / "data",
        max_request_bytes=4_000_000,
    )


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    with serve(settings, with_pipeline) as served:
        yield served
