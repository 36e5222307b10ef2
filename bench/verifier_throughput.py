"""Verifier throughput: math checks/s, code tests/s, and the sandbox's own cost, side by side.

Three measurements, all in one run on this machine:
1. Math checks/s on synthetic but realistic completions (1-15 KB of prose and LaTeX ending in one
   \\boxed{} answer, every value fresh so no cache flatters a path), with one verifying process
   per core, each with its own one-service pool. Numeric answers (GSM8K-style: the in-process
   exact path), symbolic answers (the in-process fast symbolic path, and the sandboxed
   math-verify service for what it leaves undecided), and a 70/30 mix.
2. Code tests/s for a trivial and a typical program (the typical one sorts and scans 2,000
   numbers per test), 20 tests per submission, through `verify` from one thread per core.
3. Sandbox overhead: the same runner and the same job, run inside bubblewrap and run directly
   (no namespaces, no uid change), for several test counts. A least-squares line t = a + b*n per
   mode gives the per-submission (a) and per-test (b) cost; the difference is the sandbox's.
   A naive harness that starts one interpreter per test is shown for scale.

The machine is shared, so besides wall-clock rates the benchmark reports CPU seconds per item
(every process involved, the sandboxes' included) and the capacity that implies with the cores to
ourselves (cores / CPU per item); overhead fits use the fastest of several interleaved repeats.

    python -m bench.verifier_throughput            # about a minute on 2 cores
    python -m bench.verifier_throughput --quick    # a smoke run, not a measurement
"""

from __future__ import annotations

import argparse
import marshal
import multiprocessing as mp
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(ROOT))

from shared.protocol import VerifierSpec  # noqa: E402
from verifier import sandbox  # noqa: E402
from verifier.api import verify  # noqa: E402
from verifier.code import CodeConfig, build_job  # noqa: E402

WORDS = ["so", "we", "have", "then", "therefore", "notice", "that", "each", "the", "total", "is", "and"]


def numeric_pair(rng: random.Random) -> tuple[str, str]:
    """A plain-number gold and answer (right about half the time), all values fresh."""
    n, p, q = rng.randint(1, 10**6), rng.randint(1, 999), rng.randint(2, 999)
    return rng.choice(
        [
            (str(n), str(n)),
            (str(n), str(n + 1)),
            (str(n * 1000), f"{n * 1000:,}"),
            (f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p * 3}}}{{{q * 3}}}"),
            (f"{p}.25", f"\\frac{{{4 * p + 1}}}{{4}}"),
            (f"-{n}", f"-{n}.0"),
        ]
    )


