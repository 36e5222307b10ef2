"""bubblewrap sandboxes: build the command line, check at start-up that it works, start runners.

Two launch modes give the same sandbox:
- as root (the usual container case): bwrap joins a fresh user namespace that maps host uids
  0-65535 to themselves, so it can mount the interpreter wherever it lives; the trusted runner then
  drops to uid 65534 with an empty capability set before any untrusted code exists. Processes in
  the sandbox are therefore the host's `nobody` (kuid 65534), which also makes RLIMIT_NPROC bite:
  the kernel never enforces it for kuid 0, which is what `bwrap --unshare-user --uid 65534` alone
  would give a root caller.
- as any other user: `bwrap --unshare-all --uid 65534 --gid 65534 --cap-drop ALL`.

Both: new pid, network, ipc, uts and cgroup namespaces, --die-with-parent, --new-session,
--clearenv, a read-only /usr and interpreter, a private size-capped /tmp, fresh /proc and /dev.
"""

from __future__ import annotations

import contextlib
import functools
import json
import marshal
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verifier import memcap, sandbox_env, seccomp
from verifier.errors import SandboxUnavailableError

SANDBOX_UID = 65534
TMPFS_BYTES = 64 << 20
RUNNER_ROOT = "/flywheel"
RUNNER = f"{RUNNER_ROOT}/verifier/sandbox_runner.py"
PACKAGE_DIR = Path(__file__).resolve().parent
NAMESPACES = ("ipc", "pid", "net", "uts", "cgroup")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`)"


@dataclass(frozen=True)
class Layout:
    """What the sandbox sees: the interpreter, the folders it imports from, its symlinks."""

    python: str
    binds: tuple[str, ...]
    links: tuple[tuple[str, str], ...] = ()
    as_root: bool = field(default_factory=lambda: os.geteuid() == 0)


@functools.cache
def layout() -> Layout:
    """The coordinator's own environment (venv, pyenv, conda, system), found once per process.

    FLYWHEEL_SANDBOX_PYTHON names another interpreter; by default it is this process's, by the
    path it was started as (a venv's bin/python), so the sandbox imports what the caller imports.
    """
    python = os.environ.get("FLYWHEEL_SANDBOX_PYTHON") or sys.executable
    if not python:
        raise SandboxUnavailableError("sys.executable is empty: set FLYWHEEL_SANDBOX_PYTHON")
    env = sandbox_env.discover(python)
    return Layout(python=env.python, binds=env.binds, links=env.links)


def bwrap_path() -> str:
    found = shutil.which("bwrap")
    if not found:
        raise SandboxUnavailableError(f"bwrap not found: {INSTALL_HINT}")
    return found


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _ro_binds(pairs: list[tuple[str, str]], links: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """Read-only binds (source, destination) and symlinks (target, link), creating
    world-readable parent directories."""
    args: list[str] = []
    made: set[str] = set()

    def parents(dest: str) -> None:
        nonlocal args
        for parent in reversed(Path(dest).parents):
            name = str(parent)
            if name != "/" and name not in made:
                made.add(name)
                args += ["--perms", "0755", "--dir", name]

    for source, dest in pairs:
        parents(dest)
        args += ["--ro-bind", source, dest]
    for target, link in links:
        parents(link)
        args += ["--symlink", target, link]
    return args


def bwrap_args(userns_fd: int | None, seccomp_fd: int, extra: list[str] | None = None) -> list[str]:
    """The full bwrap command line up to (not including) the command to run."""
    if userns_fd is not None:
        isolation = ["--userns", str(userns_fd)] + [f"--unshare-{ns}" for ns in NAMESPACES]
    else:
        isolation = ["--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        isolation += ["--cap-drop", "ALL", "--disable-userns"]
    isolation += ["--seccomp", str(seccomp_fd)]
    common = ["--die-with-parent", "--new-session", "--clearenv"]
    common += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8"]
    mounts = [*_system_binds(), "--proc", "/proc", "--dev", "/dev"]
    # bwrap makes new directories 0700 and tmpfs 0755: the sandbox uid needs to read and write.
    mounts += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    binds = [(path, path) for path in layout().binds] + [(str(PACKAGE_DIR), f"{RUNNER_ROOT}/verifier")]
    # After the /tmp tmpfs, so an environment under /tmp shows through it (read-only).
    mounts += [*_ro_binds(binds, layout().links), "--chdir", "/tmp"]
    return [bwrap_path(), *isolation, *common, *mounts, *(extra or [])]


def identity_userns() -> int:
    """A new user namespace mapping uids/gids 0-65535 to themselves; returns an fd to it.

    Only root can write such a map. A namespace per running sandbox keeps each sandbox's process
    count (RLIMIT_NPROC is counted per namespace) separate from every other sandbox's.
    """
    holder = subprocess.Popen(
        ["unshare", "--user", "--", "sh", "-c", "echo ready; read _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline() != b"ready\n":
            raise SandboxUnavailableError("could not create a user namespace with `unshare --user`")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as handle:
                handle.write("0 0 65536\n")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY)
    finally:
        holder.kill()
        holder.wait()


class _Namespaces:
    """Identity-mapped user namespaces, each lent to one sandbox at a time and reused after it.

    Creating one costs two process starts, a noticeable share of a short submission. A namespace
    goes back to the pool only after its sandbox ended by itself (so nothing of it is left in the
    namespace's process count); after a hard kill it is dropped. A forked child starts its own
    pool: the parent's namespaces may be in use.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: list[int] = []
        self.owner = os.getpid()

    def acquire(self) -> int:
        with self.lock:
            if self.owner != os.getpid():
                self.free, self.owner = [], os.getpid()
            if self.free:
                return self.free.pop()
        return identity_userns()

    def release(self, fd: int, reuse: bool) -> None:
        with self.lock:
            if reuse and self.owner == os.getpid():
                self.free.append(fd)
                return
        os.close(fd)


_namespaces = _Namespaces()


class Sandbox:
    """One running sandbox with the trusted runner inside, talking JSON lines over pipes.

    The first line sent is the job; every line read back must carry this sandbox's nonce.
    A job whose limits name `sandbox_memory_mb` gets that cap for all its processes together
    (verifier/memcap.py: a cgroup of its own, or the rlimit fallback).
    """

    def __init__(self, job: dict[str, Any], skip_site: bool = True) -> None:
        self.nonce = uuid.uuid4().hex
        self._buffer = bytearray()
        self.cgroup: memcap.Cgroup | None = None
        self.userns = _namespaces.acquire() if layout().as_root else None
        try:
            job, prefix, binds = self._cap_memory(job)
        except BaseException:
            self._release_userns(reuse=True)  # nothing ran in it
            raise
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the sandbox
        filter_fd = seccomp.filter_fd()
        flags = ["-I", "-B", *(["-S"] if skip_site else [])]
        argv = [*prefix, *bwrap_args(self.userns, filter_fd, binds), layout().python, *flags, RUNNER]
        fds = [filter_fd] if self.userns is None else [filter_fd, self.userns]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                pass_fds=fds,
                start_new_session=True,
            )
        except OSError as exc:
            self._release_userns(reuse=False)
            self._remove_cgroup()
            raise SandboxUnavailableError(f"could not start bwrap: {exc}") from exc
        finally:
            os.close(filter_fd)
        full_job = {**job, "nonce": self.nonce, "pidns": True, "scratch": "/tmp", "import_root": RUNNER_ROOT}
        self.send_job({**full_job, "drop_to": SANDBOX_UID})

    def _cap_memory(self, job: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
        """The job as the runner gets it, a command prefix and extra bwrap arguments for the cap."""
        limits = job.get("limits", {})
        if "sandbox_memory_mb" not in limits:
            return job, [], []
        total_mb = int(limits["sandbox_memory_mb"])
        under = memcap.parent()
        if under is None:
            overhead = 1 if layout().as_root else 2  # the runner; without root, bwrap's init too
            nproc = memcap.rlimit_nproc(limits, total_mb, overhead)
            return {**job, "limits": {**limits, "nproc": nproc}}, [], []
        try:
            self.cgroup = memcap.Cgroup.create(under, total_mb << 20)
        except OSError as exc:
            raise SandboxUnavailableError(f"could not create the sandbox's cgroup: {exc}") from exc
        binds = ["--ro-bind", self.cgroup.events, memcap.EVENTS_IN_SANDBOX]
        return {**job, "memory_events": memcap.EVENTS_IN_SANDBOX}, self.cgroup.enter_argv(), binds

    def oom_kills(self) -> int:
        """Processes the kernel killed for the memory cap so far (cgroup mode; else 0)."""
        return self.cgroup.oom_kills() if self.cgroup is not None else 0

    def _remove_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None

    def _release_userns(self, reuse: bool) -> None:
        if self.userns is not None:
            _namespaces.release(self.userns, reuse)
            self.userns = None

    def send_job(self, job: dict[str, Any]) -> None:
        """The first message: length-prefixed marshal, which the runner reads without importing json."""
        assert self.proc.stdin is not None
        data = marshal.dumps(job, 4)
        self.proc.stdin.write(len(data).to_bytes(4, "little") + data)
        self.proc.stdin.flush()

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def close_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def read_frame(self, deadline: float) -> dict[str, Any] | None:
        """The next frame, or None at end of output or when `deadline` (monotonic) passes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        frame = json.loads(line)
        if not isinstance(frame, dict) or frame.get("nonce") != self.nonce:
            return None  # only the runner knows the nonce; anything else ends the conversation
        return frame

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, grace_s: float = 2.0) -> None:
        """Ask a service to finish (end of its input), then stop it hard if it does not."""
        with contextlib.suppress(OSError):
            self.close_input()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace_s)
        self.kill()

    def kill(self) -> None:
        """Hard stop: bwrap dies, so does the namespace's init, so does every process inside."""
        ended_by_itself = self.proc.poll() is not None
        if not ended_by_itself:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._release_userns(reuse=ended_by_itself)
        self._remove_cgroup()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()


@dataclass(frozen=True)
class Run:
    """What a one-shot sandbox left: its frames (up to `done`), bwrap's stderr tail, and how
    many of its processes the kernel killed for the memory cap (cgroup mode)."""

    frames: list[dict[str, Any]]
    stderr: str
    oom_kills: int = 0


def run_once(job: dict[str, Any], timeout_s: float) -> tuple[list[dict[str, Any]], str]:
    """Run a one-shot job; returns its frames (up to the `done` frame) and bwrap's stderr tail."""
    run = run_job(job, timeout_s)
    return run.frames, run.stderr


def run_job(job: dict[str, Any], timeout_s: float) -> Run:
    """Run a one-shot job to its `done` frame or `timeout_s`."""
    sandbox = Sandbox(job)
    frames: list[dict[str, Any]] = []
    try:
        sandbox.close_input()
        deadline = time.monotonic() + timeout_s
        while (frame := sandbox.read_frame(deadline)) is not None:
            frames.append(frame)
            if frame.get("done"):
                break
        return Run(frames, sandbox.stderr_tail(), sandbox.oom_kills())
    finally:
        if frames and frames[-1].get("done"):
            # The runner is exiting with its children already dead: let it end and be reaped in
            # the background, so the caller does not wait for the namespaces to be torn down.
            _reaper.submit(sandbox)
        else:
            sandbox.kill()


class _Reaper:
    """One background thread per process that waits for finished sandboxes to exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue[Sandbox] = queue.SimpleQueue()
        self.owner = -1

    def submit(self, sandbox: Sandbox) -> None:
        with self.lock:
            if self.owner != os.getpid():  # first use, or a forked child: threads do not survive fork
                self.queue, self.owner = queue.SimpleQueue(), os.getpid()
                worker = threading.Thread(target=self._run, args=(self.queue,), name="sandbox-reaper")
                worker.daemon = True
                worker.start()
            self.queue.put(sandbox)

    @staticmethod
    def _run(pending: queue.SimpleQueue[Sandbox]) -> None:
        while True:
            pending.get().stop(grace_s=5.0)


_reaper = _Reaper()


# ---------------------------------------------------------------------------- start-up check

_PROBE = """
import json, os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(),
                  "interfaces": [name for _, name in socket.if_nameindex()],
                  "seccomp": status["Seccomp"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                  "caps": [status[k].strip() for k in ("CapPrm", "CapEff", "CapAmb")],
                  "env": sorted(os.environ), "root": sorted(os.listdir("/"))}))
"""


def probe() -> dict[str, Any]:
    """Start one real sandbox and check from inside that it is what it should be.

    Raises SandboxUnavailableError naming what failed (and which namespace bwrap was refused).
    """
    job: dict[str, Any] = {"mode": "tests", "style": "stdio", "source": _PROBE, "tests": [{"stdin": ""}]}
    job["limits"] = {"cpu_s": 5.0, "wall_s": 10.0}
    frames, stderr = run_once(job, 30.0)
    frame = next((f for f in frames if f.get("i") == 0), None)
    if frame is None or frame.get("exit") != 0:
        raise SandboxUnavailableError(f"the sandbox does not start: {stderr.strip()[-400:]} {diagnose()}")
    seen = json.loads(frame["stdout"])
    problems = []
    if seen["uid"] != SANDBOX_UID or seen["gid"] != SANDBOX_UID:
        problems.append(f"runs as uid {seen['uid']}, not {SANDBOX_UID}")
    if seen["interfaces"] != ["lo"]:
        problems.append(f"network interfaces visible: {seen['interfaces']}")
    if seen["pid"] > 10:
        problems.append("no private pid namespace")
    if seen["seccomp"] != "2" or seen["no_new_privs"] != "1" or any(int(c, 16) for c in seen["caps"]):
        problems.append("no seccomp filter, no no-new-privs or capabilities left")
    if problems:
        raise SandboxUnavailableError("sandbox is weaker than required: " + "; ".join(problems))
    return seen


def diagnose() -> str:
    """Which namespace bwrap cannot create here (a container that forbids it, say)."""
    refused = []
    for ns in ("user", *NAMESPACES):
        argv = [bwrap_path(), f"--unshare-{ns}", *_system_binds(), "--proc", "/proc", "/usr/bin/true"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            refused.append(f"--unshare-{ns}: {done.stderr.strip()[:200]}")
    return ("refused: " + "; ".join(refused)) if refused else ""


def describe() -> str:
    if layout().as_root:
        return (
            "root caller: bwrap --userns <an identity-mapped user namespace of its own> "
            f"--unshare-{{{','.join(NAMESPACES)}}} --seccomp <filter>; the runner drops to uid "
            f"{SANDBOX_UID} with no capabilities, no-new-privs, non-dumpable"
        )
    return (
        f"bwrap --unshare-all --unshare-user --uid {SANDBOX_UID} --gid {SANDBOX_UID} --cap-drop ALL "
        "--disable-userns --seccomp <filter>"
    )
