"""`flywheel coordinator ...`: serve the API, run background tasks, administer the database."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from coordinator.commands import run_once
from coordinator.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings()
    if args.workers > 1:
        uvicorn.run(
            "coordinator.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=False,
        )
        return 0
    from coordinator.app import create_app

    uvicorn.run(
        create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )
    return 0


def _tasks(args: argparse.Namespace) -> int:
    import multiprocessing

    from coordinator.queue import run_rq_worker

    settings = Settings()
    if not settings.redis_url:
        print(
            "flywheel coordinator tasks needs REDIS_URL; without it the API runs tasks in-process.",
            file=sys.stderr,
        )
        return 2
    queues = args.queues or [
        settings.verify_queue,
        settings.validate_queue,
        settings.default_queue,
        settings.train_queue,
    ]
    if args.processes == 1:
        run_rq_worker(settings.redis_url, queues, burst=args.burst)
        return 0
    procs = [
        multiprocessing.Process(target=run_rq_worker, args=(settings.redis_url, queues, args.burst))
        for _ in range(args.processes)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs)


def _migrate(_: argparse.Namespace) -> int:
    from coordinator.db import migrate

    migrate(Settings())
    print("database is at the newest schema")
    return 0


def _create_token(args: argparse.Namespace) -> int:
    from coordinator.workers import service
    from shared.protocol import Scope

    worker, token = run_once(lambda s: service.create(s, args.name, Scope(args.scope)))
    print(json.dumps({"worker_id": str(worker.id), "scope": args.scope, "token": token}))
    return 0


def _json_options(text: str | None) -> dict[str, Any]:
    from coordinator.errors import BadRequest

    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise BadRequest(f"--options is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise BadRequest("--options must be a JSON object")
    return options


def _problems(args: argparse.Namespace) -> int:
    from coordinator.problems import service
    from shared.protocol import ProblemSetCreate

    options = _json_options(args.options)
    if args.source == "dataset":
        options = _dataset_options(args, options)
    if args.source == "code":
        options = _code_options(args, options)
    if args.source == "verifiers":
        options = _environment_options(args, options)
    request = ProblemSetCreate(
        name=args.name,
        source=args.source,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        options=options,
    )

    dataset = args.source == "dataset"
    read = service.dataset_problems(request, Path(args.file)) if dataset else service.read_first(request)

    def work(session: Any) -> Any:
        if args.source in ("jsonl", "code"):
            with Path(args.file).open(encoding="utf-8") as handle:
                return service.to_out(service.create_set(session, request, handle))
        return service.to_out(service.create_set(session, request, read=read))

    print(run_once(work).model_dump_json(indent=2))
    return 0


def _code_options(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """--format (apps, codecontests, mbpp) over --options."""
    if not args.file:
        raise SystemExit("problems code needs --file (a JSONL file of APPS, CodeContests or MBPP rows)")
    return {**options, "format": args.format} if args.format else options


def _environment_options(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """--environment and --env-args over --options."""
    if args.environment:
        options = {**options, "environment": args.environment}
    if args.env_args:
        options = {**options, "args": _json_options(args.env_args)}
    return options


def _dataset_options(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """The flags of a dataset source over its --options (the flags win)."""
    if not args.file:
        raise SystemExit("problems dataset needs --file (a dataset file or save_to_disk folder)")
    columns = dict(options.get("columns") or {})
    for field in ("prompt", "answer", "system", "id", "metadata"):
        column = getattr(args, f"{field}_column")
        if column:
            columns[field] = column
    extra = {"verifier": args.verifier, "format": args.format}
    return {**options, **{k: v for k, v in extra.items() if v}, "columns": columns}


def _campaign(args: argparse.Namespace) -> int:
    from coordinator.campaigns import service
    from coordinator.problems import repository as problems
    from shared.protocol import CampaignCreate, ModelRef, SamplingParams

    def work(session: Any) -> Any:
        problem_set = problems.set_by_name(session, args.problem_set)
        if problem_set is None:
            raise SystemExit(f"no problem set named {args.problem_set!r}")
        sampling = SamplingParams(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens
        )
        request = CampaignCreate(
            name=args.name,
            problem_set_id=problem_set.id,
            model=ModelRef(name=args.model),
            sampling=sampling,
            samples_per_problem=args.samples,
            seed=args.seed,
            worker_dtypes=args.worker_dtypes,
        )
        return service.to_out(session, service.create(session, request))

    print(run_once(work).model_dump_json(indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from coordinator.datasets import service
    from coordinator.db import command_sessions, read_transaction

    where = service.ExportFilter(statuses=tuple(args.status))
    with command_sessions() as sessions:
        with read_transaction(sessions) as session:
            campaign_id = _campaign_id(session, args.campaign)
        rows = service.records(sessions, campaign_id, where)
        out = Path(args.out)
        n = service.write_parquet(rows, out) if args.format == "parquet" else _write_jsonl(rows, out)
    print(f"wrote {n} rows to {args.out}")
    return 0


def _write_jsonl(rows: Any, out: Path) -> int:
    from coordinator.datasets import service

    n = 0
    with out.open("wb") as handle:
        for chunk in service.jsonl_chunks(rows):
            handle.write(chunk)
            n += 1
    return n


def _campaign_id(session: Any, name_or_id: str) -> uuid.UUID:
    from coordinator.campaigns import repository as campaigns

    campaign = campaigns.by_name(session, name_or_id)
    if campaign is None:
        campaign = campaigns.get(session, uuid.UUID(name_or_id))
    if campaign is None:
        raise SystemExit(f"no campaign {name_or_id!r}")
    return campaign.id


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel coordinator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (DATABASE_URL, REDIS_URL from the environment)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=_serve)
    tasks = sub.add_parser("tasks", help="run RQ workers for background tasks (needs REDIS_URL)")
    tasks.add_argument("--queues", nargs="*")
    tasks.add_argument("--processes", type=int, default=1)
    tasks.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    tasks.set_defaults(func=_tasks)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)
    token = sub.add_parser("create-token", help="create an operator, researcher or volunteer token")
    token.add_argument("--name", required=True)
    token.add_argument("--scope", choices=["operator", "researcher", "volunteer"], default="operator")
    token.set_defaults(func=_create_token)
    _problems_parser(sub)
    _campaign_parser(sub)
    from coordinator.pipeline.cli import add_pipeline_commands

    add_pipeline_commands(sub)
    export = sub.add_parser("export", help="write a campaign's traces to JSONL or Parquet")
    export.add_argument("campaign", help="campaign name or id")
    export.add_argument("--format", choices=["jsonl", "parquet"], default="parquet")
    export.add_argument("--out", required=True)
    export.add_argument("--status", nargs="+", default=["accepted"])
    export.set_defaults(func=_export)
    return parser


def _problems_parser(sub: Any) -> None:
    problems = sub.add_parser(
        "problems", help="load a problem set (built-in source, JSONL file or dataset file)"
    )
    sources = ["jsonl", "dataset", "code", "verifiers", "gsm8k", "arithmetic", "reasoning_gym", "humaneval"]
    problems.add_argument("source", choices=sources)
    problems.add_argument("--name", required=True)
    problems.add_argument(
        "--file", help="the JSONL file (jsonl), or a parquet/JSON/JSONL/CSV/Arrow file or save_to_disk folder"
    )
    problems.add_argument("--split", default="test", help="split of a source, or of a DatasetDict folder")
    problems.add_argument("--limit", type=int)
    problems.add_argument("--seed", type=int, default=0)
    problems.add_argument("--options", help="JSON object of source options")
    dataset = problems.add_argument_group("dataset source (docs/problems.md)")
    dataset.add_argument("--verifier", help="math (default), reasoning_gym or code, for every row")
    dataset.add_argument(
        "--format",
        help="dataset: parquet, json, jsonl, csv or arrow (default: the suffix); "
        "code: apps, codecontests or mbpp",
    )
    for field in ("prompt", "answer", "system", "id", "metadata"):
        dataset.add_argument(f"--{field}-column", help=f"the column holding the {field} (default: {field})")
    environment = problems.add_argument_group("verifiers source (docs/problems.md)")
    environment.add_argument(
        "--environment", help="an installed environment's id (as load_environment takes it)"
    )
    environment.add_argument("--env-args", help="JSON object of load_environment's keyword arguments")
    problems.set_defaults(func=_problems)


def _campaign_parser(sub: Any) -> None:
    campaign = sub.add_parser("campaign", help="start a campaign over a problem set")
    campaign.add_argument("--name", required=True)
    campaign.add_argument("--problem-set", required=True)
    campaign.add_argument("--model", required=True)
    campaign.add_argument("--samples", type=int, default=1)
    campaign.add_argument("--temperature", type=float, default=1.0)
    campaign.add_argument("--top-p", type=float, default=1.0)
    campaign.add_argument("--top-k", type=int, default=0)
    campaign.add_argument("--max-tokens", type=int, default=512)
    campaign.add_argument("--seed", type=int, default=0)
    campaign.add_argument(
        "--worker-dtypes",
        nargs="+",
        choices=["float32", "bfloat16", "float16"],
        help="take work computed in these dtypes only (float32: the tight validation tolerance)",
    )
    campaign.set_defaults(func=_campaign)


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from coordinator.errors import FlywheelError

    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except FlywheelError as exc:  # what the command was given is wrong: say so, in one line
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # an argument out of its range
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file named on the command line
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
