"""Per-worker evidence (docs/trust.md, "Evidence over a worker's lifetime"): calibration and the
simulation of many workers, the `calibrate` and `workers` modes of `python -m bench.trust`.

    python -m bench.trust calibrate honest.jsonl.gz --dtype float32 [--url URL --token OPERATOR]
    python -m bench.trust workers --claim bfloat16 --calibrate 128 --honest-traces 128 --per-attack 48

`calibrate` validates honest traces (`generate` makes them) on this machine's device and dtype and
sums their evidence cells per (model, worker dtype, validator dtype); with --url it stores them in
a coordinator (PUT /v1/trust/calibrations). `workers` generates on the CPU with the bundled model:
honest traces of the claimed dtype for a calibration, a second honest set, and each attack's
forgeries, validates them all with the coordinator's validator, then simulates workers that draw
their validated traces from those sets: N honest workers over a lifetime of validations, and per
attack cheating workers that forge every trace or one in ten. Each worker is quarantined when a
trace fails or when its CUSUMs (shared/evidence.py, the coordinator's own arithmetic) reach the
threshold the false-alarm bound sets.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import trust
from shared import evidence
from shared.protocol import JobSpec


@dataclass(frozen=True)
class Scored:
    """A validated trace as the simulation uses it: failed outright, or its positions and ratios."""

    passed: bool
    positions: int
    ratios: list[float]


def calibration_counts(
    checked: Sequence[trust.Checked], records: Sequence[trust.Record]
) -> dict[tuple[str, str], list[int]]:
    """(model, worker dtype) -> summed cells of the honest traces that passed."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * evidence.BINS)
    for c, r in zip(checked, records, strict=True):
        if c.passed and c.cells:
            total = counts[(r.spec["model"]["name"], r.dtype)]
            for i, n in enumerate(c.cells):
                total[i] += n
    return dict(counts)


def calibrate(args: argparse.Namespace) -> int:
    records = trust.load(args.files)
    checked = trust.check_records(records, args.device, args.dtype)
    traces: dict[tuple[str, str], int] = defaultdict(int)
    for c, r in zip(checked, records, strict=True):
        traces[(r.spec["model"]["name"], r.dtype)] += int(c.passed)
    bodies = [
        {"model": model, "worker_dtype": dtype, "validator_dtype": args.dtype, "counts": counts,
         "traces": traces[(model, dtype)]}
        for (model, dtype), counts in calibration_counts(checked, records).items()
    ]  # fmt: skip
    for body in bodies:
        print(json.dumps(body))
        if args.url:
            client = trust.Client(args.url, args.token)
            client.call("PUT", "/trust/calibrations", json=body)
            print(f"stored the calibration of {body['model']} ({body['worker_dtype']} worker, "
                  f"{args.dtype} validator) at {args.url}")  # fmt: skip
    return 0


# --------------------------------------------------------------------------- trace sets


def _records(
    jobs: Sequence[JobSpec], forged: Sequence[trust.Forged | None], claim: str, source: str
) -> list[trust.Record]:
    return [
        trust.Record(
            job.model_dump(mode="json"), f.tokens, f.logprobs, f.finish, f.text, claim, source, 0, 0.0
        )
        for job, f in zip(jobs, forged, strict=True)
        if f is not None
    ]


def _generate(engine: Any, jobs: Sequence[JobSpec], chunk: int = 32) -> list[trust.Forged]:
    return [
        f
        for start in range(0, len(jobs), chunk)
        for f in trust._generated(engine, jobs[start : start + chunk])
    ]


def _forgeries(
    models: trust.Models, attack: trust.Attack, count: int, claim: str, seed: int
) -> tuple[list[trust.Record], int]:
    """An attack's forgeries of `count` jobs that differ from the honest trace (tokens, or logprobs
    beyond float32 noise: within the claim's wider allowance they are still evidence), and how many
    came out as the honest trace (a cheater sends those too)."""
    rng, jobs = random.Random(seed), trust.honest_jobs(count, seed)
    honest = _generate(models.honest, jobs)
    forged: list[trust.Forged | None] = []
    for start in range(0, count, 32):
        forged += attack.forge(models, jobs[start : start + 32], honest[start : start + 32], rng)
    kept = [
        None if f is None or trust.indistinguishable(f, h, job, "float32") else f
        for job, f, h in zip(jobs, forged, honest, strict=True)
    ]
    return _records(jobs, kept, claim, "attack"), sum(f is None for f in kept)


