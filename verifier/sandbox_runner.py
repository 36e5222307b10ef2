"""The trusted runner that executes inside the bubblewrap sandbox (standard library only).

It is started once per sandbox, reads one job on stdin (a length-prefixed marshal dump written
by the host) and then:
- mode "tests": runs every test of one submission, each in a *fresh forked child*, and reports
  one JSON frame per test;
- mode "serve": imports a scoring handler once, then answers request lines, each in a fresh
  forked child, so a hostile input cannot leave state behind for the next request (a handler
  that never evaluates its input may ask to run in the service process instead; any failure
  there ends the process).

Untrusted code only ever runs in the children. Before any child exists the runner drops to the
sandbox uid with no capabilities, checks that no-new-privs is set (bwrap's seccomp filter sets it)
and is non-dumpable (so a child cannot ptrace it or open its /proc files). Children get their own
pipes only: the frame channel to the host is closed in them, and every frame carries the host's
nonce, so nothing a program prints can pass for a result. After each child the runner kills every
other process in the sandbox's pid namespace and empties /tmp, so the next test starts from nothing.
"""

from __future__ import annotations

import contextlib
import io
import marshal
import os
import resource
import select
import sys
import time
import types
from typing import Any

PR_SET_DUMPABLE = 4
SIGKILL = 9
RESULT_FD = 3
READ_CHUNK = 65536
WORKDIR = ".work"  # under the scratch dir: compiled programs, kept across tests; the rest is wiped
CHILD_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
values: Any = None  # verifier.values, imported only by the styles that need it (it needs json)
# Imports are kept to what the stdin/stdout style needs: each one is paid once per submission.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


