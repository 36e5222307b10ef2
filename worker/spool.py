"""The spool: finished results on disk until the coordinator acknowledges them.

One JSON file per `TraceSubmission`, named by its attempt id, written atomically (temporary file,
fsync, rename, fsync of the directory), so a crash at any moment leaves either the whole result or
nothing. A result leaves the spool only after an `accepted`/`duplicate`/`rejected` ack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from shared.protocol import TraceSubmission
from worker.errors import SpoolError

log = logging.getLogger("flywheel.worker.spool")
SUFFIX = ".json"
TMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
BAD_DIR = "unreadable"


def fsync_dir(directory: Path) -> None:
    # Without it the rename itself may not survive a power cut.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A directory of pending results; `lock=True` keeps a second daemon off the same directory."""

    def __init__(self, directory: Path, *, lock: bool = False) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.directory}: {exc}") from exc
        self._lock_file: IO[bytes] | None = self._acquire_lock() if lock else None
        self._drop_partial_writes()

    def _acquire_lock(self) -> IO[bytes] | None:
        try:
            import fcntl
        except ImportError:  # not on POSIX: no advisory locks, the daemon runs without one
            return None
        handle = open(self.directory / LOCK_NAME, "ab")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise SpoolError(
                f"spool {self.directory} is in use by another worker; give each worker its own --spool"
            ) from exc
        return handle

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _drop_partial_writes(self) -> None:
        # A temporary file is a write that never reached its rename: the result was never spooled.
        for tmp in self.directory.glob(f".*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def path(self, attempt_id: uuid.UUID) -> Path:
        return self.directory / f"{attempt_id}{SUFFIX}"

    def put(self, submission: TraceSubmission) -> Path:
        """Write one result durably; returns its path."""
        return self.put_many([submission])[0]

    def put_many(self, submissions: list[TraceSubmission]) -> list[Path]:
        """Write results durably: each file synced, then all renamed, then one directory sync
        (one directory sync per batch instead of per result)."""
        staged = []
        try:
            for submission in submissions:
                final = self.path(submission.attempt_id)
                tmp = self.directory / f".{final.name}.{os.getpid()}{TMP_SUFFIX}"
                staged.append((tmp, final))
                with open(tmp, "wb") as handle:
                    handle.write(submission.model_dump_json().encode())
                    handle.flush()
                    os.fsync(handle.fileno())
            for tmp, final in staged:
                os.replace(tmp, final)
            fsync_dir(self.directory)
        except OSError as exc:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write to the spool {self.directory}: {exc}") from exc
        return [final for _, final in staged]

    def remove(self, attempt_id: uuid.UUID) -> None:
        self.path(attempt_id).unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob(f"*{SUFFIX}"))

    def _files(self) -> Iterator[Path]:
        # Oldest first, so a backlog drains in the order it was produced.
        files = [(p.stat().st_mtime_ns, p.name, p) for p in self.directory.glob(f"*{SUFFIX}")]
        for _, _, path in sorted(files):
            yield path

    def pending(self) -> list[TraceSubmission]:
        """Every spooled result; an unreadable file is moved aside (never silently deleted)."""
        results = []
        for path in self._files():
            try:
                results.append(TraceSubmission.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:
                self._move_aside(path, exc)
        return results

    def _move_aside(self, path: Path, exc: Exception) -> None:
        log.warning("spool file %s is unreadable (%s); moved to %s/", path.name, exc, BAD_DIR)
        bad = self.directory / BAD_DIR
        bad.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            os.replace(path, bad / path.name)