def _scored(checked: Sequence[trust.Checked], ratios: Sequence[Sequence[float]]) -> list[Scored]:
    return [
        Scored(c.passed, c.positions, evidence.log_ratios(c.cells, ratios) if c.cells else [])
        for c in checked
    ]


# --------------------------------------------------------------------------- the simulation


@dataclass
class Fate:
    quarantined: bool
    by_evidence: bool
    tokens: int
    validations: int


@dataclass(frozen=True)
class Pool:
    """An attack's output: the forgeries that differ from the honest trace, and the share that did."""

    forged: Sequence[Scored]
    differs: float


def simulate(
    honest: Sequence[Scored], pool: Pool, share: float, h: float, limit: int, budget: int,
    rng: random.Random,
) -> Fate:  # fmt: skip
    """One worker: each validation is of a cheated job with probability `share` (a forgery, or the
    honest trace where the attack came out as it), else of an honest trace; it ends quarantined (a
    failed trace, or evidence at the threshold), or after `limit` validations or `budget` tokens."""
    stats = [0.0] * len(evidence.ALTERNATIVES)
    tokens = v = 0
    while v < limit and tokens < budget:
        v += 1
        cheated = pool.forged and rng.random() < share and rng.random() < pool.differs
        trace = rng.choice(pool.forged) if cheated else rng.choice(honest)
        tokens += trace.positions
        if not trace.passed:
            return Fate(True, False, tokens, v)
        stats = evidence.advance(stats, trace.ratios)
        if max(stats) >= h:
            return Fate(True, True, tokens, v)
    return Fate(False, False, tokens, v)


def _row(name: str, fates: Sequence[Fate], traces: str) -> str:
    quarantined = [f for f in fates if f.quarantined]
    tokens = [f.tokens for f in quarantined]
    median = f"{statistics.median(tokens):,.0f}" if tokens else "-"
    worst = f"{max(tokens):,}" if tokens else "-"
    counts = f"{len(quarantined)}/{len(fates)} | {sum(f.by_evidence for f in quarantined)}"
    return f"| {name} | {traces} | {counts} | {median} | {worst} |"


def _attack_rows(
    args: argparse.Namespace, models: trust.Models, attack: trust.Attack, honest: Sequence[Scored],
    ratios: Sequence[Sequence[float]], h: float, rng: random.Random,
) -> list[str]:  # fmt: skip
    records, same = _forgeries(models, attack, args.per_attack, args.claim, 13)
    forged = _scored(trust.check_records(records, "cpu", "float32"), ratios)
    if not forged:
        return [f"| {attack.name} | 0/{same} | | | | | | |"]
    passing = [max(f.ratios) for f in forged if f.passed and f.ratios]
    traces = f"{len(forged)}/{len(forged) + same} | {sum(not f.passed for f in forged)}/{len(forged)}"
    traces += f" | {statistics.fmean(passing):.2f}" if passing else " | -"
    pool = Pool(forged, len(forged) / (len(forged) + same))
    rows = []
    for share, label in ((1.0, "always"), (0.1, "10%")):
        fates = [simulate(honest, pool, share, h, 10**9, args.budget, rng) for _ in range(args.cheaters)]
        rows.append(_row(f"{attack.name}, {label}", fates, traces))
    return rows