class Runner:
    def __init__(self, job: dict[str, Any], channel: int) -> None:
        self.job = job
        self.channel = channel
        self.nonce = str(job["nonce"])
        self.limits: dict[str, Any] = job.get("limits", {})
        # Both only when the host says we are in a sandbox: `kill(-1)` and emptying the scratch
        # directory would be destructive anywhere else (the unsandboxed benchmark baseline).
        self.pidns = bool(job.get("pidns")) and os.getpid() == 2
        self.scratch: str | None = job.get("scratch")
        self.workdir = os.path.join(self.scratch or "/nonexistent", WORKDIR)
        # The sandbox cgroup's memory.events (cgroup mode only): its oom_kill count, read after
        # each child, tells which test the kernel killed for the sandbox's memory cap.
        self.events: str | None = job.get("memory_events")
        self.oom_seen = _oom_kills(self.events)
        self.delay_s = 0.0  # the host's share of every child's run-delay so far (see _cleanup)

    def emit(self, frame: dict[str, Any]) -> None:
        data = (_json({"nonce": self.nonce, **frame}) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.channel, view) :]

    # ------------------------------------------------------------------ children

    def spawn(self, body: Any, stdin_data: bytes) -> dict[str, Any]:
        """Run `body()` in a fresh child; collect its stdout and result pipe under the limits."""
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, stdin_data)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        out_r, out_w = os.pipe()
        res_r, res_w = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            self._enter_child(stdin_fd, out_w, res_w)
            body()
            os._exit(0)
        for fd in (stdin_fd, out_w, res_w):
            os.close(fd)
        try:
            outcome = self._collect(pid, out_r, res_r)
            outcome["wall_s"] = time.monotonic() - started
            return outcome
        finally:
            os.close(out_r)
            os.close(res_r)
            self._cleanup(pid)

    def _enter_child(self, stdin_fd: int, out_w: int, res_w: int) -> None:
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(devnull, 2)
            os.dup2(res_w, RESULT_FD)
            os.closerange(RESULT_FD + 1, 1 << 16)  # the host channel and every other pipe
            _set_limits(self.limits)
            _fresh_stdio()
        except BaseException:
            os._exit(70)

    def _collect(self, pid: int, out_r: int, res_r: int) -> dict[str, Any]:
        cap = int(self.limits.get("output_bytes", 1 << 20))
        deadline = time.monotonic() + float(self.limits.get("wall_s", 5.0))
        buffers = {out_r: bytearray(), res_r: bytearray()}
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        for fd in (out_r, res_r, pidfd):
            poller.register(fd, select.POLLIN)
        open_fds, status = {out_r, res_r}, "running"
        while status == "running":
            left = deadline - time.monotonic()
            events = poller.poll(max(1, int(left * 1000))) if left > 0 else []
            if not events:
                status = "timeout"
            for fd, _ in events:
                if fd == pidfd:
                    status = "exited"  # all its writes are in the pipes now; drain below
                else:
                    _read_into(fd, buffers[fd], poller, open_fds)
            if any(len(b) > cap for b in buffers.values()):
                status = "output_limit"
        if status == "exited":
            poller.unregister(pidfd)
            _drain(poller, buffers, open_fds, cap)
            status = "output_limit" if any(len(b) > cap for b in buffers.values()) else "ok"
        os.close(pidfd)
        return {"status": status, "out": bytes(buffers[out_r][:cap]), "res": bytes(buffers[res_r][:cap])}

    def _cleanup(self, pid: int) -> None:
        """Kill the child and everything it started, reap it, and empty /tmp.

        Before the kill, the child's CPU time and run-delay (/proc/<pid>/schedstat: time it was
        runnable but not running, waiting for a CPU that others got) and the CPU time of every
        process of the program. The host's share of the delay is what the program's other
        processes and threads, running meanwhile, do not explain (a fork bomb delays itself)."""
        own_cpu, delay = _schedstat(pid)
        tree_cpu = _program_cpu(pid, self.pidns)
        if self.pidns:
            # In our own pid namespace, -1 means every process but the namespace init and us.
            _kill(-1)
        else:
            _kill(-pid)
        _kill(pid)
        _, status, usage = os.wait4(pid, 0)
        self.last_status = status
        self.last_cpu = max(tree_cpu, usage.ru_utime + usage.ru_stime)
        self.last_delay = max(0.0, delay - max(0.0, self.last_cpu - own_cpu))
        self.delay_s += self.last_delay
        seen, self.oom_seen = self.oom_seen, _oom_kills(self.events)
        self.last_oom = self.oom_seen > seen
        if self.scratch:
            _wipe(self.scratch, keep=self.workdir)

    def child_exit(self) -> dict[str, Any]:
        status = self.last_status
        measured = {"cpu_s": self.last_cpu, "delay_s": self.last_delay, "oom": self.last_oom}
        if os.WIFSIGNALED(status):
            return {"exit": None, "signal": os.WTERMSIG(status), **measured}
        return {"exit": os.WEXITSTATUS(status), "signal": None, **measured}

    # ------------------------------------------------------------------ modes

    def run_tests(self) -> None:
        self.emit({"started": True})  # tells the host the sandbox works, whatever the program does
        if not self._compile():
            self.emit({"done": True})
            return
        # The first compile() in a process builds the AST node types (about 1.3 ms); doing it
        # once here, on a constant, means no forked child pays for it again.
        compile("pass", "<warm-up>", "exec")
        begun, own_delay = time.monotonic(), _schedstat(0)[1]
        stop_at = begun + float(self.job.get("budget_s", 3600.0))
        done: dict[str, Any] = {"done": True}
        for index, test in enumerate(self.job["tests"]):
            if time.monotonic() > stop_at:
                # The submission's time budget is spent: the remaining tests count as failed. The
                # host tells from the time it lost to others whether the program or the host spent it.
                delay = self.delay_s + _schedstat(0)[1] - own_delay
                done.update(budget_spent=True, elapsed_s=time.monotonic() - begun, delay_s=delay)
                break
            body, stdin = self._test_body(test)
            outcome = self.spawn(body, stdin)
            frame = {"i": index, "status": outcome["status"], **self.child_exit()}
            frame["wall_s"] = outcome["wall_s"]
            frame["stdout"] = outcome["out"].decode("utf-8", "replace")
            frame["value"] = outcome["res"].decode("utf-8", "replace")
            self.emit(frame)
        self.emit({**done, "cpu_s": _cpu_s()})

    def _test_body(self, test: dict[str, Any]) -> tuple[Any, bytes]:
        style, source, entry = self.job["style"], self.job.get("source", ""), self.job.get("entry_point", "")
        if style == "stdio":
            body = _stdio_body(source, self.job.get("run"), self.workdir)
            return body, str(test.get("stdin", "")).encode()
        if style == "call":
            return _call_body(source, entry, test.get("args", []), test.get("kwargs", {"$dict": []})), b""
        return _record_body(source, entry), b""

    def _compile(self) -> bool:
        """Write the submission's files and run the language's compiler once, in a child."""
        files: dict[str, str] = self.job.get("files", {})
        if not files:
            return True
        os.makedirs(self.workdir, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(self.workdir, os.path.basename(name)), "w") as handle:
                handle.write(text)
        command = self.job.get("compile")
        if not command:
            return True
        test_limits, self.limits = self.limits, self.job.get("compile_limits", self.limits)
        try:
            outcome = self.spawn(_exec_body(command, self.workdir), b"")
        finally:
            self.limits = test_limits
        result = {"status": outcome["status"], **self.child_exit(), "wall_s": outcome["wall_s"]}
        self.emit({"compile": result})
        return result["status"] == "ok" and result["exit"] == 0

    def serve(self) -> None:
        import importlib
        import json

        handler = importlib.import_module(self.job["handler"])
        prepare = getattr(handler, "prepare", None)
        inline = not getattr(handler, "FORK_PER_REQUEST", True)
        if inline:
            _set_memory_limit(self.limits)
        self.emit({"ready": True})
        for line in sys.stdin.buffer:
            request = json.loads(line)
            payload = request["payload"]
            try:
                if prepare is not None:
                    prepare(payload)  # trusted data only (gold answers, dataset entries)
            except Exception as exc:  # a bad gold answer fails this request, not the service
                self.emit({"id": request["id"], "status": "prepare_failed", "error": type(exc).__name__})
                continue
            if inline:
                frame = self._inline(handler, payload)
            else:
                outcome = self.spawn(_handler_body(handler, payload), b"")
                frame = {"status": outcome["status"], **self.child_exit()}
                frame["value"] = outcome["res"].decode("utf-8", "replace")
            self.emit({"id": request["id"], **frame})
            if frame.get("fatal"):
                return  # an interrupted handler may have left state half-updated: start afresh

    def _inline(self, handler: Any, payload: dict[str, Any]) -> dict[str, Any]:
        """Handle a request in this process (handlers that never evaluate their input), with an
        alarm for the wall limit; the host's hard kill stays the backstop for C-level loops."""
        import signal

        def overrun(signum: int, frame: Any) -> None:
            raise _Overrun

        signal.signal(signal.SIGALRM, overrun)
        signal.setitimer(signal.ITIMER_REAL, float(self.limits.get("wall_s", 5.0)))
        try:
            value = values.json.dumps(handler.handle(payload))
            return {"status": "ok", "exit": 0, "signal": None, "value": value}
        except _Overrun:
            return {"status": "timeout", "fatal": True}
        except MemoryError:
            return {"status": "memory", "fatal": True}
        except Exception as exc:
            return {"status": "crashed", "error": type(exc).__name__, "fatal": True}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


