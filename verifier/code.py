"""Code verification: run a submission's tests in one sandbox, compare results outside it.

The spec format is documented in docs/verifiers.md. Expected outputs stay on this side: the
sandbox receives the program and each test's input only, and sends back what the program
printed (stdin/stdout style) or the typed value its function returned (function-call style).
"""

from __future__ import annotations

import ast
import json
import math
import re
import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

from shared.protocol import Verdict, VerifierSpec
from verifier import memcap, sandbox, values
from verifier.errors import HostStalledError, SandboxUnavailableError, SpecError

MAX_SOURCE_CHARS = 64_000
MAX_TESTS = 1_000
DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_MEMORY_MB = 512
DEFAULT_OUTPUT_BYTES = 1 << 20
# Per submission: 1,000 tests that each sleep to their limit must not hold a verifier for an hour.
DEFAULT_BUDGET_S = 60.0
STARTUP_ALLOWANCE_S = 10.0
# A limit that tripped counts against the program unless the host took more than half of it: the
# program's own time is the wall time minus the host's share of its run-delay (time it was
# runnable while the host ran others; what its own other processes ran meanwhile is not the
# host's). Below half, the host stalled, not the program, and the verdict is "retry later". Half,
# because a test's wall limit is twice its CPU limit (plus 0.5 s): a program that had half of it
# to itself had its whole CPU limit's worth of time, so busy programs (a fork bomb on a loaded
# host) are judged as they are; only a program kept waiting most of the time is given another try.
STALL_SHARE = 0.5
CONFIG_KEYS = frozenset(
    {"language", "style", "tests", "entry_point", "prelude", "compare", "float_tol", "time_limit_s"}
    | {"memory_mb", "output_limit_bytes", "budget_s", "task_id"}
)
STDIO_TEST_KEYS, STDIO_REQUIRED = frozenset({"stdin", "stdout"}), frozenset({"stdout"})
CALL_TEST_KEYS, CALL_REQUIRED = frozenset({"args", "kwargs", "expected"}), frozenset({"args", "expected"})
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.S)
_THINK_END = "</think>"


@dataclass(frozen=True)
class Language:
    """How a language's programs are built and run inside the sandbox."""

    name: str
    fence_tags: tuple[str, ...]
    source_file: str = ""
    compile: tuple[str, ...] = ()
    run: tuple[str, ...] = ()  # empty: Python, run in the runner's forked child (fast path)

    @property
    def supports_calls(self) -> bool:
        return not self.run


LANGUAGES = {
    "python": Language("python", ("python", "py", "python3")),
    "cpp": Language(
        "cpp",
        ("cpp", "c++", "cc", "cxx"),
        source_file="main.cpp",
        compile=("/usr/bin/g++", "-O2", "-std=c++17", "-pipe", "-o", "main", "main.cpp"),
        run=("/tmp/.work/main",),
    ),
}


@dataclass(frozen=True)
class CodeConfig:
    language: Language
    style: str
    tests: list[dict[str, Any]]
    entry_point: str
    prelude: str
    compare: str
    float_tol: float
    time_limit_s: float
    memory_mb: int
    output_bytes: int
    budget_s: float
    sandbox_memory_mb: int = memcap.DEFAULT_TOTAL_MB

    @classmethod
    def parse(cls, config: dict[str, Any]) -> CodeConfig:
        """Validate a spec's config; raises SpecError with what is wrong."""
        language = LANGUAGES.get(str(config.get("language", "python")))
        if language is None:
            raise SpecError(f"unknown language {config.get('language')!r}; known: {sorted(LANGUAGES)}")
        style = str(config.get("style", "stdio"))
        tests = config.get("tests")
        if style not in ("stdio", "call") or not isinstance(tests, list) or not tests:
            raise SpecError("code spec needs style 'stdio' or 'call' and a non-empty list of tests")
        if len(tests) > MAX_TESTS or not all(isinstance(t, dict) for t in tests):
            raise SpecError(f"tests must be at most {MAX_TESTS} objects")
        if style == "call" and (not language.supports_calls or not config.get("entry_point")):
            raise SpecError("function-call tests need language 'python' and an entry_point")
        compare = str(config.get("compare", "lines"))
        if compare not in ("exact", "lines", "tokens"):
            raise SpecError(f"unknown compare mode {compare!r}")
        _check_keys("config", config, CONFIG_KEYS, required=frozenset({"tests"}))
        for index, test in enumerate(tests):  # fail on a malformed spec now, not halfway through judging
            check_test(style, index, test)
        limits = _bounded(config)
        return cls(
            language=language,
            style=style,
            tests=tests,
            entry_point=str(config.get("entry_point", "")),
            prelude=str(config.get("prelude", "")),
            compare=compare,
            float_tol=float(config.get("float_tol", values.DEFAULT_FLOAT_TOL)),
            # One cap for the sandbox's processes together; never below one process's own limit.
            sandbox_memory_mb=max(memcap.default_total_mb(), limits["memory_mb"]),
            **limits,
        )

    def limits(self) -> dict[str, Any]:
        return {
            "cpu_s": self.time_limit_s,
            "wall_s": self.time_limit_s * 2 + 0.5,  # sleeping or blocked programs burn no CPU
            "memory_mb": self.memory_mb,
            "sandbox_memory_mb": self.sandbox_memory_mb,
            "output_bytes": self.output_bytes,
            "nproc": 16,
            "fsize_mb": 16,
        }

    def wall_s(self) -> float:
        return float(self.limits()["wall_s"])


