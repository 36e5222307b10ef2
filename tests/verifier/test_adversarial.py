"""Hostile programs: every case must score 0 and leave the host as it was.

Where it can, each attack prints the right answer only if the attack *worked* (the file was
read, the fork limit was not there, the allocation succeeded), so a weaker sandbox turns the
score to 1 and the test fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import termios
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.results.tasks import STALL_ATTEMPTS
from shared.protocol import Verdict, VerifierSpec
from verifier.api import verify
from verifier.code import MAX_SOURCE_CHARS
from verifier.errors import HostStalledError

from .conftest import code_spec, descendants, python_answer, wait_for_no_new_processes, zero

SUM_TESTS = [{"stdin": "2 3\n", "stdout": "5\n"}, {"stdin": "10 20\n", "stdout": "30\n"}]
PRINT_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
FAST = {"time_limit_s": 0.5}


def attack(source: str, tests: list[dict[str, Any]] | None = None, **config: Any) -> Verdict:
    """Verify a hostile program and check that nothing it started outlives the verification."""
    before = descendants()
    spec = code_spec(tests or SUM_TESTS, **{**FAST, **config})
    for _ in range(STALL_ATTEMPTS):
        try:
            verdict = verify(spec, python_answer(source))
            break
        except HostStalledError as stalled:
            # A host too busy to give the sandbox a CPU: retried, then the measured verdict is
            # kept, as the verification task does (coordinator/results/tasks.py).
            verdict = stalled.verdict
    assert wait_for_no_new_processes(before) == set()
    return verdict


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory any uid on the host could read and write: only the sandbox keeps it out."""
    path = Path("/tmp") / f"flywheel-adversarial-{uuid.uuid4().hex}"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path)


# ---------------------------------------------------------------------------- resources


def test_fork_bomb() -> None:
    source = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert zero(attack(source))


def test_process_limit_holds() -> None:
    source = (
        "import os, time\n"
        "made = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        made += 1\n"
        "    except OSError:\n"
        "        break\n"
        "if made >= 100:\n" + "    " + PRINT_SUM.replace("\n", "\n    ")
    )
    assert zero(attack(source))


def test_memory_bomb() -> None:
    # An untouched mapping costs no time or RAM: only the address-space limit refuses it.
    source = "import mmap\nblock = mmap.mmap(-1, 4 << 30)\n" + PRINT_SUM
    assert zero(attack(source))


def test_infinite_loop() -> None:
    assert zero(attack("while True:\n    pass\n"))


def test_cpu_time_limit() -> None:
    source = "import time\nwhile time.process_time() < 3:\n    pass\n" + PRINT_SUM
    verdict = attack(source)
    assert zero(verdict)


def test_sleeping_past_the_deadline() -> None:
    verdict = attack("import time\ntime.sleep(4)\n" + PRINT_SUM)
    assert zero(verdict) and verdict.details["failures"] == {"timeout": 2}


def test_many_sleeping_tests_are_cut_off_by_the_submission_budget() -> None:
    tests = [{"stdin": "", "stdout": "1\n"}] * 5
    verdict = attack("import time\ntime.sleep(3)\nprint(1)\n", tests, budget_s=1)
    assert zero(verdict) and verdict.details["failures"] == {"not_run": 4, "timeout": 1}


def test_infinite_output() -> None:
    assert zero(attack("while True:\n    print('x' * 4096)\n"))


def test_output_cap() -> None:
    # Trailing blank lines are ignored by the line comparison, so only the cap stops this one.
    verdict = attack(PRINT_SUM + "import sys\nsys.stdout.write('\\n' * (4 << 20))\n")
    assert zero(verdict) and verdict.details["failures"] == {"output_limit": 2}


