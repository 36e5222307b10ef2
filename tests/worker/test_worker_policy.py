"""The policy cache against the real coordinator app over HTTP: downloads verified by sha256,
resumed with Range after an interruption, restarted when a server ignores Range, refused when the
bytes are wrong, and evicted least recently used first."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import MODEL, EchoEngine, make_job
from fastapi.testclient import TestClient

from coordinator.app import create_app
from coordinator.config import Settings
from coordinator.db import migrate, transaction
from coordinator.pipeline import service
from coordinator.runtime import Runtime, build_runtime, set_runtime
from coordinator.workers import service as workers
from shared.assets import TINY_MODEL_NAME, tiny_model_dir
from shared.protocol import JobSpec, PolicyRef, Scope
from tests.coordinator.conftest import make_settings
from tests.pipeline.pipeline_helpers import live_server
from worker.client import CoordinatorClient
from worker.config import RetryPolicy
from worker.errors import PolicyError
from worker.policy import WEIGHTS, PolicyCache, Weights
from worker.rollouts import PolicyEngine

ATTEMPTS = 3


@dataclass
class Live:
    url: str
    token: str
    runtime: Runtime
    settings: Settings


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[Live]:
    settings = make_settings(database_url, data_dir=tmp_path / "data")
    migrate(settings)
    runtime = build_runtime(settings)
    with transaction(runtime.sessions) as session:
        _, token = workers.create(session, "volunteer", Scope.volunteer)
    app = create_app(settings, runtime)
    with TestClient(app), live_server(app) as url:
        yield Live(url, token, runtime, settings)
    runtime.close()
    set_runtime(None)


class CutStream(httpx.SyncByteStream):
    """A response body that breaks off after `limit` bytes, as a dropped connection does."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection reset by the test")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class Network(httpx.BaseTransport):
    """The real network, recorded; optionally a proxy that drops Range headers, or a connection
    that breaks off the first download after `cut_after` bytes."""

    def __init__(self, strip_range: bool = False, cut_after: int | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.strip_range, self.cut_after = strip_range, cut_after
        self.downloads: list[tuple[str | None, int]] = []  # (Range asked for, status) per download

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        asked = request.headers.get("range")
        if self.strip_range and asked is not None:
            del request.headers["range"]
        response = self.inner.handle_request(request)
        if not request.url.path.startswith("/v1/pipeline/artifacts/") or request.url.path.endswith("/info"):
            return response
        self.downloads.append((asked, response.status_code))
        if self.cut_after is not None:
            assert isinstance(response.stream, httpx.SyncByteStream)
            stream, self.cut_after = CutStream(response.stream, self.cut_after), None
            return httpx.Response(response.status_code, headers=response.headers, stream=stream)
        return response

    def close(self) -> None:
        self.inner.close()


def publish(live: Live, data: bytes, tmp_path: Path) -> Weights:
    """Register `data` as a policy version's weights on the coordinator."""
    source = tmp_path / f"upload-{hashlib.sha256(data).hexdigest()[:12]}"
    source.write_bytes(data)
    with transaction(live.runtime.sessions) as session:
        artifact = service.register_artifact(
            session, service.store(live.settings), source, kind="policy", name="run/policy",
            filename=WEIGHTS, media_type="application/octet-stream", job_id=None,
            meta={"base_model": TINY_MODEL_NAME},
        )  # fmt: skip
        sha, size = artifact.sha256, artifact.size_bytes
    return Weights(sha, TINY_MODEL_NAME, size, service.artifact_url(sha))


def cache_for(
    live: Live, root: Path, network: Network, keep: int = 3, max_bytes: int = 100 << 30
) -> PolicyCache:
    retry = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    client = CoordinatorClient(live.url, live.token, retry=retry, transport=network)
    return PolicyCache(root, client, keep=keep, max_bytes=max_bytes, attempts=ATTEMPTS)


def test_a_version_is_downloaded_verified_and_loadable(live: Live, tmp_path: Path) -> None:
    from worker.engines.hf import TransformersEngine

    weights = publish(live, (tiny_model_dir() / WEIGHTS).read_bytes(), tmp_path)
    network = Network()
    cache = cache_for(live, tmp_path / "cache", network)
    assert cache.weights_for(weights.model_name) == weights  # what a job without spec.policy gets
    folder = cache.ensure(weights)
    assert folder == tmp_path / "cache" / weights.sha256 and cache.ready(weights.sha256)
    assert hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest() == weights.sha256
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert network.downloads == [(None, 200)] and not list(cache.root.glob("*.partial"))
    assert cache.ensure(weights) == folder and len(network.downloads) == 1  # cached: no new request
    engine = TransformersEngine.load(weights.model_name, path=str(folder), device="cpu")
    assert engine.model_name == weights.model_name


def test_an_interrupted_download_resumes_with_a_range_request(live: Live, tmp_path: Path) -> None:
    weights = publish(live, os.urandom(3_000_000), tmp_path)
    network = Network(cut_after=1_234_567)
    cache_for(live, tmp_path / "cache", network).ensure(weights)
    assert network.downloads == [(None, 200), ("bytes=1234567-", 206)]


def test_a_truncated_partial_file_resumes_with_206(live: Live, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    weights = publish(live, data, tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{weights.sha256}.partial").write_bytes(data[:777_777])  # a killed worker's
    network = Network()
    folder = cache_for(live, tmp_path / "cache", network).ensure(weights)
    assert network.downloads == [("bytes=777777-", 206)]
    assert (folder / WEIGHTS).read_bytes() == data


def test_a_server_that_ignores_range_makes_the_download_start_over(live: Live, tmp_path: Path) -> None:
    data = os.urandom(1_000_000)
    weights = publish(live, data, tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{weights.sha256}.partial").write_bytes(b"x" * 400_000)  # not even a prefix
    network = Network(strip_range=True)
    folder = cache_for(live, tmp_path / "cache", network).ensure(weights)
    # One request: the 200's body replaced the partial file instead of being appended to it.
    assert network.downloads == [("bytes=400000-", 200)]
    assert (folder / WEIGHTS).read_bytes() == data


def test_bytes_that_do_not_hash_to_the_name_are_deleted_and_refused(live: Live, tmp_path: Path) -> None:
    data = os.urandom(500_000)
    weights = publish(live, data, tmp_path)
    stored = service.store(live.settings).path(weights.sha256)
    stored.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # the coordinator's copy rots: same size
    network = Network()
    cache = cache_for(live, tmp_path / "cache", network)
    with pytest.raises(PolicyError, match=f"in {ATTEMPTS} attempts: the downloaded file hashes to"):
        cache.ensure(weights)
    assert len(network.downloads) == ATTEMPTS  # bounded: deleted and fetched again each time
    assert list(cache.root.iterdir()) == [] and not cache.ready(weights.sha256)


def test_more_bytes_than_announced_are_refused(live: Live, tmp_path: Path) -> None:
    weights = publish(live, os.urandom(300_000), tmp_path)
    short = Weights(weights.sha256, weights.base_model, 100_000, weights.url)
    cache = cache_for(live, tmp_path / "cache", Network())
    with pytest.raises(PolicyError, match="larger than the 100000 bytes announced"):
        cache.ensure(short)
    assert list(cache.root.iterdir()) == []


def test_the_least_recently_used_versions_are_evicted_never_the_held_one(live: Live, tmp_path: Path) -> None:
    a, b, c, d, e = (publish(live, os.urandom(200_000), tmp_path) for _ in range(5))
    cache = cache_for(live, tmp_path / "cache", Network(), keep=2)
    for weights in (a, b, c):
        cache.ensure(weights)
    assert cache.versions() == [b.sha256, c.sha256]
    cache.ensure(b)  # used again: now the most recent
    cache.ensure(d)
    assert cache.versions() == [b.sha256, d.sha256]
    cache.hold(b.sha256)  # the engine runs b: it stays although d and e are newer
    cache.ensure(e)
    assert set(cache.versions()) == {b.sha256, e.sha256}


def test_the_disk_cap_evicts_to_make_room_and_refuses_what_cannot_fit(live: Live, tmp_path: Path) -> None:
    small = [publish(live, os.urandom(200_000), tmp_path) for _ in range(3)]
    big = publish(live, os.urandom(600_000), tmp_path)
    cache = cache_for(live, tmp_path / "cache", Network(), keep=10, max_bytes=500_000)
    for weights in small:
        cache.ensure(weights)
    assert cache.versions() == [small[1].sha256, small[2].sha256]  # the oldest made room
    with pytest.raises(PolicyError, match="more than the policy cache may hold"):
        cache.ensure(big)


def test_a_batch_runs_each_model_it_names_and_the_engine_switches_between_them(tmp_path: Path) -> None:
    """An engine that cannot swap weights in place (vLLM) is loaded again for each model."""
    sha, other = "ab" * 32, "cd" * 32
    (tmp_path / sha).mkdir()
    (tmp_path / sha / WEIGHTS).write_bytes(b"weights")  # downloaded before: no request needed
    cache = PolicyCache(tmp_path, CoordinatorClient("http://127.0.0.1:9"))
    loads: list[tuple[str, str]] = []

    def loader(name: str, path: str) -> EchoEngine:
        loads.append((name, path))
        engine = EchoEngine()
        engine.model_name = name
        return engine

    served = PolicyEngine(EchoEngine(), cache, MODEL, "/models/home", "base/model", loader)

    def rollout(sha256: str, base: str) -> JobSpec:
        ref = PolicyRef(version=1, sha256=sha256, base_model=base, size_bytes=7, url=f"/v1/x/{sha256}")
        return make_job(ref.model_name).model_copy(update={"policy": ref})

    jobs = [make_job(MODEL, seed=1), rollout(sha, "base/model"), make_job(MODEL, seed=2)]
    assert [g.text for g in served.generate(jobs)] == [str(j.job_id) for j in jobs]  # in order
    assert loads == [(f"flywheel-artifact/{sha}", str(tmp_path / sha))]  # the home model ran first
    assert served.running == f"flywheel-artifact/{sha}"
    assert "built on 'elsewhere'" in (served.unsupported(rollout(other, "elsewhere")) or "")
    served.generate([make_job(MODEL, seed=3)])
    assert loads[-1] == (MODEL, "/models/home") and served.running == MODEL
