"""`flywheel demo`: a whole campaign on one machine, no configuration, no GPU.

It starts a coordinator (SQLite in a local folder, in-process tasks), loads an arithmetic problem
set, starts two worker daemons as separate processes with the bundled tiny model, runs the
campaign to completion with a progress bar, prints a summary and writes Parquet and JSONL dumps.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import Settings
from shared.assets import TINY_MODEL_NAME
from shared.protocol import CampaignOut


@dataclass
class DemoResult:
    campaign: CampaignOut
    wall_s: float
    campaign_s: float  # from the workers' start to the last verdict
    parquet: Path
    jsonl: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """uvicorn in a background thread, so the demo's own process watches and reports."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="flywheel-api", daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the demo coordinator did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _setup(settings: Settings, problems: int, samples: int, max_tokens: int) -> tuple[str, Any]:
    """Fresh schema, an operator token, the problem set and the campaign."""
    from coordinator.campaigns import service as campaigns
    from coordinator.db import make_engine, make_session_factory, migrate, transaction
    from coordinator.problems import service as problem_sets
    from coordinator.workers import service as workers
    from shared.protocol import CampaignCreate, ModelRef, ProblemSetCreate, SamplingParams, Scope

    migrate(settings)
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as session:
        _, token = workers.create(session, "demo-operator", Scope.operator)
        problem_set = problem_sets.create_set(
            session,
            ProblemSetCreate(name="arithmetic-demo", source="arithmetic", split="test", limit=problems),
        )
        campaign = campaigns.create(
            session,
            CampaignCreate(
                name="demo",
                problem_set_id=problem_set.id,
                model=ModelRef(name=TINY_MODEL_NAME),
                sampling=SamplingParams(temperature=1.0, max_tokens=max_tokens),
                samples_per_problem=samples,
                seed=1234,
            ),
        )
    engine.dispose()
    return token, campaign.id


def _register(url: str, name: str) -> str:
    import httpx

    from shared.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, EngineInfo, RegisterRequest, Routes

    body = RegisterRequest(name=name, engine=EngineInfo(name="transformers"), models=[TINY_MODEL_NAME])
    response = httpx.post(
        f"{url}/v1{Routes.register}",
        content=body.model_dump_json(),
        headers={"Content-Type": "application/json", PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def _start_worker(url: str, token: str, name: str, folder: Path, batch: int) -> subprocess.Popen[bytes]:
    # One thread per worker: two workers share two cores without fighting over them.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "flywheel",
        "worker",
        "run",
        "--coordinator",
        url,
        "--token",
        token,
        "--engine",
        "transformers",
        "--model",
        TINY_MODEL_NAME,
        "--device",
        "cpu",
        "--name",
        name,
        "--batch-size",
        str(batch),
        "--max-jobs",
        str(batch),
        "--spool",
        str(folder / f"spool-{name}"),
        "--state-dir",
        str(folder / f"state-{name}"),
        "--exit-when-idle",
        "3",
        "--progress",
        "none",
    ]
    log = (folder / f"{name}.log").open("wb")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _watch(
    runtime: Any, campaign_id: Any, procs: list[subprocess.Popen[bytes]], timeout_s: float
) -> CampaignOut:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from coordinator.campaigns import service as campaigns
    from coordinator.campaigns.models import CampaignStatus
    from coordinator.db import transaction

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout_s
    with Progress(*columns) as bar:
        task = bar.add_task("campaign demo", total=None, status="")
        while True:
            with transaction(runtime.sessions) as session:
                out = campaigns.to_out(session, campaigns.get(session, campaign_id))
            p = out.progress
            status = (
                f"accepted {p.accepted}  rejected {p.rejected}  in flight {p.leased}  "
                f"tokens {p.completion_tokens}"
            )
            bar.update(task, total=p.jobs, completed=p.accepted + p.rejected, status=status)
            if out.status == CampaignStatus.DONE:
                return out
            if all(proc.poll() is not None for proc in procs) and p.queued + p.leased > 0:
                raise RuntimeError("the workers stopped before the campaign finished; see their logs")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the campaign did not finish within {timeout_s:.0f}s")
            time.sleep(0.5)


def _export(runtime: Any, campaign_id: Any, folder: Path) -> tuple[Path, Path]:
    from coordinator.datasets import service as datasets
    from coordinator.db import read_transaction

    parquet, jsonl = folder / "demo-traces.parquet", folder / "demo-traces.jsonl"
    where = datasets.ExportFilter(statuses=("accepted", "rejected"))
    datasets.write_parquet(datasets.records(runtime.sessions, campaign_id, where), parquet)
    with jsonl.open("wb") as handle:
        for chunk in datasets.jsonl_chunks(datasets.records(runtime.sessions, campaign_id, where)):
            handle.write(chunk)
    with read_transaction(runtime.sessions) as session:
        (folder / "README.md").write_text(datasets.dataset_card(session, campaign_id), encoding="utf-8")
    return parquet, jsonl


def run_demo(
    folder: Path, problems: int, samples: int, max_tokens: int, workers: int, timeout_s: float
) -> DemoResult:
    from coordinator.app import create_app
    from coordinator.queue import InProcessQueue
    from coordinator.runtime import build_runtime

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("flywheel.db*"):
        stale.unlink()  # every demo run starts from an empty database
    settings = Settings(
        database_url=f"sqlite:///{folder / 'flywheel.db'}",
        data_dir=folder,
        lease_ttl_s=60,
        heartbeat_interval_s=5,
        requeue_pending_after_s=30,
    )
    _, campaign_id = _setup(settings, problems, samples, max_tokens)
    runtime = build_runtime(settings)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with ServerThread(create_app(settings, runtime), _free_port()) as server:
            for i in range(workers):
                name = f"demo-worker-{i + 1}"
                procs.append(_start_worker(server.url, _register(server.url, name), name, folder, batch=8))
            workers_started = time.monotonic()
            campaign = _watch(runtime, campaign_id, procs, timeout_s)
            campaign_s = time.monotonic() - workers_started
            if isinstance(runtime.queue, InProcessQueue):
                runtime.queue.join(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        runtime.close()
    parquet, jsonl = _export(runtime, campaign_id, folder)
    return DemoResult(campaign, time.monotonic() - started, campaign_s, parquet, jsonl)


def print_summary(result: DemoResult, workers: int) -> None:
    from rich.console import Console
    from rich.table import Table

    p = result.campaign.progress
    table = Table(title="Flywheel demo", show_header=False)
    rows = [
        ("jobs", str(p.jobs)),
        ("accepted (verified correct)", str(p.accepted)),
        ("rejected (verified wrong)", str(p.rejected)),
        ("accuracy", f"{p.accepted / max(1, p.jobs):.1%}"),
        ("completion tokens", str(p.completion_tokens)),
        (
            "campaign time",
            f"{result.campaign_s:.1f} s (workers' start, model loading included, to last verdict)",
        ),
        ("tokens/s", f"{p.completion_tokens / max(result.campaign_s, 1e-9):.1f} over the campaign time"),
        ("workers", str(workers)),
        ("wall time", f"{result.wall_s:.1f} s"),
        ("Parquet dump", str(result.parquet)),
        ("JSONL dump", str(result.jsonl)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flywheel demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("flywheel-demo"), help="folder for the database and dumps"
    )
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--samples", type=int, default=2, help="samples per problem")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    result = run_demo(
        args.dir.resolve(), args.problems, args.samples, args.max_tokens, args.workers, args.timeout
    )
    print_summary(result, args.workers)
    return 0