def check_test(style: str, index: int, test: dict[str, Any]) -> None:
    """One test case, strictly: known keys only, the required ones present, each of its type.

    A test with unknown keys (`{"input", "output"}`) would otherwise read as empty input and
    empty expected output, which an empty program passes."""
    where = f"test {index}"
    if style == "stdio":
        _check_keys(where, test, STDIO_TEST_KEYS, STDIO_REQUIRED)
        for key in sorted(test):
            if type(test[key]) is not str:
                raise SpecError(f"{where}: {key!r} must be a string")
        return
    _check_keys(where, test, CALL_TEST_KEYS, CALL_REQUIRED)
    try:
        args, kwargs = values.decode(test["args"]), values.decode(test.get("kwargs", {"$dict": []}))
        values.decode(test["expected"])  # any typed value may be expected; it must decode
    except values.ValueFormatError as exc:
        raise SpecError(f"{where}: not in the typed encoding: {exc}") from exc
    if type(args) is not list:
        raise SpecError(f"{where}: 'args' must be an array of encoded arguments")
    if type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
        raise SpecError(f"{where}: 'kwargs' must be an encoded dict with string keys")


def _check_keys(where: str, given: dict[str, Any], known: frozenset[str], required: frozenset[str]) -> None:
    unknown = sorted(str(key) for key in given if key not in known)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; known: {sorted(known)}")
    missing = sorted(required - given.keys())
    if missing:
        raise SpecError(f"{where}: missing key {missing[0]!r}")


def _bounded(config: dict[str, Any]) -> dict[str, Any]:
    """The spec's limits, checked against sane ranges (a typo must not disable a limit)."""
    limits = {
        "time_limit_s": float(config.get("time_limit_s", DEFAULT_TIME_LIMIT_S)),
        "memory_mb": int(config.get("memory_mb", DEFAULT_MEMORY_MB)),
        "output_bytes": int(config.get("output_limit_bytes", DEFAULT_OUTPUT_BYTES)),
        "budget_s": float(config.get("budget_s", DEFAULT_BUDGET_S)),
    }
    ranges = {"time_limit_s": (0.05, 60), "memory_mb": (64, 8192), "output_bytes": (1, 64 << 20)}
    ranges["budget_s"] = (1, 3600)
    for name, (low, high) in ranges.items():
        if not low <= limits[name] <= high:
            raise SpecError(f"{name} must be between {low} and {high}")
    return limits


# ---------------------------------------------------------------------------- extraction


def extract_code(completion: str, language: Language) -> str | None:
    """The last fenced block tagged for `language` (else the last untagged one), after any </think>."""
    text = completion.rsplit(_THINK_END, 1)[-1]
    tagged: str | None = None
    untagged: str | None = None
    for match in _FENCE.finditer(text):
        tag = match.group(1).lower()
        if tag in language.fence_tags:
            tagged = match.group(2)
        elif not tag:
            untagged = match.group(2)
    return tagged if tagged is not None else untagged


# ---------------------------------------------------------------------------- comparison


def same_output(expected: str, actual: str, mode: str, float_tol: float) -> bool:
    if mode == "exact":
        return expected == actual
    if mode == "tokens":
        want, got = expected.split(), actual.split()
        pairs = zip(want, got, strict=False)
        return len(want) == len(got) and all(_same_token(w, g, float_tol) for w, g in pairs)
    return _lines(expected) == _lines(actual)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _same_token(want: str, got: str, tol: float) -> bool:
    if want == got:
        return True
    if not any(c in want for c in ".eE"):
        return False
    try:
        w, g = float(want), float(got)
    except ValueError:
        return False
    return math.isfinite(w) and math.isfinite(g) and math.isclose(w, g, rel_tol=tol, abs_tol=tol)