class _Overrun(BaseException):
    """Raised by the alarm; a BaseException so library code that catches Exception cannot eat it."""


# ---------------------------------------------------------------------- child bodies


def _exec_body(argv: list[str], workdir: str) -> Any:
    def body() -> None:
        os.chdir(workdir)
        os.execve(argv[0], argv, CHILD_ENV)

    return body


def _stdio_body(source: str, argv: list[str] | None, workdir: str) -> Any:
    if argv:
        return _exec_body(argv, workdir)

    def body() -> None:
        code = compile(source, "solution.py", "exec")
        try:
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
            code_out = 0
        except SystemExit as stop:  # sys.exit() is a normal way for a script to end
            code_out = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        _flush()
        os._exit(code_out)

    return body


def _call_body(source: str, entry: str, args: Any, kwargs: Any) -> Any:
    def body() -> None:
        namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": __builtins__}
        exec(compile(source, "solution.py", "exec"), namespace)
        result = namespace[entry](*values.decode(args), **values.decode(kwargs))
        _write_result(values.dumps(result))

    return body


def _record_body(source: str, entry: str) -> Any:
    """Run a reference solution under its own test function and record every call's values."""

    def body() -> None:
        namespace: dict[str, Any] = {"__name__": "reference", "__builtins__": __builtins__}
        exec(compile(source, "reference.py", "exec"), namespace)
        target = namespace[entry]
        calls: list[Any] = []

        def recorder(*args: Any, **kwargs: Any) -> Any:
            encoded = [values.encode(list(args)), values.encode(dict(kwargs))]
            result = target(*args, **kwargs)
            calls.append([*encoded, values.encode(result)])
            return result

        namespace["check"](recorder)
        _write_result(values.json.dumps(calls))

    return body


