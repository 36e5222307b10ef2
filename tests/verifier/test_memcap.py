"""One memory cap per sandbox, for all its processes together (cgroup v2, else the rlimit fallback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verifier import memcap
from verifier.api import verify
from verifier.code import CodeConfig

from .conftest import code_spec, python_answer

TESTS = [{"stdin": "", "stdout": "ok\n"}]
ROOT = Path(__file__).resolve().parents[2]


def forking(children: int, mib: int) -> str:
    """A program whose `children` forked children each hold `mib` MiB at the same time (the parent
    holds none: a child's address space includes what it inherits)."""
    return (
        "import os, time\n"
        "pids = []\n"
        f"for _ in range({children}):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        f"        mine = b'y' * ({mib} << 20)\n"
        "        time.sleep(0.5)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "ok = all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids)\n"
        "print('ok' if ok else 'a child failed')\n"
    )


def host_has_delegated_memory_controller() -> bool:
    """What memcap looks for, read independently: a cgroup2 mount where this process's cgroup
    (or FLYWHEEL_SANDBOX_CGROUP) has memory enabled for its children."""
    configured = os.environ.get("FLYWHEEL_SANDBOX_CGROUP")
    if configured:
        return memcap.mode() == memcap.CGROUP  # a configured parent is validated by creating a child
    mounts = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    unified = [f[4] for f in mounts if f[f.index("-") + 1] == "cgroup2"]
    own = next(
        line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
    )
    if not unified:
        return False
    control = Path(unified[0]) / own.lstrip("/") / "cgroup.subtree_control"
    return control.exists() and "memory" in control.read_text().split() and os.access(control.parent, os.W_OK)


def test_the_mode_matches_what_this_host_offers() -> None:
    expected = memcap.CGROUP if host_has_delegated_memory_controller() else memcap.RLIMIT
    assert memcap.mode() == expected
    assert (memcap.parent() is not None) == (expected == memcap.CGROUP)


def test_the_fallback_fits_the_processes_into_the_cap() -> None:
    limits = {"memory_mb": 512, "nproc": 16}
    assert memcap.rlimit_nproc(limits, 1024, overhead=1) == 3  # the runner and two program processes
    assert memcap.rlimit_nproc(limits, 512, overhead=1) == 2
    assert memcap.rlimit_nproc({"memory_mb": 64, "nproc": 16}, 8192, overhead=1) == 16  # never raised


def test_the_cap_is_configured_and_never_below_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MEMORY_MB", "768")
    assert CodeConfig.parse({"tests": TESTS}).limits()["sandbox_memory_mb"] == 768
    assert CodeConfig.parse({"tests": TESTS, "memory_mb": 2048}).limits()["sandbox_memory_mb"] == 2048
    monkeypatch.delenv("FLYWHEEL_SANDBOX_MEMORY_MB")
    assert CodeConfig.parse({"tests": TESTS}).sandbox_memory_mb == memcap.DEFAULT_TOTAL_MB == 1024


def test_processes_that_together_exceed_the_cap_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four processes of 300 MiB each: every one under the per-process 512 MiB, together over 1 GiB."""
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MEMORY_MB", "1024")
    verdict = verify(code_spec(TESTS), python_answer(forking(children=4, mib=300)))
    assert not verdict.passed
    if memcap.mode() == memcap.CGROUP:
        # The kernel killed one of them for the sandbox's cap.
        assert verdict.details["failures"] == {"memory": 1}
        assert "memory limit: 1024 MiB" in verdict.reason
    else:
        # Only two program processes of 512 MiB fit in 1 GiB: the second fork is refused (EAGAIN)
        # and the program fails by itself.
        assert verdict.details["failures"] == {"runtime_error": 1}


def test_a_program_within_the_cap_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MEMORY_MB", "1024")
    verdict = verify(code_spec(TESTS), python_answer(forking(children=1, mib=300)))
    assert verdict.passed, verdict


def test_one_process_may_still_use_its_own_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MEMORY_MB", "1024")
    verdict = verify(code_spec(TESTS), python_answer("block = b'x' * (400 << 20)\nprint('ok')"))
    assert verdict.passed, verdict


COUNT_FORKS = (
    "import os, time\n"
    "made = 0\n"
    "try:\n"
    "    while made < 20:\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(2)\n"
    "            os._exit(0)\n"
    "        made += 1\n"
    "except OSError:\n"
    "    pass\n"
    "print(made)\n"
)
COUNT_SCRIPT = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from verifier import sandbox\n"
    "limits = {'cpu_s': 2, 'wall_s': 5, 'memory_mb': 256, 'nproc': 16, 'sandbox_memory_mb': 1024}\n"
    "job = {'mode': 'tests', 'style': 'stdio', 'source': sys.argv[2], 'limits': limits}\n"
    "job['tests'] = [{'stdin': ''}]\n"
    "frames, err = sandbox.run_once(job, 30)\n"
    "print(next(f['stdout'] for f in frames if f.get('i') == 0).strip())\n"
)


@pytest.mark.skipif(
    memcap.mode() != memcap.RLIMIT, reason="the process count is lowered only in the fallback"
)
@pytest.mark.parametrize("unprivileged", [False, True])
def test_the_fallback_counts_the_sandboxes_own_processes(unprivileged: bool, tmp_path: Path) -> None:
    """1 GiB over 256 MiB per process: four program processes, so three forks, as root (the runner
    counts) and as another user (bwrap's init counts too)."""
    if unprivileged and (os.geteuid() != 0 or not os.path.exists("/usr/bin/python3")):
        pytest.skip("needs root to switch to uid 1000 and the system interpreter")
    where = tmp_path / "copy"
    shutil.copytree(ROOT / "verifier", where / "verifier", ignore=shutil.ignore_patterns("__pycache__"))
    for path in (tmp_path, where, *where.rglob("*")):
        path.chmod(0o755)
    switch = ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "/usr/bin/python3"]
    argv = [*(switch if unprivileged else [sys.executable]), "-c", COUNT_SCRIPT, str(where), COUNT_FORKS]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "3"
