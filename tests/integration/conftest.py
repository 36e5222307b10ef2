"""Real processes: `flywheel coordinator serve` (+ `tasks` with Redis) and worker daemons."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.campaigns import service as campaigns
from coordinator.config import Settings
from coordinator.db import make_engine, make_session_factory, migrate, transaction
from coordinator.problems import service as problem_sets
from coordinator.workers import service as workers
from shared.assets import TINY_MODEL_NAME
from shared.protocol import CampaignCreate, ModelRef, ProblemSetCreate, SamplingParams, Scope
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A coordinator under test and the workers it serves, all separate processes."""

    database_url: str
    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    tasks: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    operator: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = (self.folder / log).open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "flywheel", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT
        )

    def start_coordinator(self) -> None:
        self.server = self._spawn(["coordinator", "serve", "--port", str(self.port)], "server.log")
        if REDIS_URL and (self.tasks is None or self.tasks.poll() is not None):
            self.tasks = self._spawn(["coordinator", "tasks"], "tasks.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("coordinator did not start: " + (self.folder / "server.log").read_text())

    def kill_coordinator(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(timeout=30)

    def register(self, name: str) -> str:
        body = {"name": name, "engine": {"name": "transformers"}, "models": [TINY_MODEL_NAME]}
        response = httpx.post(f"{self.url}/v1/workers/register", json=body, timeout=30)
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def start_worker(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        args = [
            "worker",
            "run",
            "--coordinator",
            self.url,
            "--token",
            self.register(name),
            "--engine",
            "transformers",
            "--model",
            TINY_MODEL_NAME,
            "--device",
            "cpu",
            "--name",
            name,
            "--spool",
            str(self.folder / f"spool-{name}"),
            "--state-dir",
            str(self.folder / f"state-{name}"),
            "--progress",
            "plain",
            *extra,
        ]
        proc = self._spawn(args, f"{name}.log")
        self.workers.append(proc)
        return proc

    def campaign(
        self, problems: int, samples: int, max_tokens: int = 256, model: str = TINY_MODEL_NAME
    ) -> uuid.UUID:
        settings = Settings(database_url=self.database_url)
        engine = make_engine(settings)
        name = uuid.uuid4().hex[:8]
        with transaction(make_session_factory(engine)) as session:
            problem_set = problem_sets.create_set(
                session, ProblemSetCreate(name=f"set-{name}", source="arithmetic", limit=problems, seed=7)
            )
            campaign = campaigns.create(
                session,
                CampaignCreate(
                    name=f"campaign-{name}",
                    problem_set_id=problem_set.id,
                    model=ModelRef(name=model),
                    sampling=SamplingParams(temperature=1.0, max_tokens=max_tokens),
                    samples_per_problem=samples,
                    seed=11,
                ),
            )
        engine.dispose()
        return campaign.id

    def progress(self, campaign_id: uuid.UUID) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.operator}"}
        response = httpx.get(f"{self.url}/v1/campaigns/{campaign_id}", headers=headers, timeout=30)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_done(self, campaign_id: uuid.UUID, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.progress(campaign_id)
            if body["status"] == "done":
                return body
            time.sleep(0.5)
        logs = {p.name: p.read_text()[-2000:] for p in self.folder.glob("*.log")}
        raise AssertionError(f"campaign not done: {self.progress(campaign_id)}\n{logs}")

    def stop(self) -> None:
        for proc in [*self.workers, self.server, self.tasks]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.server, self.tasks]:
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture
def cluster(database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FLYWHEEL_LEASE_TTL_S": "4",
        "FLYWHEEL_HEARTBEAT_INTERVAL_S": "1",
        "FLYWHEEL_REQUEUE_PENDING_AFTER_S": "5",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    if REDIS_URL:
        env["REDIS_URL"] = REDIS_URL
        suffix = uuid.uuid4().hex[:8]
        env["FLYWHEEL_VERIFY_QUEUE"] = f"verify-{suffix}"
        env["FLYWHEEL_DEFAULT_QUEUE"] = f"default-{suffix}"
    settings = Settings(database_url=database_url)
    migrate(settings)
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as session:
        _, operator = workers.create(session, "operator", Scope.operator)
    engine.dispose()
    cluster = Cluster(database_url=database_url, folder=tmp_path, env=env, operator=operator)
    cluster.start_coordinator()
    yield cluster
    cluster.stop()
