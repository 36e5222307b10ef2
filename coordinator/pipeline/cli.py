"""`flywheel coordinator pipeline ...`: submit and watch downstream jobs, fetch artifacts, start RL.

With `REDIS_URL` set, a submitted job goes to the `train` queue (run `flywheel coordinator tasks
--queues train` on a trusted machine); without it, or with `--here`, this process runs the job
itself and shows its progress until it ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from coordinator.commands import run_once
from shared.pipeline_types import PRECISION_HELP, Precision


def add_pipeline_commands(subparsers: Any) -> None:
    """Add `pipeline` with its sub-commands to `flywheel coordinator`'s sub-parsers."""
    pipeline = subparsers.add_parser("pipeline", help="downstream jobs: select, sft, evaluate, grpo")
    sub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    submit = sub.add_parser("submit", help="create a job from a JSON spec (see docs/pipeline.md)")
    submit.add_argument(
        "spec", type=Path, help='JSON file: {"kind": ..., ...} or {"name": ..., "spec": {...}}'
    )
    submit.add_argument("--name")
    _run_flags(submit)
    submit.set_defaults(func=_submit)
    select = sub.add_parser(
        "select", help="select and refine the accepted traces of campaigns (steps: see docs/pipeline.md)"
    )
    select.add_argument("--campaign", action="append", required=True, type=uuid.UUID, help="repeatable")
    select.add_argument(
        "--step",
        action="append",
        default=[],
        help='a step as JSON, repeatable, run in order: \'{"op": "shortest_verified"}\'',
    )
    select.add_argument("--name")
    _run_flags(select)
    select.set_defaults(func=_select)
    rl = sub.add_parser("rl", help="start a GRPO run whose rollouts volunteers produce")
    rl.add_argument("--model", required=True, help="base model name or flywheel-artifact/<sha256>")
    rl.add_argument("--problem-set", required=True, help="problem set name")
    rl.add_argument("--name")
    for flag, kind, default in _RL_FLAGS:
        rl.add_argument(flag, type=kind, default=default)
    rl.add_argument("--precision", choices=get_args(Precision), default="auto", help=PRECISION_HELP)
    _run_flags(rl)
    rl.set_defaults(func=_rl)
    run = sub.add_parser("run", help="run (or resume) a job in this process until it ends")
    run.add_argument("job_id", type=uuid.UUID)
    run.set_defaults(func=_run)
    status = sub.add_parser("status", help="a job's status, progress, metrics and outputs as JSON")
    status.add_argument("job_id", type=uuid.UUID)
    status.set_defaults(func=_status)
    listing = sub.add_parser("list", help="recent jobs")
    listing.add_argument("--kind", choices=["select", "sft", "evaluate", "grpo"])
    listing.set_defaults(func=_list)
    fetch = sub.add_parser("fetch", help="copy an artifact out of the store (checked against its sha256)")
    fetch.add_argument("sha256")
    fetch.add_argument("--out", type=Path, required=True)
    fetch.set_defaults(func=_fetch)


_RL_FLAGS: list[tuple[str, Callable[[str], Any], Any]] = [
    ("--steps", int, 20),
    ("--group-size", int, 8),
    ("--groups-per-step", int, 16),
    ("--lr", float, 1e-5),
    ("--kl-coef", float, 0.0),
    ("--max-staleness", int, 1),
    ("--temperature", float, 1.0),
    ("--max-tokens", int, 256),
    ("--seed", int, 0),
    ("--device", str, "auto"),
]


def _run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--here", action="store_true", help="run the job in this process even with Redis")


# --------------------------------------------------------------------------- commands


def _submit(args: argparse.Namespace) -> int:
    body = json.loads(args.spec.read_text(encoding="utf-8"))
    request = body if "spec" in body else {"spec": body}
    if args.name:
        request["name"] = args.name
    return _create(request, args.here)


def _select(args: argparse.Namespace) -> int:
    try:
        steps = [json.loads(step) for step in args.step]
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--step must be a JSON object: {exc}") from exc
    spec = {"kind": "select", "campaign_ids": [str(c) for c in args.campaign], "steps": steps}
    return _create({"spec": spec, "name": args.name} if args.name else {"spec": spec}, args.here)


def _rl(args: argparse.Namespace) -> int:
    from coordinator.problems import repository as problems

    def set_id(session: Any) -> str:
        found = problems.set_by_name(session, args.problem_set)
        if found is None:
            raise SystemExit(f"no problem set named {args.problem_set!r}")
        return str(found.id)

    spec = {
        "kind": "grpo",
        "model": args.model,
        "problem_set_id": run_once(set_id),
        "steps": args.steps,
        "group_size": args.group_size,
        "groups_per_step": args.groups_per_step,
        "lr": args.lr,
        "kl_coef": args.kl_coef,
        "max_staleness": args.max_staleness,
        "seed": args.seed,
        "device": args.device,
        "precision": args.precision,
        "sampling": {"temperature": args.temperature, "max_tokens": args.max_tokens},
    }
    return _create({"spec": spec, "name": args.name} if args.name else {"spec": spec}, args.here)