def judge(cfg: CodeConfig, test: dict[str, Any], frame: dict[str, Any] | None) -> str:
    """One test's outcome: 'passed' or the aggregate category of its failure ('memory' where the
    kernel killed one of its processes for the sandbox's memory cap)."""
    outcome = _judge(cfg, test, frame)
    return "memory" if outcome != "passed" and frame is not None and frame.get("oom") else outcome


def _judge(cfg: CodeConfig, test: dict[str, Any], frame: dict[str, Any] | None) -> str:
    if frame is None:
        return "not_run"
    if frame.get("status") != "ok":
        return str(frame.get("status"))
    if cfg.style == "stdio":
        if frame.get("signal") is not None or frame.get("exit") != 0:
            return "runtime_error"
        expected = str(test.get("stdout", ""))
        ok = same_output(expected, str(frame.get("stdout", "")), cfg.compare, cfg.float_tol)
        return "passed" if ok else "wrong_answer"
    try:
        actual = values.loads(str(frame.get("value", "")))
    except values.ValueFormatError:
        return "no_result"
    expected = values.decode(test.get("expected"))
    return "passed" if values.same(expected, actual, cfg.float_tol) else "wrong_answer"


# ---------------------------------------------------------------------------- verify


def verify_code(spec: VerifierSpec, answer: str) -> Verdict:
    try:
        cfg = CodeConfig.parse(spec.config)
    except (SpecError, TypeError, ValueError) as exc:  # ValueFormatError is a ValueError
        return _zero(f"bad code spec: {exc}")
    code = extract_code(answer, cfg.language)
    if code is None:
        return _zero(f"no ```{cfg.language.name} code block in the answer")
    source = (cfg.prelude + "\n" + code) if cfg.prelude else code
    if len(source) > MAX_SOURCE_CHARS:
        return _zero(f"source longer than {MAX_SOURCE_CHARS} characters")
    run = _run(cfg, source)
    verdict = _verdict(cfg, run)
    stall = None if verdict.passed else stall_reason(cfg, run)
    if stall is not None:
        raise HostStalledError(stall, verdict)
    return verdict


@dataclass(frozen=True)
class _Frames:
    """One sandbox run's frames: per test index, the compile step's, the closing `done` frame."""

    tests: dict[int, dict[str, Any]]
    compiled: dict[str, Any] | None
    done: dict[str, Any] | None
    oom_kills: int


def _verdict(cfg: CodeConfig, run: _Frames) -> Verdict:
    compiled = run.compiled
    if compiled is not None and (compiled.get("status") != "ok" or compiled.get("exit") != 0):
        return _zero("compilation failed", {"tests": len(cfg.tests), "passed": 0})
    outcomes = [judge(cfg, test, run.tests.get(i)) for i, test in enumerate(cfg.tests)]
    if run.done is None and run.oom_kills:  # the cap killed the runner itself: the rest never ran
        outcomes = ["memory" if o == "not_run" else o for o in outcomes]
    counts = Counter(outcomes)
    passed = counts.pop("passed", 0)
    score = passed / len(cfg.tests)
    details = {"tests": len(cfg.tests), "passed": passed, "failures": dict(sorted(counts.items()))}
    reason = "" if passed == len(cfg.tests) else f"{passed} of {len(cfg.tests)} tests passed"
    if counts.get("memory"):
        reason += f"; memory limit: {cfg.sandbox_memory_mb} MiB for the sandbox's processes together"
    return Verdict(score=score, passed=passed == len(cfg.tests), reason=reason, details=details)


def stall_reason(cfg: CodeConfig, run: _Frames) -> str | None:
    """Why the failures may be the host's doing rather than the program's, or None. A sandbox
    that misses its overall deadline gives no such reason: its program may have stopped the runner."""
    compiled = run.compiled
    if compiled is not None and _stalled(compiled, float(_compile_limits()["wall_s"])):
        return "host stalled: the compiler ran out of wall time while waiting for a CPU"
    stalled = [i for i, frame in sorted(run.tests.items()) if _stalled(frame, cfg.wall_s())]
    if stalled:
        count = len(stalled)
        return f"host stalled: {count} tests timed out while waiting for a CPU (first: test {stalled[0]})"
    done = run.done or {}
    if done.get("budget_spent") and _starved(done, "elapsed_s", cfg.budget_s):
        return "host stalled: the time budget ran out while the tests waited for a CPU"
    return None