def symbolic_pair(rng: random.Random) -> tuple[str, str]:
    """A gold and answer that need more than the exact path (right about 70% of the time), all
    values fresh. The last four shapes are also common in MATH: a rationalized denominator,
    unions of rays, and a cube root, which only math-verify decides."""
    a, b, c = rng.randint(2, 400), rng.choice([2, 3, 5, 6, 7, 10, 11, 13]), rng.randint(2, 400)
    return rng.choice(
        [
            (f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"),
            (f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"),
            (f"\\frac{{{a}\\pi}}{{{c}}}", f"{a}\\pi/{c}"),
            (f"({a},{a + c}]", f"({a}, {a + c}]"),
            (f"\\{{{a},{b},{c}\\}}", f"\\{{{c},{a},{b}\\}}"),
            (f"y={a}x+{c}", f"{a}x+{c}"),
            (f"{a}\\sqrt{{{b}}}", f"{a + 1}\\sqrt{{{b}}}"),
            (f"\\frac{{1}}{{2^{{{a}}}}}", f"\\frac{{1}}{{2^{{{a + 1}}}}}"),
            (f"{a}\\sqrt{{{b}}}", f"{a * b**0.5:.9f}"),
            (f"\\frac{{\\sqrt{{{b}}}}}{{{c}}}", f"\\frac{{{a}\\sqrt{{{b}}}}}{{{a * c}}}"),
            (f"\\frac{{{c}\\sqrt{{{b}}}}}{{{b}}}", f"\\frac{{{c}}}{{\\sqrt{{{b}}}}}"),
            (f"(-\\infty,{a}]\\cup({a + c},\\infty)", f"({a + c},\\infty)\\cup(-\\infty,{a}]"),
            (f"(-\\infty,{a}]\\cup({a + c},\\infty)", f"(-\\infty,{a})\\cup({a + c},\\infty)"),
            (f"\\sqrt[3]{{{b}}}", f"{b}^{{1/3}}"),
        ]
    )


TRIVIAL = "a, b = map(int, input().split())\nprint(a + b)\n"
TYPICAL = (
    "import sys\n"
    "data = sys.stdin.read().split()\n"
    "n = int(data[0]); xs = sorted(map(int, data[1:n + 1]))\n"
    "best = run = 0\n"
    "for i in range(1, n):\n"
    "    run = run + 1 if xs[i] - xs[i - 1] <= 3 else 0\n"
    "    best = max(best, run)\n"
    "print(best, sum(xs) % 1000003)\n"
)


# ---------------------------------------------------------------------------- math


@dataclass(frozen=True)
class Rate:
    per_s: float  # wall-clock rate on this (shared) machine
    cpu_s: float  # CPU seconds per item, every process involved


def trace(rng: random.Random, answer: str, size: int) -> str:
    """A completion of about `size` characters of prose and LaTeX, ending in one boxed answer."""
    parts: list[str] = []
    total = 0
    while total < size:
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        step = f"{sentence} $${a} \\times {b} = {a * b}$$ and $\\frac{{{a}}}{{{b}}} + {a}^2$.\n"
        parts.append(step)
        total += len(step)
    return "".join(parts) + f"\nTherefore the answer is $\\boxed{{{answer}}}$."


def math_cases(rng: random.Random, count: int, symbolic_share: float) -> list[tuple[str, str]]:
    cases = []
    for _ in range(count):
        gold, answer = symbolic_pair(rng) if rng.random() < symbolic_share else numeric_pair(rng)
        cases.append((gold, trace(rng, answer, rng.randint(1_000, 15_000))))
    return cases


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by `root` and every live process below it (the services too)."""
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(stats[pid][1] for pid in frontier if pid in stats)
        frontier = {pid for pid, (parent, _) in stats.items() if parent in frontier}
    return total


def _math_worker(cases: list[tuple[str, str]], barrier: Any, out: Any) -> None:
    os.environ["FLYWHEEL_VERIFIER_WORKERS"] = "1"
    warm = ("\\sqrt[3]{16}", "\\boxed{2\\sqrt[3]{2}}")  # needs math-verify: starts the service now
    for gold, text in [*cases[:3], warm]:
        verify(VerifierSpec(kind="math", gold=gold), text)
    barrier.wait()
    cpu, start = tree_cpu_s(os.getpid()), time.perf_counter()
    passed = sum(verify(VerifierSpec(kind="math", gold=g), t).passed for g, t in cases)
    elapsed, cpu = time.perf_counter() - start, tree_cpu_s(os.getpid()) - cpu
    out.put((elapsed, cpu, len(cases), passed))


def math_rate(cases: list[tuple[str, str]], processes: int) -> Rate:
    """Checks per second with `processes` verifying processes (spawned, one pool each)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    shares = [cases[i::processes] for i in range(processes)]
    workers = [ctx.Process(target=_math_worker, args=(share, barrier, out)) for share in shares]
    for worker in workers:
        worker.start()
    results = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    count = sum(r[2] for r in results)
    return Rate(count / max(r[0] for r in results), sum(r[1] for r in results) / count)


# ---------------------------------------------------------------------------- code


def stdio_tests(rng: random.Random, kind: str, count: int) -> list[dict[str, str]]:
    tests = []
    for _ in range(count):
        if kind == "trivial":
            a, b = rng.randint(-1000, 1000), rng.randint(-1000, 1000)
            tests.append({"stdin": f"{a} {b}\n", "stdout": f"{a + b}\n"})
        else:
            xs = [rng.randint(0, 10**6) for _ in range(2_000)]
            tests.append({"stdin": f"{len(xs)}\n{' '.join(map(str, xs))}\n", "stdout": _typical(xs)})
    return tests


def _typical(xs: list[int]) -> str:
    ys, best, run = sorted(xs), 0, 0
    for i in range(1, len(ys)):
        run = run + 1 if ys[i] - ys[i - 1] <= 3 else 0
        best = max(best, run)
    return f"{best} {sum(ys) % 1000003}\n"


def code_rate(source: str, tests: list[dict[str, str]], submissions: int, threads: int) -> float:
    """Tests per second through `verify`, with `threads` submissions in flight at a time."""
    spec = VerifierSpec(kind="code", config={"style": "stdio", "tests": tests})
    answer = f"```python\n{source}```"

    def one(_: int) -> bool:
        return verify(spec, answer).passed

    one(0)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        assert all(pool.map(one, range(submissions)))
    return submissions * len(tests) / (time.perf_counter() - start)


def code_cpu(source: str, tests: list[dict[str, str]], submissions: int) -> float:
    """CPU seconds per test, every process of the sandbox included (same job as `verify` runs)."""
    job = build_job(CodeConfig.parse({"style": "stdio", "tests": tests}), source)
    settle()
    return sum(sandboxed(job)[1] for _ in range(submissions)) / (submissions * len(tests))


def children_cpu_s() -> float:
    """CPU seconds of every finished (reaped) descendant: sandboxes are reaped when they end."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------- overhead


def runner_job(source: str, tests: list[dict[str, str]]) -> dict[str, Any]:
    inputs = [{"stdin": t["stdin"]} for t in tests]
    limits = {"cpu_s": 2.0, "wall_s": 4.5, "memory_mb": 512, "output_bytes": 1 << 20, "nproc": 16}
    return {"mode": "tests", "style": "stdio", "source": source, "tests": inputs, "limits": limits}


def sandboxed(job: dict[str, Any]) -> tuple[float, float]:
    """Wall and CPU time of one sandboxed run: bwrap and the namespace helper are reaped here;
    the runner's tree is reported by the runner itself (bwrap does not pass its usage on)."""
    cpu, start = children_cpu_s(), time.perf_counter()
    frames, _ = sandbox.run_once(job, 60.0)
    elapsed = time.perf_counter() - start
    settle()  # run_once leaves the exiting sandbox to a background reaper; count its CPU too
    cpu = children_cpu_s() - cpu
    assert frames and frames[-1].get("done"), frames
    return elapsed, cpu + float(frames[-1]["cpu_s"])


def settle(within_s: float = 10.0) -> None:
    """Wait until no bwrap child of ours is left (the reaper has reaped every sandbox)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and child_pids():
        time.sleep(0.002)


def child_pids(command: str = "bwrap") -> list[int]:
    """Our child processes running `command` (multiprocessing's resource tracker is not one)."""
    me = os.getpid()
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    head, tail = handle.read().rsplit(")", 1)
            except OSError:
                continue
            if int(tail.split()[1]) == me and head.split("(", 1)[1] == command:
                children.append(int(name))
    return children


def unsandboxed(job: dict[str, Any]) -> tuple[float, float]:
    """The same runner and job with no bubblewrap: no namespaces, no uid change, own scratch dir."""
    with tempfile.TemporaryDirectory() as scratch:
        full = {**job, "nonce": uuid.uuid4().hex, "pidns": False, "scratch": scratch}
        full["import_root"] = str(ROOT)
        argv = [sandbox.layout().python, "-I", "-B", "-S", str(ROOT / "verifier" / "sandbox_runner.py")]
        data = marshal.dumps(full, 4)
        message = len(data).to_bytes(4, "little") + data
        cpu, start = children_cpu_s(), time.perf_counter()
        done = subprocess.run(argv, input=message, capture_output=True, check=True)
        elapsed, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    assert b'"done":true' in done.stdout.splitlines()[-1], done.stderr
    return elapsed, cpu


def naive(source: str, tests: list[dict[str, str]]) -> tuple[float, float]:
    """What a harness without a runner does: one fresh interpreter per test, no sandbox."""
    cpu, start = children_cpu_s(), time.perf_counter()
    for test in tests:
        argv = [sandbox.layout().python, "-I", "-S", "-c", source]
        subprocess.run(argv, input=test["stdin"], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, children_cpu_s() - cpu


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares a, b of t = a + b*n."""
    ns, ts = [p[0] for p in points], [p[1] for p in points]
    n_mean, t_mean = statistics.fmean(ns), statistics.fmean(ts)
    slope = sum((n - n_mean) * (t - t_mean) for n, t in points) / sum((n - n_mean) ** 2 for n in ns)
    return t_mean - slope * n_mean, slope


Fits = dict[str, dict[str, tuple[float, float]]]


def _modes(job: dict[str, Any], tests: list[dict[str, str]]) -> dict[str, Callable[[], tuple[float, float]]]:
    return {
        "sandboxed": lambda: sandboxed(job),
        "unsandboxed": lambda: unsandboxed(job),
        "naive": lambda: naive(TRIVIAL, tests),
    }


def overhead(rng: random.Random, counts: list[int], repeats: int) -> Fits:
    """Per mode, least-squares (a, b) of wall time and of CPU time against the number of tests.

    Wall time is the minimum over the repeats (the run least disturbed by other work on the
    machine); CPU time is the median.
    """
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for n in counts:
        tests = stdio_tests(rng, "trivial", n)
        modes = _modes(runner_job(TRIVIAL, tests), tests)
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits every mode alike
            for name, run in modes.items():
                runs.setdefault((name, n), []).append(run())
    fits: Fits = {}
    for name in ("sandboxed", "unsandboxed", "naive"):
        walls = [(n, min(w for w, _ in runs[(name, n)])) for n in counts]
        cpus = [(n, statistics.median(c for _, c in runs[(name, n)])) for n in counts]
        fits[name] = {"wall": fit(walls), "cpu": fit(cpus)}
    return fits


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, not a measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cores = os.cpu_count() or 1
    scale = 0.1 if args.quick else 1.0
    print(f"cores={cores} python={sys.version.split()[0]} sandbox: {sandbox.describe()}\n")

    print("== math checks/s (1-15 KB completions, one verifying process per core)")
    print("   rate = measured on the shared machine; cpu = CPU per check, all processes included;")
    print(f"   capacity = {cores} cores / cpu, the rate with the cores to ourselves")
    mixes = (("numeric (GSM8K-style)", 0.0, 8000), ("symbolic", 1.0, 3000), ("70/30 mix", 0.3, 6000))
    for label, share, count in mixes:
        cases = math_cases(rng, max(20, int(count * scale)), share)
        one, both = math_rate(cases, 1), math_rate(cases, cores)
        print(
            f"  {label:22} 1 process {one.per_s:8.0f}/s   {cores} processes {both.per_s:8.0f}/s"
            f"   cpu {both.cpu_s * 1000:7.3f} ms   capacity {cores / both.cpu_s:8.0f}/s"
        )

    print("\n== code tests/s (one sandbox per submission, a fresh process per test, 20 tests each)")
    for kind, source in (("trivial", TRIVIAL), ("typical", TYPICAL)):
        tests = stdio_tests(rng, kind, 20)
        subs = max(4, int(40 * scale))
        single, parallel = code_rate(source, tests, subs, 1), code_rate(source, tests, subs, cores)
        cpu = code_cpu(source, tests, max(3, subs // 4))
        print(
            f"  {kind:8} 1 thread {single:6.0f}/s   {cores} threads {parallel:6.0f}/s"
            f"   cpu {cpu * 1000:6.2f} ms/test   capacity {cores / cpu:6.0f}/s"
        )

    print("\n== sandbox overhead: same runner, same job; least squares t = a + b*n over n tests")
    print("   wall: fastest of the repeats; cpu: median, the sandbox's processes included")
    counts = [1, 5, 20] if args.quick else [1, 5, 10, 20, 40]
    fits = overhead(rng, counts, 3 if args.quick else 15)
    for name, fit_ in fits.items():
        (wa, wb), (ca, cb) = fit_["wall"], fit_["cpu"]
        print(
            f"  {name:12} wall: a = {wa * 1000:6.2f} ms  b = {wb * 1000:5.2f} ms"
            f"   cpu: a = {ca * 1000:6.2f} ms  b = {cb * 1000:5.2f} ms"
        )
    for kind in ("wall", "cpu"):
        (sa, sb), (ua, ub) = fits["sandboxed"][kind], fits["unsandboxed"][kind]
        per_sub, per_test = (sa - ua) * 1000, (sb - ub) * 1000
        print(f"  sandbox overhead ({kind}): {per_sub:.2f} ms per submission + {per_test:.2f} ms per test")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