def _create(request: dict[str, Any], here: bool) -> int:
    from coordinator.config import Settings
    from coordinator.pipeline import service
    from shared.pipeline_types import PipelineJobCreate

    settings = Settings()
    parsed = PipelineJobCreate.model_validate(request)

    def create(session: Any) -> tuple[uuid.UUID, uuid.UUID | None]:
        job = service.create_job(session, parsed, settings)
        return job.id, job.wake_token

    job_id, token = run_once(create)
    assert token is not None
    print(json.dumps({"job_id": str(job_id)}), flush=True)
    if settings.redis_url and not here:
        _enqueue_remote(settings, job_id, token)
        return 0
    return _foreground(job_id, token)


def _run(args: argparse.Namespace) -> int:
    from coordinator.pipeline import service

    return _foreground(args.job_id, run_once(lambda s: service.resume(s, args.job_id)))


def _status(args: argparse.Namespace) -> int:
    from coordinator.pipeline import service

    out = run_once(lambda s: service.to_out(s, service.get_job(s, args.job_id)))
    print(out.model_dump_json(indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    from coordinator.pipeline import service

    def rows(session: Any) -> list[dict[str, Any]]:
        return [
            {
                "id": str(j.id),
                "name": j.name,
                "kind": j.kind,
                "status": j.status,
                "progress": round(j.progress, 3),
                "stage": j.stage,
            }
            for j in service.list_jobs(session, args.kind)
        ]

    for row in run_once(rows):
        print(json.dumps(row))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from coordinator.config import Settings
    from coordinator.pipeline import service
    from shared.assets import file_sha256

    artifact = run_once(lambda s: service.artifact_out(service.get_artifact(s, args.sha256)))
    service.store(Settings()).copy_to(artifact.sha256, args.out)
    if file_sha256(args.out) != artifact.sha256:
        raise SystemExit(f"{args.out} does not hash to {artifact.sha256}: the store is damaged")
    print(json.dumps({"out": str(args.out), "kind": artifact.kind, "size_bytes": artifact.size_bytes}))
    return 0


# --------------------------------------------------------------------------- running


def _enqueue_remote(settings: Any, job_id: uuid.UUID, token: uuid.UUID) -> None:
    from coordinator.pipeline.tasks import run_job
    from coordinator.queue import make_queue

    queue = make_queue(settings.redis_url)
    try:
        queue.enqueue(run_job, str(job_id), str(token), 0.0, queue=settings.train_queue)
    finally:
        queue.close()
    print(f"queued on {settings.train_queue!r}; watch with `flywheel coordinator pipeline status {job_id}`")


class _Foreground:
    """A task queue that keeps this process's tasks to run one after another, in order."""

    def __init__(self) -> None:
        self.items: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()

    def enqueue(self, task: Callable[..., Any], *args: Any, queue: str = "default") -> None:
        self.items.append((task, args))

    def close(self) -> None:
        self.items.clear()


def _foreground(job_id: uuid.UUID, token: uuid.UUID) -> int:
    from coordinator.config import Settings
    from coordinator.db import make_engine, make_session_factory
    from coordinator.pipeline.tasks import run_job
    from coordinator.runtime import Runtime, set_runtime

    settings = Settings()
    engine = make_engine(settings)
    queue = _Foreground()
    runtime = Runtime(settings=settings, engine=engine, sessions=make_session_factory(engine), queue=queue)
    set_runtime(runtime)
    queue.enqueue(run_job, str(job_id), str(token), 0.0)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(runtime, job_id, stop), daemon=True)
    watcher.start()
    try:
        while queue.items:
            task, args = queue.items.popleft()
            task(*args)
    finally:
        stop.set()
        watcher.join(timeout=5)
        engine.dispose()
        set_runtime(None)
    return _report(runtime, job_id)


def _watch(runtime: Any, job_id: uuid.UUID, stop: threading.Event) -> None:
    """A progress bar of the job's stored progress and stage, read from the database."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from coordinator.db import transaction
    from coordinator.pipeline import service

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("starting", total=1.0)
        while not stop.wait(1.0):
            with transaction(runtime.sessions) as session:
                job = service.get_job(session, job_id)
                bar.update(
                    task, completed=job.progress, description=f"{job.kind} {job.status}: {job.stage}"[:80]
                )


def _report(runtime: Any, job_id: uuid.UUID) -> int:
    from coordinator.db import make_engine, make_session_factory, transaction
    from coordinator.pipeline import service
    from coordinator.pipeline.models import JobState

    engine = make_engine(runtime.settings)
    try:
        with transaction(make_session_factory(engine)) as session:
            out = service.to_out(session, service.get_job(session, job_id))
    finally:
        engine.dispose()
    print(out.model_dump_json(indent=2))
    return 0 if out.status == JobState.DONE else 1


if __name__ == "__main__":  # `python -m coordinator.pipeline.cli ...` until `flywheel` wires it in
    parser = argparse.ArgumentParser(prog="flywheel coordinator")
    add_pipeline_commands(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.func(parsed))
