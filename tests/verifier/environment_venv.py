"""A venv that holds the tiny `verifiers` environment package of tests/verifier/environments/vf_tiny
(installed from its path: no hub, no index), and a sandbox that runs that venv's interpreter.

The venv sees this interpreter's site-packages (`verifiers` among them) and adds the environment,
so only the sandbox, never the process under test, can import it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from verifier import pool, sandbox

PACKAGE = Path(__file__).resolve().parent / "environments" / "vf_tiny"
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@contextmanager
def environment_python() -> Iterator[Path]:
    """The venv's interpreter, removed on leaving."""
    where = Path(tempfile.mkdtemp(prefix="flywheel-vf-", dir="/tmp"))
    build = where / "build"
    try:
        venv = where / "v"
        command = [BASE_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)]
        subprocess.run(command, check=True, timeout=120)
        python = venv / "bin" / "python"
        shutil.copytree(PACKAGE, build)  # build in a copy: the source tree stays clean
        install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(build)]
        subprocess.run(install, check=True, timeout=300, capture_output=True)
        yield python
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextmanager
def sandbox_python(python: Path) -> Iterator[None]:
    """Sandboxes started inside run `python` (FLYWHEEL_SANDBOX_PYTHON); services started before
    are stopped on entry and on leaving, so none outlives the interpreter it was started with."""
    before = os.environ.get("FLYWHEEL_SANDBOX_PYTHON")
    os.environ["FLYWHEEL_SANDBOX_PYTHON"] = str(python)
    pool.close_all()
    sandbox.layout.cache_clear()
    try:
        yield
    finally:
        pool.close_all()
        if before is None:
            os.environ.pop("FLYWHEEL_SANDBOX_PYTHON", None)
        else:
            os.environ["FLYWHEEL_SANDBOX_PYTHON"] = before
        sandbox.layout.cache_clear()
