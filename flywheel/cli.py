"""`flywheel <component> ...`: dispatch to the component CLIs without importing them up front.

Each component owns its own argument parsing (`coordinator.cli`, `worker.cli`); this module only
picks one, so `flywheel --help` stays instant and the worker never loads coordinator code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("coordinator.demo", "run a whole campaign locally: coordinator, two workers, tiny model"),
    "coordinator": ("coordinator.cli", "serve the API, run background tasks, manage tokens and data"),
    "worker": ("worker.cli", "run the volunteer worker daemon"),
}


def _usage() -> str:
    lines = ["usage: flywheel <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `flywheel <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        from shared import __version__

        print(f"flywheel {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"flywheel: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(args[1:])


if __name__ == "__main__":
    sys.exit(main())
