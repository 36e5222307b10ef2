"""Files in the worker's state directory that outlive one daemon run or one command.

- `state.json`: the volunteer's controls that must survive restarts: paused or not, and the jobs
  done today (the per-day cap counts from it). Both the daemon and `flywheel worker pause|resume`
  rewrite it, each under an exclusive lock on `state.lock`, atomically (temporary file + rename).
- `daemon.json`: a snapshot the running daemon rewrites every second (its pid, what it is doing,
  its counters) for `flywheel worker status`. Nothing reads it back into the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

STATE_FILE = "state.json"
STATUS_FILE = "daemon.json"
LOCK_FILE = "state.lock"


class VolunteerState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    paused: bool = False
    day: str = ""  # local date that jobs_today counts
    jobs_today: int = 0

    def jobs_on(self, today: date) -> int:
        return self.jobs_today if self.day == today.isoformat() else 0


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


class StateStore:
    """`state.json` with read-modify-write under a lock shared by the daemon and the CLI."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def read(self) -> VolunteerState:
        try:
            return VolunteerState.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return VolunteerState()
        except (OSError, ValidationError):
            # A damaged file must not keep the worker from starting; the defaults are safe ones.
            return VolunteerState()

    def mtime_ns(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return 0

    @contextlib.contextmanager
    def update(self) -> Iterator[VolunteerState]:
        """Yield the current state for changing in place; written back when the block ends."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self.read()
            yield state
            write_atomic(self.path, state.model_dump_json().encode(), durable=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / LOCK_FILE, "ab") as handle:
            try:
                import fcntl
            except ImportError:  # not POSIX: writes are still atomic, only not serialised
                yield
                return
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_status(directory: Path, snapshot: dict[str, Any]) -> None:
    write_atomic(Path(directory) / STATUS_FILE, json.dumps(snapshot, default=str).encode())


def read_status(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(directory) / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear_status(directory: Path) -> None:
    (Path(directory) / STATUS_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True
