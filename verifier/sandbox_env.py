"""Which host paths the sandbox must see, read-only, to run the coordinator's own Python.

The sandbox runs the interpreter the coordinator runs, by the same path (a virtualenv's
`bin/python`, not the base binary it links to: Python finds `pyvenv.cfg`, and so the venv's
site-packages, from that path). What that interpreter imports is asked of it once, on the host,
in the mode the sandbox starts it in (`-I`): its prefixes, its `sys.path` after site processing
(.pth files included) and the source folders of editable installs (setuptools' finder modules,
whose MAPPING names each package's folder). Exactly those folders are bound read-only, at their
real paths, wherever they live: under /tmp too, on top of the sandbox's private /tmp. Nothing
else of the host is added; a folder too broad to bind (/, /home, /tmp itself...) is refused.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath

from verifier.errors import SandboxUnavailableError

log = logging.getLogger(__name__)

# Bound by the sandbox itself (read-only); nothing under them needs a bind of its own.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Binding one of these would show the sandbox far more than an environment.
TOO_BROAD = frozenset(
    {"/", "/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/home", "/root", "/var", "/boot", "/mnt", "/opt"}
    | {"/media", "/srv"}
)

# Run by the interpreter itself, with the sandbox's flags: what it will import from.
_ASK = """
import json, sys
roots = []
for finder in sys.meta_path:
    module = sys.modules.get(getattr(finder, "__module__", "") or "")
    if module is not None and module.__name__.startswith("__editable__"):
        roots += list(getattr(module, "MAPPING", {}).values())
        roots += [p for paths in getattr(module, "NAMESPACES", {}).values() for p in paths]
print(json.dumps({"prefixes": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix],
                  "path": sys.path, "editable": roots}))
"""


@dataclass(frozen=True)
class Environment:
    """The interpreter's path and what the sandbox needs to run it."""

    python: str
    binds: tuple[str, ...]  # host folders (real paths), bound read-only at the same path
    links: tuple[tuple[str, str], ...]  # (target, link): the interpreter's symlinks outside the binds


def discover(python: str) -> Environment:
    """Ask `python` (run as the sandbox runs it) what it imports from (nothing, if it cannot run)."""
    python = _resolved_dir(python)
    try:
        seen = _ask(python)
    except SandboxUnavailableError as exc:
        # Nothing to bind but the binary: the sandbox's own start then fails and says so.
        log.warning("%s", exc)
        seen = {"prefixes": [], "path": [], "editable": []}
    wanted = [*seen["prefixes"], *seen["path"], *seen["editable"]]
    binds = _minimal([os.path.realpath(p) for p in wanted if os.path.exists(p)])
    links, real = _symlink_chain(python, binds)
    if not _covered(real, binds):
        binds = _minimal([*binds, real])
    return Environment(python=python, binds=tuple(binds), links=tuple(links))


def _ask(python: str) -> dict[str, list[str]]:
    try:
        done = subprocess.run(
            [python, "-I", "-c", _ASK],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailableError(f"cannot run the sandbox interpreter {python}: {exc}") from exc
    if done.returncode != 0:
        raise SandboxUnavailableError(f"the sandbox interpreter {python} failed: {done.stderr[-400:]}")
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _minimal(paths: list[str]) -> list[str]:
    """The paths to bind: no system folder, nothing too broad, nothing inside another one."""
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: (len(PurePosixPath(p).parts), p)):
        if path in TOO_BROAD:
            log.warning("not showing %s to the sandbox: too broad a folder to bind", path)
        elif not _covered(path, [*SYSTEM_DIRS, *kept]):
            kept.append(path)
    return sorted(kept)


def _covered(path: str, roots: list[str] | tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _symlink_chain(python: str, binds: list[str]) -> tuple[list[tuple[str, str]], str]:
    """Symlinks from `python` to the real binary that no bind brings along, and that binary.

    A venv's `bin/python` links to the base interpreter: inside a bound venv the link comes with
    it; a link elsewhere (say /usr/local/bin/python3 -> /opt/py/bin/python3.11) is recreated.
    """
    links: list[tuple[str, str]] = []
    path = python
    for _ in range(40):  # the kernel's own limit on symlink hops
        if not os.path.islink(path):
            break
        target = os.readlink(path)
        if not _covered(path, [*SYSTEM_DIRS, *binds]):
            links.append((target, path))
        path = _resolved_dir(os.path.join(os.path.dirname(path), target))
    return links, os.path.realpath(path)


def _resolved_dir(path: str) -> str:
    """`path` with its folders resolved but its last part kept (it may be a link to follow)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
