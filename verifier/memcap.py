"""One memory cap for a sandbox as a whole: a cgroup v2 memory controller where the host lets us,
else per-process address-space limits with the process count reduced to fit the cap.

- "cgroup": a delegated, writable cgroup v2 directory with `memory` enabled for its children
  (FLYWHEEL_SANDBOX_CGROUP names it; by default this process's own cgroup, which qualifies only
  where `memory` is already in its cgroup.subtree_control). Each sandbox gets a child cgroup with
  memory.max = the cap and memory.swap.max = 0; bwrap is moved into it before it starts anything,
  so every process of the sandbox is charged to it. The runner reads the cgroup's memory.events
  (bound read-only into the sandbox) to tell which test was OOM-killed. The cgroup is killed and
  removed when the sandbox ends.
- "rlimit" (the fallback): RLIMIT_AS per process as before, and RLIMIT_NPROC lowered so that the
  program's processes times the per-process limit stay within the cap.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CGROUP = "cgroup"
RLIMIT = "rlimit"
DEFAULT_TOTAL_MB = 1024
EVENTS_IN_SANDBOX = "/flywheel/memory.events"
REMOVE_WAIT_S = 5.0


def default_total_mb() -> int:
    """The cap for one code sandbox, all its processes together (FLYWHEEL_SANDBOX_MEMORY_MB)."""
    return max(64, int(os.environ.get("FLYWHEEL_SANDBOX_MEMORY_MB", DEFAULT_TOTAL_MB)))


def mode() -> str:
    """ "cgroup" or "rlimit": how this process caps a sandbox's memory as a whole."""
    return CGROUP if parent() is not None else RLIMIT


@functools.cache
def parent() -> Path | None:
    """The cgroup v2 directory under which sandboxes get their cgroups, or None (logged once)."""
    configured = os.environ.get("FLYWHEEL_SANDBOX_CGROUP")
    candidate = Path(configured) if configured else _own_cgroup()
    problem = "no cgroup v2 hierarchy" if candidate is None else _unusable(candidate, bool(configured))
    if problem is None:
        log.info("sandbox memory cap: cgroup v2 memory controller under %s", candidate)
        return candidate
    log.info("sandbox memory cap: per-process RLIMIT_AS with a reduced process count (%s)", problem)
    return None


def _own_cgroup() -> Path | None:
    mount = _cgroup2_mount()
    with open("/proc/self/cgroup") as handle:
        path = next((line[3:].strip() for line in handle if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    return Path(mount) / path.lstrip("/")


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def _unusable(directory: Path, configured: bool) -> str | None:
    """Why `directory` cannot hold sandbox cgroups, or None. Only a configured directory gets
    `+memory` written to its subtree_control: elsewhere that would change the host's cgroups."""
    try:
        if "memory" not in _read(directory / "cgroup.controllers").split():
            return f"{directory}: no memory controller in cgroup.controllers"
        if "memory" not in _read(directory / "cgroup.subtree_control").split():
            if not configured:
                return f"{directory}: memory is not in cgroup.subtree_control"
            (directory / "cgroup.subtree_control").write_text("+memory")
        probe = Cgroup.create(directory, 64 << 20)
        probe.remove()
    except OSError as exc:
        return f"{directory}: {exc}"
    return None


def _read(path: Path) -> str:
    return path.read_text().strip()


@dataclass
class Cgroup:
    """One sandbox's cgroup."""

    path: Path

    @classmethod
    def create(cls, under: Path, limit_bytes: int) -> Cgroup:
        path = under / f"flywheel-sandbox-{uuid.uuid4().hex}"
        path.mkdir()
        group = cls(path)
        try:
            (path / "memory.max").write_text(str(limit_bytes))
            if (path / "memory.swap.max").exists():  # absent where swap is not accounted
                (path / "memory.swap.max").write_text("0")
        except OSError:
            group.remove()
            raise
        return group

    @property
    def procs(self) -> str:
        return str(self.path / "cgroup.procs")

    @property
    def events(self) -> str:
        return str(self.path / "memory.events")

    def enter_argv(self) -> list[str]:
        """A prefix that moves the process into this cgroup, then execs the rest of the command
        line (so bwrap and everything it starts are charged here from their first page)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs]

    def oom_kills(self) -> int:
        return oom_kills(self.events)

    def remove(self) -> None:
        """Kill whatever is left in it, wait until it is empty, remove it."""
        with contextlib.suppress(OSError):
            (self.path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + REMOVE_WAIT_S
        while time.monotonic() < deadline:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)  # its last processes are still exiting
        log.warning("could not remove sandbox cgroup %s", self.path)


def oom_kills(events_path: str) -> int:
    """The oom_kill count in a memory.events file."""
    with open(events_path) as handle:
        for line in handle:
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    return 0


def rlimit_nproc(limits: Mapping[str, Any], total_mb: int, overhead: int) -> int:
    """The fallback's process limit: the program's processes times its per-process address space
    stay within `total_mb`. `overhead`: the sandbox's own processes counted under the same uid."""
    per_process = int(limits.get("memory_mb", 512))
    nproc = int(limits.get("nproc", 16))
    return max(overhead + 1, min(nproc, overhead + total_mb // max(1, per_process)))
