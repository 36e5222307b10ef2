"""The sandbox itself: its start-up check, its seccomp filter, and the non-root launch mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from verifier import sandbox, seccomp

ROOT = Path(__file__).resolve().parents[2]


def test_probe_sees_the_sandbox_from_inside() -> None:
    seen = sandbox.probe()
    assert seen["uid"] == sandbox.SANDBOX_UID and seen["interfaces"] == ["lo"]
    assert seen["env"] == ["HOME", "LANG", "PATH", "PWD"]
    # Only the system folders, the sandbox's own, and the top of each environment folder.
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "proc", "dev", "tmp", "flywheel"}
    allowed |= {Path(b).parts[1] for b in sandbox.layout().binds}
    assert set(seen["root"]) <= allowed and "home" not in seen["root"] and "etc" not in seen["root"]


@pytest.mark.parametrize("machine", sorted(seccomp.ABIS))
def test_seccomp_programs_assemble_for_each_abi(machine: str) -> None:
    program = seccomp.build(machine)
    assert len(program) % 8 == 0 and 20 < len(program) // 8 < 256


def test_an_unknown_architecture_has_no_filter() -> None:
    with pytest.raises(KeyError):
        seccomp.build("sparc")


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON), reason="needs root to switch")
def test_the_unprivileged_launch_mode_gives_the_same_sandbox() -> None:
    """A coordinator that does not run as root: bwrap --unshare-all --uid 65534 --cap-drop ALL.

    Run as uid 1000 with the system interpreter (the sandbox module needs only the standard
    library) on a copy of the package that uid can read.
    """
    where = Path(tempfile.mkdtemp(prefix="flywheel-unprivileged-", dir="/tmp"))
    where.chmod(0o755)
    shutil.copytree(ROOT / "verifier", where / "verifier", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from verifier import sandbox\n"
        "assert not sandbox.layout().as_root\n"
        "seen = sandbox.probe()\n"
        "assert seen['uid'] == 65534 and seen['seccomp'] == '2', seen\n"
        "print('ok')\n"
    )
    argv = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", SYSTEM_PYTHON, "-c", script]
    try:
        done = subprocess.run(
            [*argv, str(where)], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
        )
    finally:
        shutil.rmtree(where)
    assert done.stdout.strip() == "ok", done.stderr