def _honest_pool(models: trust.Models, engine: Any, args: argparse.Namespace) -> tuple[Any, list[Scored]]:
    """Calibrate on one set of honest traces, and score a second (held-out) set against it."""
    calibration_jobs = trust.honest_jobs(args.calibrate, seed=11)
    calibration = _records(calibration_jobs, _generate(engine, calibration_jobs), args.claim, "calibration")
    counts = calibration_counts(trust.check_records(calibration, "cpu", "float32"), calibration)
    honest_counts = next(iter(counts.values())) if counts else None
    ratios = evidence.cell_ratios(evidence.honest_distribution(honest_counts))
    print(f"calibrated on {len(calibration)} honest traces, {sum(honest_counts or [])} positions", flush=True)
    pool_jobs = trust.honest_jobs(args.honest_traces, seed=12)
    pool = _records(pool_jobs, _generate(engine, pool_jobs), args.claim, "honest")
    return ratios, _scored(trust.check_records(pool, "cpu", "float32"), ratios)


def run_workers(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    models = trust.Models()
    ratios, honest = _honest_pool(models, models.bf16 if args.claim == "bfloat16" else models.honest, args)
    h = evidence.threshold(args.false_alarm, args.lifetime)
    rng = random.Random(args.seed)
    nobody = Pool([], 0.0)
    fates = [
        simulate(honest, nobody, 0.0, h, args.honest_validations, 10**12, rng) for _ in range(args.workers)
    ]
    lines = _header(args, h, honest, fates)
    chosen = [a for a in trust.ATTACKS if not args.only or any(w in a.name for w in args.only)]
    for attack in [a for a in chosen if args.claim in a.claims]:
        lines += _attack_rows(args, models, attack, honest, ratios, h, rng)
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


def _header(args: argparse.Namespace, h: float, honest: Sequence[Scored], fates: Sequence[Fate]) -> list[str]:
    per_trace = statistics.fmean(t.positions for t in honest) if honest else 0.0
    drift = statistics.fmean(max(t.ratios) for t in honest if t.ratios) if honest else 0.0
    bound = evidence.false_alarm(h, args.honest_validations)
    return [
        f"claimed dtype {args.claim}, validator cpu float32; threshold h = {h:.2f} nats "
        f"(false alarm <= {args.false_alarm:g} per lifetime of {args.lifetime:,} validations)",
        f"honest: {sum(f.quarantined for f in fates)} of {len(fates)} workers quarantined over "
        f"{args.honest_validations:,} validations each ({args.honest_validations * per_trace:,.0f} tokens; "
        f"bound for that lifetime {bound:.2g}); {sum(not t.passed for t in honest)} of {len(honest)} "
        f"held-out honest traces failed alone; {drift:.2f} nats per honest trace",
        "",
        "| attack, forged | forgeries differing | of which caught alone | nats per passing forgery | "
        "cheaters quarantined | of which by evidence | tokens to quarantine (median) | (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]


def add_parsers(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="honest cell counts of trace files, printed and stored with --url")
    cal.add_argument("files", type=trust.Path, nargs="+")
    cal.add_argument("--device", default="cpu")
    cal.add_argument("--dtype", default="float32", help="the validator's dtype (the coordinator's)")
    cal.add_argument("--url", help="a coordinator to store the calibration in")
    cal.add_argument("--token", default="", help="an operator token for --url")
    wk = sub.add_parser("workers", help="simulated honest and cheating workers under the sequential evidence")
    wk.add_argument("--claim", default="bfloat16", help="the dtype every worker claims")
    wk.add_argument("--calibrate", type=int, default=128, help="honest traces of the calibration")
    wk.add_argument("--honest-traces", type=int, default=128, help="held-out honest traces workers draw")
    wk.add_argument("--per-attack", type=int, default=48, help="jobs each attack forges")
    wk.add_argument("--workers", type=int, default=1000, help="simulated honest workers")
    wk.add_argument("--honest-validations", type=int, default=1000, help="validations per honest worker")
    wk.add_argument("--cheaters", type=int, default=200, help="simulated cheaters per attack and share")
    wk.add_argument("--budget", type=int, default=100_000, help="validated tokens a cheater is followed for")
    wk.add_argument("--false-alarm", type=float, default=1e-6)
    wk.add_argument("--lifetime", type=int, default=100_000, help="validations per lifetime, for the bound")
    wk.add_argument("--only", nargs="*", help="attacks whose name contains one of these words")
    wk.add_argument("--threads", type=int, default=1)
    wk.add_argument("--seed", type=int, default=0)
