"""`flywheel worker run|register`: the volunteer daemon's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from worker.config import ENV_PREFIX, WorkerConfig, load_config
from worker.errors import ConfigError, WorkerError

log = logging.getLogger("flywheel.worker")
EXIT_ERROR = 1
EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", help="coordinator base URL, e.g. https://flywheel.example.org")
    parser.add_argument("--name", help="worker name shown on the leaderboard (default: host name)")
    parser.add_argument("--engine", choices=["transformers", "vllm", "openai"], help="default: transformers")
    parser.add_argument("--model", help="model to serve (default: the bundled flywheel/tiny-arith)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _run_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--token", help="worker token from `flywheel worker register` (or FLYWHEEL_WORKER_TOKEN)")
    add("--device", choices=["cpu", "cuda", "auto"], help="default: auto (cuda when available)")
    add("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default: auto")
    add("--batch-size", type=int, help="jobs generated together (default 8)")
    add("--max-jobs", type=int, help="jobs leased per request (default 16)")
    add("--spool", type=Path, help="directory for unacknowledged results")
    add("--openai-base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    add("--openai-model", help="model name the OpenAI-compatible server serves (default: --model)")
    add("--once", action="store_true", default=None, help="process one lease, then exit")
    add("--exit-when-idle", type=float, metavar="SECONDS", help="exit after this long without jobs")
    add("--progress", choices=["auto", "rich", "plain", "none"], help="default: rich on a terminal")
    add("--poll-interval", dest="poll_interval_s", type=float, metavar="SECONDS", help="idle poll period")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flywheel worker",
        description="Volunteer worker: leases generation jobs, runs them on your GPU/CPU, submits traces.",
        epilog=f"Every option can also be set as an environment variable {ENV_PREFIX}<OPTION>, "
        f"e.g. {ENV_PREFIX}TOKEN, {ENV_PREFIX}BATCH_SIZE. Flags win over the environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,register}")
    run = commands.add_parser("run", help="run the worker daemon")
    _common(run)
    _run_flags(run)
    register = commands.add_parser("register", help="register this worker and print its token")
    _common(register)
    return parser


def configure_logging(level: str, console: Any = None) -> None:
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("flywheel")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: finish cleanly. Second: leave at once (the spool is always consistent)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        log.warning("%s received: abandoning the batch, flushing the spool (again to quit now)",
                    signal.Signals(signum).name)  # fmt: skip
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def run(config: WorkerConfig) -> int:
    from shared.protocol import PROTOCOL_VERSION
    from worker.client import CoordinatorClient
    from worker.engines import load_engine
    from worker.hardware import detect_hardware
    from worker.loop import Worker
    from worker.progress import RichProgress, make_progress
    from worker.spool import Spool

    if config.token is None:
        hint = "get one with `flywheel worker register`"
        raise ConfigError(f"no token: pass --token or set {ENV_PREFIX}TOKEN ({hint})")
    stop = threading.Event()
    install_signal_handlers(stop)
    progress = make_progress(config.progress)
    configure_logging(config.log_level, progress.console if isinstance(progress, RichProgress) else None)
    token = config.token.get_secret_value()
    with CoordinatorClient(
        config.coordinator, token, retry=config.retry, timeout_s=config.request_timeout_s, stop=stop
    ) as client:
        info = client.check_protocol()
        log.info(
            "coordinator %s: server %s, protocol v%d", config.coordinator, info.version, PROTOCOL_VERSION
        )
        spool = Spool(config.spool_dir, lock=True)
        try:
            engine = load_engine(config)
            hardware = detect_hardware(use_torch=engine.info.device.startswith("cuda"))
            worker = Worker(config, client, engine, spool, progress, hardware, stop)
            return worker.run()
        finally:
            spool.close()


def register(config: WorkerConfig) -> int:
    from shared.protocol import EngineInfo, RegisterRequest
    from worker.client import CoordinatorClient
    from worker.hardware import detect_hardware

    configure_logging(config.log_level)
    engine = EngineInfo(name=config.engine)
    request = RegisterRequest(
        name=config.name, engine=engine, hardware=detect_hardware(), models=[config.model]
    )
    timeout = config.request_timeout_s
    with CoordinatorClient(config.coordinator, retry=config.retry, timeout_s=timeout) as client:
        client.check_protocol()
        response = client.register(request)
    # The token alone goes to stdout, so `TOKEN=$(flywheel worker register ...)` works.
    say = f"registered worker {response.worker_id} as {config.name!r} ({response.scope.value}); run it with:"
    print(f"{say}\n  flywheel worker run --coordinator {config.coordinator} --token <token>", file=sys.stderr)
    print(response.token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    command = args.pop("command")
    try:
        config = load_config(args)
        return run(config) if command == "run" else register(config)
    except ConfigError as exc:
        print(f"flywheel worker: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"flywheel worker: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
