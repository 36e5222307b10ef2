"""`flywheel worker run|register|pause|resume|status`: the volunteer daemon's command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from worker.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    WorkerConfig,
    control_state_dir,
    default_config_file,
    load_config,
)
from worker.errors import AuthError, ConfigError, EngineError, PolicyError, RejectedError, WorkerError

log = logging.getLogger("flywheel.worker")
EXIT_ERROR = 1
EXIT_USAGE = 2
STALE_S = 10.0  # a daemon.json older than this belongs to a daemon that is gone
TEAM_RULE = "a team name is 1-48 characters, no control characters, no leading or trailing space"


def _batch_size(value: str) -> int | str:
    return value if value == "auto" else int(value)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help=f"TOML config file (default {default_config_file()} if present)"
    )
    parser.add_argument("--coordinator", help="coordinator base URL, e.g. https://flywheel.example.org")
    parser.add_argument("--name", help="worker name shown on the leaderboard (default: host name)")
    parser.add_argument("--engine", choices=["transformers", "vllm", "openai"], help="default: transformers")
    parser.add_argument(
        "--model",
        help="model to serve (default: one the coordinator has jobs for that fits this machine, "
        "switching when its jobs run out; see docs/worker.md)",
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _run_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--token",
        help="worker token from `flywheel worker register` (or FLYWHEEL_WORKER_TOKEN); without one,"
        " the token a first start stored in the state dir, else a new registration",
    )
    add("--device", choices=["cpu", "cuda", "auto"], help="default: auto (cuda when available)")
    add("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default: auto")
    add("--gpus", help="GPU indices to use, e.g. 0 or 0,1 (default: all visible)")
    add(
        "--gpu-memory-fraction", type=float, metavar="F", help="cap on this worker's share of GPU memory, 0-1"
    )
    add(
        "--batch-size",
        type=_batch_size,
        help="jobs generated together, or auto: from free GPU memory (default)",
    )
    add("--max-leases", type=int, help="most leases held at once (default: two batches)")
    add("--max-jobs", type=int, help="most jobs per lease request (default: --max-leases)")
    add(
        "--schedule",
        help='allowed hours, local time, e.g. "22:00-07:00" or "mon-fri 18:00-08:00, sat-sun 00:00-24:00"',
    )
    add("--max-jobs-per-day", type=int, metavar="N", help="stop leasing after N jobs a day (local days)")
    add("--spool", type=Path, help="directory for unacknowledged results (default: <state dir>/spool)")
    add("--state-dir", type=Path, help="directory for state, status and spool (default: per --name)")
    add(
        "--serve-policies",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run GRPO rollouts: download RL policy versions built on --model (default: off)",
    )
    add("--policy-cache", type=Path, help="directory for downloaded weights (default: <state dir>/policies)")
    add("--openai-base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    add("--openai-model", help="model name the OpenAI-compatible server serves (default: --model)")
    add("--once", action="store_true", default=None, help="process one lease, then exit")
    add("--exit-when-idle", type=float, metavar="SECONDS", help="exit after this long without jobs")
    add("--progress", choices=["auto", "rich", "plain", "none"], help="default: rich on a terminal")
    add("--poll-interval", dest="poll_interval_s", type=float, metavar="SECONDS", help="idle poll period")


def _control_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the config file the daemon runs with")
    parser.add_argument("--name", help="the daemon's --name (default: host name)")
    parser.add_argument("--state-dir", type=Path, help="the daemon's --state-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flywheel worker",
        description="Volunteer worker: leases generation jobs, runs them on your GPU/CPU, submits traces.",
        epilog=f"Every run option can also be set as an environment variable {ENV_PREFIX}<OPTION> "
        f"(e.g. {ENV_PREFIX}TOKEN, {ENV_PREFIX}BATCH_SIZE) or in the TOML file named by --config or "
        f"{CONFIG_ENV}. Flags win over the environment, which wins over the file.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{run,register,pause,resume,status}"
    )
    run = commands.add_parser("run", help="run the worker daemon")
    _common(run)
    _run_flags(run)
    register = commands.add_parser("register", help="register this worker and print its token")
    _common(register)
    register.add_argument(
        "--invite-code", help="invite code from the coordinator's operator (coordinators in invite mode)"
    )
    register.add_argument("--team", help="team to join on the leaderboard (created if no team has the name)")
    for name, text in (
        ("pause", "pause the running daemon (it gives its leases back; survives restarts)"),
        ("resume", "resume a paused daemon"),
        ("status", "show what the daemon is doing"),
    ):
        sub = commands.add_parser(name, help=text)
        _control_flags(sub)
        if name == "status":
            sub.add_argument("--json", action="store_true", help="print the raw status as JSON")
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


def install_signal_handlers(stop: threading.Event, controls: Any) -> None:
    """SIGINT/SIGTERM: finish cleanly (a second one: leave at once; the spool is always
    consistent). SIGUSR1: pause. SIGUSR2: resume."""

    def handle_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        log.warning("%s received: abandoning the batch, giving leases back, flushing the spool "
                    "(again to quit now)", signal.Signals(signum).name)  # fmt: skip
        stop.set()

    signal.signal(signal.SIGINT, handle_stop)
    signal.signal(signal.SIGTERM, handle_stop)
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda signum, frame: controls.request_pause(True))
        signal.signal(signal.SIGUSR2, lambda signum, frame: controls.request_pause(False))


def run(config: WorkerConfig) -> int:
    from worker.client import CoordinatorClient
    from worker.controls import Controls
    from worker.progress import RichProgress, make_progress
    from worker.spool import Spool
    from worker.state import StateStore

    config = _with_token(config)
    stop = threading.Event()
    controls = Controls(StateStore(config.state_path), config.parsed_schedule, config.max_jobs_per_day)
    install_signal_handlers(stop, controls)
    progress = make_progress(config.progress)
    configure_logging(config.log_level, progress.console if isinstance(progress, RichProgress) else None)
    token = config.token.get_secret_value() if config.token is not None else ""
    with CoordinatorClient(
        config.coordinator, token, retry=config.retry, timeout_s=config.request_timeout_s, stop=stop
    ) as client:
        _check_coordinator(config, client)
        spool = Spool(config.spool_dir, lock=True)
        try:
            return _serve(config, client, spool, progress, controls, stop)
        finally:
            spool.close()


TOKEN_FILE = "token"  # in the state dir, mode 0600: the token a first start registered


def _with_token(config: WorkerConfig) -> WorkerConfig:
    """The configuration with a token: the one given, else the one a first start stored in the
    state dir, else a new registration (where the coordinator lets anyone register), stored there."""
    from pydantic import SecretStr

    if config.token is not None:
        return config
    path = config.state_path / TOKEN_FILE
    if path.is_file():
        return config.model_copy(update={"token": SecretStr(path.read_text(encoding="utf-8").strip())})
    try:
        response = _register(config, None, None)
    except (AuthError, RejectedError) as exc:
        hint = "get one with `flywheel worker register --invite-code CODE`, or from the operator"
        refused = f"no token, and the coordinator refused to register one ({exc.message})"
        raise ConfigError(f"{refused}: pass --token or set {ENV_PREFIX}TOKEN; {hint}") from exc
    _store_token(path, response.token)
    print(_first_contact(config, response.worker_id, path), file=sys.stderr, flush=True)
    return config.model_copy(update={"token": SecretStr(response.token)})


def _store_token(path: Path, token: str) -> None:
    """Written owner-only from the start (never world-readable for an instant), then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    os.replace(partial, path)


