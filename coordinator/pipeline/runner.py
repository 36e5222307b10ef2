"""What a pipeline executor works with: `Runner` (sessions, throttled progress that notices a lost
job, outputs registered as artifacts, the job's work folder), `Outcome` (what an executor
returns) and `JobLost`. Its own module so the executors (tasks, trainer) import it without
importing each other."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from coordinator.db import transaction
from coordinator.errors import FlywheelError
from coordinator.pipeline import service
from coordinator.pipeline.models import Artifact, PipelineJob
from coordinator.runtime import Runtime

T = TypeVar("T")


class JobLost(FlywheelError):
    """The job was cancelled or handed to another runner while this one worked (the runner stops;
    never an HTTP answer, but a conflict if it were one)."""

    status_code = 409
    code = "job_lost"


@dataclass(frozen=True)
class Outcome:
    waiting: bool = False
    poll_s: float = 0.0
    stage: str = ""


class Runner:
    """What an executor uses: sessions, throttled progress, outputs, the job's work folder."""

    def __init__(self, runtime: Runtime, job_id: uuid.UUID, token: uuid.UUID) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.job_id = job_id
        self.token = token
        self.files = service.store(runtime.settings)
        self.workdir = service.workdir(runtime.settings, job_id)
        self._last = 0.0
        self._lost = threading.Event()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with transaction(self.runtime.sessions) as session:
            yield session

    def read(self, work: Callable[[Session], T]) -> T:
        with self.session() as session:
            return work(session)

    def job(self, session: Session) -> PipelineJob:
        return service.get_job(session, self.job_id)

    def progress(
        self, fraction: float, stage: str, metrics: dict[str, Any] | None = None, force: bool = False
    ) -> None:
        """Record progress (at most once a second unless forced); raises JobLost if the job is gone.
        Never call it inside `session()`: SQLite allows one writer, and that would be two."""
        if self._lost.is_set():
            raise JobLost(f"pipeline job {self.job_id} was cancelled or taken over")
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        values: dict[str, Any] = {"progress": max(0.0, min(1.0, fraction)), "stage": stage[:256]}
        if metrics is not None:
            values["metrics"] = metrics
        with self.session() as session:
            if not service.touch(session, self.job_id, self.token, **values):
                self._lost.set()
                raise JobLost(f"pipeline job {self.job_id} was cancelled or taken over")

    @contextlib.contextmanager
    def keepalive(self) -> Iterator[None]:
        """Heartbeat from a side thread, so a long step (loading a model) never looks like a crash."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(service.KEEPALIVE_S):
                with self.session() as session:
                    if not service.touch(session, self.job_id, self.token):
                        self._lost.set()
                        return

        thread = threading.Thread(target=beat, name=f"pipeline-keepalive-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def output(
        self,
        label: str,
        path: Path,
        *,
        kind: str,
        name: str,
        filename: str,
        media_type: str,
        meta: dict[str, Any],
    ) -> Artifact:
        with self.session() as session:
            artifact = service.register_artifact(
                session,
                self.files,
                path,
                kind=kind,
                name=name,
                filename=filename,
                media_type=media_type,
                job_id=self.job_id,
                meta=meta,
            )
            service.set_output(session, self.job_id, label, artifact)
            return artifact

    def json_output(self, label: str, document: dict[str, Any], *, kind: str, name: str) -> Artifact:
        path = self.workdir / f"{label}.json"
        write_text(path, json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")
        return self.output(
            label, path, kind=kind, name=name, filename=path.name, media_type="application/json", meta={}
        )


def write_text(path: Path, text: str) -> None:
    """Write a work file, making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
