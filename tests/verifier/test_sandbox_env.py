"""The sandbox sees the coordinator's own environment: a venv under /tmp, its packages, read-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from verifier import sandbox_env

ROOT = Path(__file__).resolve().parents[2]
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
HANDLER = """
import os
VALUE = {value!r}
def handle(payload):
    try:
        open(__file__, "a").write("x")
        wrote = True
    except OSError:
        wrote = False
    return {{"value": VALUE, "file": __file__, "wrote": wrote}}
"""
SERVE = (
    "import json, sys; sys.path.insert(0, sys.argv[1])\n"
    "from verifier.pool import Service, ServiceSpec\n"
    "service = Service(ServiceSpec('flywheel_env_marker', timeout_s=10.0, memory_mb=512, cpu_s=5.0))\n"
    "print(json.dumps(service.call({}).result)); service.close()\n"
)


def test_a_venv_under_tmp_is_what_the_sandbox_imports_from() -> None:
    """A venv (no system site-packages) whose own site-packages holds a marker package: a scoring
    service started from that venv's interpreter imports it, and cannot write to it."""
    where = Path(tempfile.mkdtemp(prefix="flywheel-venv-", dir="/tmp"))
    try:
        subprocess.run(
            [BASE_PYTHON, "-m", "venv", "--without-pip", str(where / "v")], check=True, timeout=120
        )
        python = where / "v" / "bin" / "python"
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        value = uuid.uuid4().hex
        (Path(site) / "flywheel_env_marker.py").write_text(HANDLER.format(value=value))
        done = subprocess.run(
            [str(python), "-c", SERVE, str(ROOT)],
            capture_output=True,
            text=True,
            timeout=180,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"value": value, "file": str(Path(site) / "flywheel_env_marker.py"), "wrote": False}
    finally:
        shutil.rmtree(where)


def test_too_broad_and_nested_folders_are_not_bound() -> None:
    paths = ["/", "/home", "/tmp", "/tmp/a", "/tmp/a/b", "/usr/lib/python3", "/opt/conda"]
    assert sandbox_env._minimal(paths) == ["/opt/conda", "/tmp/a"]