def _first_contact(config: WorkerConfig, worker_id: Any, path: Path) -> str:
    """What a volunteer is told the first time: who it is, what it will run where, how to stop it."""
    if config.device == "cpu":
        where = "the CPU"
    else:
        gpus = f"GPUs {config.gpus}" if config.gpus else "every GPU it sees"
        share = (
            f"{config.gpu_memory_fraction:.0%} of their memory"
            if config.gpu_memory_fraction
            else "their memory"
        )
        where = f"{gpus}, up to {share}"
    work = config.model or "the models the coordinator has jobs for that fit this machine"
    when = f" on the schedule {config.schedule!r}" if config.schedule else " whenever it runs"
    state = f"--state-dir {config.state_path}"
    return "\n".join([
        f"registered with {config.coordinator} as {config.name!r} (worker {worker_id})",
        f"its token is stored in {path} (readable by you alone); later starts use it",
        f"it will generate with {work} on {where}{when}",
        f"pause at once: `flywheel worker pause {state}` (or kill -USR1 {os.getpid()}); "
        f"resume: `flywheel worker resume {state}`; stop: Ctrl-C",
    ])  # fmt: skip


def _check_coordinator(config: WorkerConfig, client: Any) -> None:
    """Protocol version, then the token: both before the (slow) model load."""
    from shared.protocol import PROTOCOL_VERSION

    info = client.check_protocol()
    try:
        client.check_token()
    except AuthError as exc:
        raise AuthError(
            f"the coordinator at {config.coordinator} refused the token ({exc.message}); "
            f"check --token / {ENV_PREFIX}TOKEN, or get a new one with `flywheel worker register`",
            status_code=exc.status_code,
        ) from exc
    log.info("coordinator %s: server %s, protocol v%d", config.coordinator, info.version, PROTOCOL_VERSION)


def _serve(config: WorkerConfig, client: Any, spool: Any, progress: Any, controls: Any, stop: Any) -> int:
    """Serve --model; without one, the models the coordinator has jobs for, one after another."""
    from worker.hardware import detect_hardware
    from worker.picker import Chooser, ModelPicker, serve_chosen, serves_chosen
    from worker.progress import KeptOpen

    if not serves_chosen(config):
        return _serve_model(config, client, spool, progress, controls, stop, None)
    picker = ModelPicker(client, config, detect_hardware(use_torch=config.device != "cpu"))
    chooser = Chooser(picker, config.poll_interval_s)
    kept = KeptOpen(progress)  # one display across the models served
    try:
        serve = lambda chosen: _serve_model(chosen, client, spool, kept, controls, stop, chooser)  # noqa: E731
        return serve_chosen(chooser, config, stop, serve)
    finally:
        kept.finish()