def _stalled(frame: dict[str, Any], wall_limit: float) -> bool:
    return frame.get("status") == "timeout" and _starved(frame, "wall_s", wall_limit)


def _starved(frame: dict[str, Any], elapsed_key: str, limit: float) -> bool:
    """The program had less than STALL_SHARE of `limit` to itself."""
    own = float(frame.get(elapsed_key, 0.0)) - float(frame.get("delay_s", 0.0))
    return own < STALL_SHARE * limit


def _run(cfg: CodeConfig, source: str) -> _Frames:
    """Run every test in one sandbox."""
    job = build_job(cfg, source)
    # The runner stops starting tests after budget_s; the last one may run to its wall limit.
    budget = STARTUP_ALLOWANCE_S + cfg.budget_s + cfg.time_limit_s * 2 + 0.5
    if cfg.language.compile:
        budget += 30.0
    run = sandbox.run_job(job, budget)
    frames = run.frames
    if not any(f.get("started") for f in frames):
        # The runner never got going: a broken sandbox, not a bad program. Score nothing.
        raise SandboxUnavailableError(f"the sandbox runner did not start: {run.stderr.strip()[-400:]}")
    by_index = {int(f["i"]): f for f in frames if isinstance(f.get("i"), int)}
    compile_frame = next((f["compile"] for f in frames if isinstance(f.get("compile"), dict)), None)
    done = next((f for f in frames if f.get("done")), None)
    return _Frames(by_index, compile_frame, done, run.oom_kills)


def build_job(cfg: CodeConfig, source: str) -> dict[str, Any]:
    """The runner's job: the program and each test's *input* only, never its expected output."""
    inputs: list[dict[str, Any]] = []
    for test in cfg.tests:
        if cfg.style == "stdio":
            inputs.append({"stdin": str(test.get("stdin", ""))})
        else:
            inputs.append({"args": test.get("args", []), "kwargs": test.get("kwargs", {"$dict": []})})
    job: dict[str, Any] = {"mode": "tests", "style": cfg.style, "tests": inputs, "limits": cfg.limits()}
    job.update(entry_point=cfg.entry_point, budget_s=cfg.budget_s)
    if cfg.language.run:
        job.update(files={cfg.language.source_file: source}, run=list(cfg.language.run))
        job.update(compile=list(cfg.language.compile), compile_limits=_compile_limits())
        if memcap.mode() == memcap.CGROUP:  # the cgroup holds the compiler too: room for it
            total = max(cfg.sandbox_memory_mb, int(_compile_limits()["memory_mb"]))
            job["limits"] = {**job["limits"], "sandbox_memory_mb": total}
    else:
        job["source"] = source
    return job


def _compile_limits() -> dict[str, Any]:
    # Compilers need more memory and a few processes (driver, compiler proper, assembler, linker).
    return {"cpu_s": 20.0, "wall_s": 30.0, "memory_mb": 2048, "output_bytes": 1 << 16, "nproc": 16}


