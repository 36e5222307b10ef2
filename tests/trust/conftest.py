"""Fixtures for the trust tests: the bundled tiny model loaded once, as a worker and as a validator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ml.scorer import Scorer, scorer
from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from tests.coordinator.conftest import Api, make_settings, serve
from worker.engines.hf import TransformersEngine

pytestmark = pytest.mark.skipif(
    not (tiny_model_dir() / "config.json").exists(), reason="the bundled tiny model is not built"
)


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared two-core machine a second thread mostly waits for the first."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def engine() -> Iterator[TransformersEngine]:
    """The worker's own engine (CPU, float32), as an honest volunteer runs it."""
    loaded = TransformersEngine.load(TINY_MODEL_NAME, device="cpu")
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def validator() -> Scorer:
    """The validator's copy of the model, from the per-process cache the validation task uses."""
    return scorer(TINY_MODEL_NAME, None, "cpu", "float32")


@pytest.fixture
def trust_api(database_url: str) -> Iterator[Api]:
    """The coordinator over HTTP (TestClient) with validation on, as production runs it."""
    settings = make_settings(
        database_url,
        validation_enabled=True,
        validation_floor=0.02,
        validation_device="cpu",
        lease_ttl_s=60,
        max_in_flight_per_worker=64,
        max_request_bytes=1_000_000,
    )
    with serve(settings) as served:
        yield served