def _handler_body(handler: Any, payload: dict[str, Any]) -> Any:
    def body() -> None:
        _write_result(values.json.dumps(handler.handle(payload)))

    return body


# ---------------------------------------------------------------------- helpers


def _read_into(fd: int, buffer: bytearray, poller: Any, open_fds: set[int]) -> None:
    chunk = os.read(fd, READ_CHUNK)
    if chunk:
        buffer += chunk
    else:
        poller.unregister(fd)
        open_fds.discard(fd)


def _drain(poller: Any, buffers: dict[int, bytearray], open_fds: set[int], cap: int) -> None:
    """Read what the exited child left in its pipes; a lingering grandchild gets no extra time."""
    while open_fds and all(len(b) <= cap for b in buffers.values()):
        events = poller.poll(0)
        if not events:
            return
        for fd, _ in events:
            _read_into(fd, buffers[fd], poller, open_fds)


def _json(value: Any) -> str:
    """JSON for the frames (strings, ints, booleans, None, dicts): the json module costs a
    noticeable share of a submission's start-up, and frames need nothing more."""
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if type(value) is int or type(value) is float:
        return repr(value)
    if type(value) is str:
        return '"' + value.translate(_ESCAPES) + '"'
    if type(value) is dict:
        return "{" + ",".join(_json(str(k)) + ":" + _json(v) for k, v in value.items()) + "}"
    raise TypeError(f"frame value of type {type(value).__name__}")


def _write_result(text: str) -> None:
    data = memoryview(text.encode())
    while data:
        data = data[os.write(RESULT_FD, data) :]
    os.close(RESULT_FD)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe after the output cap: nothing left to save.
        with contextlib.suppress(Exception):
            stream.flush()


def _fresh_stdio() -> None:
    """New stream objects on fds 0-2: the runner's own buffers must not leak into a child."""
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8")