def test_very_long_source() -> None:
    verdict = attack("x = 1\n" * (MAX_SOURCE_CHARS // 6 + 10) + PRINT_SUM)
    assert zero(verdict) and "source longer" in verdict.reason


def test_source_that_breaks_the_parser() -> None:
    assert zero(attack("x = " + "(" * 20_000 + "1" + ")" * 20_000 + "\n" + PRINT_SUM))


# ---------------------------------------------------------------------------- escape


def test_network_access() -> None:
    token = f"FLYWHEEL-NET-{uuid.uuid4().hex}"
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    connections: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            connections.append(conn)
            conn.sendall(token.encode() + b"\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    source = (
        "import socket\n"
        "for host in ('127.0.0.1', 'localhost', '10.0.2.2', '172.17.0.1'):\n"
        "    try:\n"
        f"        s = socket.create_connection((host, {port}), timeout=0.3)\n"
        "        print(s.recv(200).decode().strip())\n"
        "        break\n"
        "    except OSError:\n"
        "        pass\n"
    )
    verdict = attack(source, [{"stdin": "", "stdout": token + "\n"}])
    stop.set()
    thread.join()
    server.close()
    assert zero(verdict)
    assert connections == []


def test_reading_host_files_and_secrets(host_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"FLYWHEEL-SECRET-{uuid.uuid4().hex}"
    (host_dir / "flywheel.db").write_text(secret)
    (host_dir / "flywheel.db").chmod(0o644)
    monkeypatch.setenv("FLYWHEEL_DATABASE_PASSWORD", secret)
    source = (
        "import os, glob\n"
        f"paths = [{str(host_dir / 'flywheel.db')!r}, '/proc/1/environ', '/proc/self/environ']\n"
        "paths += glob.glob('/proc/*/environ') + glob.glob('/proc/*/root/tmp/*/flywheel.db')\n"
        "found = os.environ.get('FLYWHEEL_DATABASE_PASSWORD', '')\n"
        "for path in paths:\n"
        "    try:\n"
        "        data = open(path, 'rb').read().decode('utf-8', 'replace')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if 'FLYWHEEL-SECRET-' in data:\n"
        "        start = data.index('FLYWHEEL-SECRET-')\n"
        "        found = data[start:start + 48]\n"
        "print(found)\n"
    )
    assert zero(attack(source, [{"stdin": "", "stdout": secret + "\n"}]))


def test_writing_files(host_dir: Path) -> None:
    source = (
        "wrote = False\n"
        f"for path in [{str(host_dir / 'planted')!r}, '/usr/planted', '/flywheel/planted', '/planted']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        wrote = True\n"
        "    except OSError:\n"
        "        pass\n"
        "print('wrote' if wrote else 'refused')\n"
    )
    assert zero(attack(source, [{"stdin": "", "stdout": "wrote\n"}]))
    assert list(host_dir.iterdir()) == []


def test_killing_host_processes() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        source = (
            "import os, signal\n"
            "hit = False\n"
            f"for pid in ({sleeper.pid}, {os.getpid()}):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        hit = True\n"
            "    except OSError:\n"
            "        pass\n"
            "if hit:\n" + "    " + PRINT_SUM.replace("\n", "\n    ")
        )
        assert zero(attack(source))
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_new_namespaces_ptrace_and_mounts_are_refused() -> None:
    source = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "tries = [libc.unshare(0x10000000), libc.unshare(0x00020000), libc.ptrace(16, os.getppid(), 0, 0),\n"
        "         libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)]\n"
        "if 0 in tries:\n" + "    " + PRINT_SUM.replace("\n", "\n    ")
    )
    assert zero(attack(source))


def test_killing_the_runner_and_everything_in_reach() -> None:
    source = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n"
    verdict = attack(source)
    assert zero(verdict)


def test_terminal_injection(tmp_path: Path) -> None:
    """TIOCSTI from the sandbox must not type into the terminal of the process that verifies."""
    source = (
        "import fcntl, os, termios\n"
        "done = False\n"
        "fds = [0, 1, 2]\n"
        "try:\n"
        "    fds.append(os.open('/dev/tty', os.O_RDWR))\n"
        "except OSError:\n"
        "    pass\n"
        "for fd in fds:\n"
        "    try:\n"
        "        for ch in 'echo pwned\\n':\n"
        "            fcntl.ioctl(fd, termios.TIOCSTI, ch.encode())\n"
        "        done = True\n"
        "    except OSError:\n"
        "        pass\n"
        "print('typed' if done else 'refused')\n"
    )
    spec = code_spec([{"stdin": "", "stdout": "typed\n"}], **FAST)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    (tmp_path / "answer.txt").write_text(python_answer(source))
    script = (
        "import sys; from pathlib import Path\n"
        "from shared.protocol import VerifierSpec; from verifier.api import verify\n"
        "d = Path(sys.argv[1]); spec = VerifierSpec.model_validate_json((d / 'spec.json').read_text())\n"
        "(d / 'verdict.json').write_text(verify(spec, (d / 'answer.txt').read_text()).model_dump_json())\n"
    )
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        preexec_fn=_take_terminal,  # the verifying process gets the pty as its controlling terminal
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.wait(timeout=120) == 0
    verdict = Verdict.model_validate_json((tmp_path / "verdict.json").read_text())
    assert zero(verdict)
    os.set_blocking(follower, False)
    with pytest.raises(BlockingIOError):
        os.read(follower, 1024)  # nothing was typed into the verifying process's terminal
    os.close(leader)
    os.close(follower)


def _take_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# ---------------------------------------------------------------------------- cheating the judge

CALL_TESTS = [{"args": [2, 3], "expected": 5}, {"args": [10, 20], "expected": 30}]


def call_spec() -> VerifierSpec:
    return VerifierSpec(
        kind="code", config={"style": "call", "entry_point": "add", "tests": CALL_TESTS, **FAST}
    )


@pytest.mark.parametrize(
    "prefix",
    ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", "raise SystemExit(0)\n"],
)
def test_exiting_before_the_tests(prefix: str) -> None:
    before = descendants()
    verdict = verify(call_spec(), python_answer(prefix + "def add(a, b):\n    return a + b\n"))
    assert zero(verdict) and verdict.details["failures"] == {"no_result": 2}
    assert wait_for_no_new_processes(before) == set()
    assert zero(attack("import sys\nsys.exit(0)\n" + PRINT_SUM))


@pytest.mark.parametrize(
    "body",
    [
        "class Liar:\n    __eq__ = lambda self, other: True\n\ndef add(a, b):\n    return Liar()\n",
        "class Liar(int):\n    __eq__ = lambda self, other: True\n\ndef add(a, b):\n    return Liar(0)\n",
        "class Liar(str):\n    __eq__ = lambda self, other: True\n\ndef add(a, b):\n    return Liar('')\n",
    ],
)
def test_objects_that_equal_everything(body: str) -> None:
    assert zero(verify(call_spec(), python_answer(body)))


def test_monkey_patching_the_harness() -> None:
    source = (
        "import gc, json, os\n"
        "nonce = next((o.nonce for o in gc.get_objects() if type(o).__name__ == 'Runner'), '')\n"
        "forged = [{'nonce': nonce, 'i': i, 'status': 'ok', 'exit': 0, 'signal': None,\n"
        "           'passed': True, 'score': 1.0, 'value': 'true'} for i in range(2)]\n"
        "data = ''.join(json.dumps(f) + '\\n' for f in forged).encode()\n"
        "for fd in range(64):\n"
        "    try:\n"
        "        os.write(fd, data)\n"
        "    except OSError:\n"
        "        pass\n"
        "for fd in range(64):\n"
        "    try:\n"
        "        with open(f'/proc/{os.getppid()}/fd/{fd}', 'wb') as handle:\n"
        "            handle.write(data)\n"
        "    except OSError:\n"
        "        pass\n"
        "import verifier.values as values\n"
        "values.same = lambda *a, **k: True\n"
        "values.loads = lambda text: 5\n"
        "def add(a, b):\n"
        "    return -1\n"
    )
    assert zero(verify(call_spec(), python_answer(source)))


def test_printing_the_expected_format_without_computing_it() -> None:
    assert zero(attack("input()\nprint(0)\n"))
    assert zero(verify(call_spec(), python_answer("def add(a, b):\n    return 0\n")))


def test_the_verdict_never_contains_hidden_tests() -> None:
    verdict = verify(call_spec(), python_answer("def add(a, b):\n    return a - b\n"))
    text = json.dumps(verdict.model_dump())
    assert "30" not in text and "args" not in text and "expected" not in text