def _serve_model(
    config: WorkerConfig, client: Any, spool: Any, progress: Any, controls: Any, stop: Any, chooser: Any
) -> int:
    """One daemon run on `config.model`: load the engine, work, give the engine back."""
    from worker.hardware import detect_hardware
    from worker.loop import Worker
    from worker.rollouts import start_serving

    try:
        engine, policies = start_serving(config, client, stop)
    except (EngineError, PolicyError) as exc:
        raise EngineError(f"cannot start: {exc.message}") from exc
    try:
        hardware = detect_hardware(use_torch=engine.info.device.startswith("cuda"))
        worker = Worker(config, client, engine, spool, progress, hardware, stop, controls, policies, chooser)
        return worker.run()
    finally:
        engine.close()


def register(config: WorkerConfig, invite_code: str | None = None, team: str | None = None) -> int:
    configure_logging(config.log_level)
    response = _register(config, invite_code, team)
    # The token alone goes to stdout, so `TOKEN=$(flywheel worker register ...)` works.
    say = f"registered worker {response.worker_id} as {config.name!r} ({response.scope.value}); run it with:"
    print(f"{say}\n  flywheel worker run --coordinator {config.coordinator} --token <token>", file=sys.stderr)
    print(response.token)
    return 0


def _register(config: WorkerConfig, invite_code: str | None, team: str | None) -> Any:
    from pydantic import ValidationError

    from shared.protocol import EngineInfo, RegisterRequest
    from worker.client import CoordinatorClient
    from worker.hardware import detect_hardware

    engine = EngineInfo(name=config.engine)
    try:
        request = RegisterRequest(
            name=config.name,
            engine=engine,
            hardware=detect_hardware(),
            models=[config.model] if config.model else [],
            invite_code=invite_code,
            team=team,
        )
    except ValidationError as exc:
        if not any(e["loc"][:1] == ("team",) for e in exc.errors()):
            raise
        raise ConfigError(f"cannot register: --team {team!r}: {TEAM_RULE}") from exc
    timeout = config.request_timeout_s
    with CoordinatorClient(config.coordinator, retry=config.retry, timeout_s=timeout) as client:
        client.check_protocol()
        return client.register(request)


# ---------------------------------------------------------------------- pause / resume / status


def running_daemon(state_dir: Path) -> dict[str, Any] | None:
    """The status of the daemon using `state_dir`, if one is running now."""
    from worker.state import pid_alive, read_status

    status = read_status(state_dir)
    if status is None or status.get("status") == "stopped":
        return None
    fresh = time.time() - float(status.get("updated", 0)) < STALE_S
    return status if fresh and pid_alive(int(status.get("pid", 0))) else None


def set_paused(state_dir: Path, paused: bool) -> int:
    from worker.state import StateStore

    with StateStore(state_dir).update() as state:
        state.paused = paused
    daemon = running_daemon(state_dir)
    word = "paused" if paused else "resumed"
    if daemon is None:
        print(f"{word}; no worker is running with {state_dir}: it will start {word}")
        return 0
    # The state file alone would be noticed within a second; the signal makes it immediate.
    os.kill(int(daemon["pid"]), signal.SIGUSR1 if paused else signal.SIGUSR2)
    print(f"{word} worker {daemon.get('name')!r} (pid {daemon['pid']})")
    return 0


def show_status(state_dir: Path, as_json: bool, flags: Mapping[str, Any] | None = None) -> int:
    """The daemon's last status, and (where its configuration names a token) its credit as the
    coordinator counts it."""
    from worker.credit import fetch_credit, render_credit
    from worker.progress import render_status
    from worker.state import StateStore, read_status

    status = read_status(state_dir)
    daemon = running_daemon(state_dir)
    paused = StateStore(state_dir).read().paused
    credit = fetch_credit(flags or {"state_dir": state_dir})
    if as_json:
        credit_json = credit if isinstance(credit, str) else credit.model_dump(mode="json")
        body = {"running": daemon is not None, "paused": paused, "status": status, "credit": credit_json}
        print(json.dumps(body, indent=2))
        return 0 if daemon is not None else 3
    if status is None:
        print(f"no worker has run with state directory {state_dir}")
        return 3
    from rich.console import Console

    title = f"flywheel worker {status.get('name', '')!r}"
    title += f" (pid {status['pid']})" if daemon is not None else " - not running; last known state"
    if paused:
        title += " - PAUSED"
    console = Console()
    console.print(render_status(status, title=title))
    console.print(render_credit(credit))
    return 0 if daemon is not None else 3


def control(command: str, args: Mapping[str, Any]) -> int:
    state_dir = control_state_dir(args)
    if command == "status":
        return show_status(state_dir, bool(args.get("json")), args)
    return set_paused(state_dir, paused=command == "pause")


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    command = args.pop("command")
    try:
        if command in {"pause", "resume", "status"}:
            return control(command, args)
        invite_code, team = args.pop("invite_code", None), args.pop("team", None)
        config = load_config(args)
        return run(config) if command == "run" else register(config, invite_code, team)
    except ConfigError as exc:
        print(f"flywheel worker: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"flywheel worker: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