def _set_limits(limits: dict[str, Any]) -> None:
    cpu = max(1, int(float(limits.get("cpu_s", 2.0)) + 0.999))
    memory = int(limits.get("memory_mb", 512)) << 20
    fsize = int(limits.get("fsize_mb", 16)) << 20
    nproc = int(limits.get("nproc", 16))
    for name, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory, memory)),
        (resource.RLIMIT_FSIZE, (fsize, fsize)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
        (resource.RLIMIT_NOFILE, (64, 64)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(name, value)


def _cpu_s() -> float:
    """CPU seconds of this runner and its reaped children (bwrap's own accounting loses them)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _schedstat(pid: int) -> tuple[float, float]:
    """Seconds the main thread of `pid` (0: this process) has run and has spent runnable but
    waiting for a CPU; zeros if unknown."""
    try:
        with open(f"/proc/{pid or 'self'}/schedstat") as handle:
            ran, waited = handle.read().split()[:2]
        return int(ran) / 1e9, int(waited) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _program_cpu(pid: int, pidns: bool) -> float:
    """CPU seconds of the program's live and zombie processes and of the children they reaped
    (utime, stime, cutime, cstime): in our pid namespace every process but init and us."""
    mine = (1, os.getpid())
    pids = [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in mine] if pidns else [pid]
    ticks = 0
    for other in pids:
        try:
            with open(f"/proc/{other}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
            ticks += sum(int(value) for value in fields[11:15])
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return ticks / _CLOCK_TICKS


def _oom_kills(events: str | None) -> int:
    if not events:
        return 0
    with open(events) as handle:
        for line in handle:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


def _set_memory_limit(limits: dict[str, Any]) -> None:
    memory = int(limits.get("memory_mb", 2048)) << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, SIGKILL)


def _wipe(path: str, keep: str = "") -> None:
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if full == keep or os.path.ismount(full):
            continue  # a mount point is the read-only environment (a venv under /tmp), not scratch
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                _wipe(full)
                os.rmdir(full)
            else:
                os.unlink(full)
        except OSError:
            pass


def _prctl(option: int, arg: int) -> None:
    import ctypes  # only where needed: it is one of the slower imports

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _drop_privileges(uid: int | None) -> None:
    """Become `uid` with no capabilities and no way back; refuse to go on if anything is left.

    bwrap's seccomp filter has already set no-new-privs and every mount is nosuid, so nothing
    executed later can regain privileges. A change of uid also makes the process non-dumpable
    (with fs.suid_dumpable = 0), which keeps its children from ptracing it or reading its /proc
    files; without a change of uid (bwrap already ran us as `uid`) prctl does it.
    """
    if uid is None:
        return
    changed = os.getuid() != uid
    if changed:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if not changed or _read("/proc/sys/fs/suid_dumpable") != "0":
        _prctl(PR_SET_DUMPABLE, 0)
    status = dict(line.split(":", 1) for line in _read("/proc/self/status").splitlines() if ":" in line)
    caps = [int(status[k], 16) for k in ("CapPrm", "CapEff", "CapAmb")]
    if os.getuid() != uid or os.geteuid() != uid or any(caps) or status["NoNewPrivs"].strip() != "1":
        raise SystemExit("runner: privileges were not dropped")


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read().strip()


def _load_package(root: str) -> None:
    """Make `verifier` the package under `root`: an editable install's import hook would
    otherwise point it at the host checkout, which the sandbox cannot see."""
    package = types.ModuleType("verifier")
    package.__path__ = [os.path.join(root, "verifier")]
    sys.modules["verifier"] = package


def _read_job() -> dict[str, Any]:
    """The job: a 4-byte little-endian length, then a marshal dump of plain data (host-written)."""
    header = _read_exactly(4)
    job = marshal.loads(_read_exactly(int.from_bytes(header, "little")))
    assert isinstance(job, dict)
    return job


def _read_exactly(size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(0, size - len(data))
        if not chunk:
            raise SystemExit("runner: no job")
        data += chunk
    return bytes(data)


def main() -> None:
    global values
    job = _read_job()
    root = job.get("import_root", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _load_package(root)
    if job["mode"] == "serve" or job.get("style") in ("call", "record"):
        import verifier.values

        values = verifier.values
    channel = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray prints (ours or a library's) never reach the frame channel
    _drop_privileges(job.get("drop_to"))
    runner = Runner(job, channel)
    if job["mode"] == "serve":
        runner.serve()
    else:
        runner.run_tests()
    # Everything is reported and every child is reaped: skip the interpreter's teardown.
    os._exit(0)


if __name__ == "__main__":
    main()