def _zero(reason: str, details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(score=0.0, passed=False, reason=reason, details=details or {})


# ---------------------------------------------------------------------------- HumanEval


def spec_from_humaneval(record: dict[str, Any]) -> VerifierSpec:
    """A function-call spec from a HumanEval record (`task_id`, `prompt`, `canonical_solution`,
    `test`, `entry_point`).

    The record's `check(candidate)` is run once, in the sandbox, against the canonical solution
    with every call to `candidate` recorded: each call's arguments and the reference's return
    value become one test. A submission later passes a test when its function returns the same
    typed value for the same arguments, compared outside the sandbox.
    """
    try:
        entry = str(record["entry_point"])
        source = f"{record['prompt']}{record['canonical_solution']}\n{record['test']}\n"
    except (KeyError, TypeError) as exc:
        raise SpecError(f"not a HumanEval record: {exc}") from exc
    tests = _reference_tests(source, entry, str(record.get("task_id")))
    config = {"language": "python", "style": "call", "entry_point": entry, "prelude": record["prompt"]}
    config.update(tests=tests, task_id=record.get("task_id"))
    CodeConfig.parse(config)  # a recorded call outside the typed encoding fails here, not when judged
    return VerifierSpec(kind="code", gold=None, config=config)


def _reference_tests(source: str, entry: str, task: str) -> list[dict[str, Any]]:
    """Run `source` (a reference solution and its `check(candidate)`) once in the sandbox with
    every call to `entry` recorded; each call becomes one function-call test."""
    limits = {"cpu_s": 30.0, "wall_s": 60.0, "memory_mb": 1024, "output_bytes": 16 << 20, "nproc": 16}
    job: dict[str, Any] = {"mode": "tests", "style": "record", "source": source, "entry_point": entry}
    job.update(tests=[{}], limits=limits)
    frames, stderr = sandbox.run_once(job, 90.0)
    frame = next((f for f in frames if f.get("i") == 0), None)
    if frame is None or frame.get("status") != "ok" or frame.get("exit") != 0:
        raise SpecError(f"{task}: the reference solution did not pass its own tests {stderr[-300:]}")
    tests = [_humaneval_test(call) for call in _recorded_calls(frame)]
    if not tests:
        raise SpecError(f"{task}: the tests never call {entry}")
    return tests


def _recorded_calls(frame: dict[str, Any]) -> list[Any]:
    try:
        calls = json.loads(str(frame.get("value", "")))
    except ValueError as exc:
        raise SpecError("the reference run returned no readable calls") from exc
    if not isinstance(calls, list):
        raise SpecError("the reference run returned no readable calls")
    return calls


def _humaneval_test(call: Any) -> dict[str, Any]:
    args, kwargs, result = call
    test: dict[str, Any] = {"args": args, "expected": result}
    if kwargs != {"$dict": []}:
        test["kwargs"] = kwargs
    return test


# ---------------------------------------------------------------------------- MBPP


@dataclass(frozen=True)
class MbppTask:
    """An MBPP record's parts: the reference solution, the setup its tests need, the assert
    statements, and the function they call."""

    code: str
    setup: str
    asserts: list[str]
    entry_point: str


def mbpp_task(record: dict[str, Any]) -> MbppTask:
    """Read an MBPP record, original (`text`, `code`, `test_list`, `test_setup_code`) or sanitized
    (`prompt`, `code`, `test_list`, `test_imports`); raises SpecError naming the bad field. Needs no
    sandbox: the reference is only parsed here."""
    code, asserts = record.get("code"), record.get("test_list")
    if not isinstance(code, str) or not code.strip():
        raise SpecError("'code' (the reference solution) must be a non-empty string")
    if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) for a in asserts):
        raise SpecError("'test_list' must be a non-empty list of assert statements")
    setup = record.get("test_setup_code", "")
    imports = record.get("test_imports", [])
    if not isinstance(setup, str) or not isinstance(imports, list):
        raise SpecError("'test_setup_code' must be a string and 'test_imports' a list of strings")
    setup = "\n".join([*map(str, imports), setup]).strip()
    return MbppTask(code, setup, asserts, _mbpp_entry(code, asserts))


def _mbpp_entry(code: str, asserts: list[str]) -> str:
    """The top-level function of the reference that the asserts call first."""
    try:
        defined = {n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)}
    except SyntaxError as exc:
        raise SpecError(f"'code' is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    for index, text in enumerate(asserts):
        try:
            tree = ast.parse(text)
        except SyntaxError as exc:
            raise SpecError(f"test_list[{index}] is not valid Python: {exc.msg}") from exc
        if not all(isinstance(node, ast.Assert) for node in tree.body):
            raise SpecError(f"test_list[{index}] is not an assert statement")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    raise SpecError(f"no assert in test_list calls a function that 'code' defines ({sorted(defined)})")


def spec_from_mbpp(record: dict[str, Any]) -> VerifierSpec:
    """A function-call spec from an MBPP record, derived as HumanEval's are: the asserts run once in
    the sandbox against the reference solution, inside a `check(candidate)` where the function's
    name is bound to a recorder, so each call's arguments and the reference's return value become
    one test. The asserts themselves never run against a submission (a submission could defeat an
    `==` it takes part in); its return values are compared outside the sandbox."""
    task = mbpp_task(record)
    name = str(record.get("task_id", "mbpp"))
    check = f"def check(candidate):\n    {task.entry_point} = candidate\n"
    check += textwrap.indent("\n".join(task.asserts), "    ") + "\n"
    source = f"{task.setup}\n{task.code}\n\n{check}"
    tests = _reference_tests(source, task.entry_point, name)
    config: dict[str, Any] = {"language": "python", "style": "call", "entry_point": task.entry_point}
    config.update(prelude=task.setup, tests=tests, task_id=name)
    CodeConfig.parse(config)
    return VerifierSpec(kind="code", gold=None, config=config)
