"""Test-time compute on the bundled tiny model: what each strategy buys in accuracy, at what token cost.

    python -m bench.ttc                      # 500 held-out problems, seed 0 (about 7 minutes, 2 cores)
    python -m bench.ttc --problems 200 --seed 1
    python -m bench.ttc --quick              # smoke run: 16 problems, three configurations

Every configuration is a campaign over the same held-out problems (the first N of the arithmetic
`test` split, seed 0: the set `bench/flywheel.py` evaluates on), run by real `flywheel worker run`
daemons (CPU, float32) leasing jobs over HTTP from a real coordinator process, which verifies every
trace and aggregates each campaign's samples (`GET /v1/campaigns/{id}/strategies`): pass@1 (mean
over samples), majority vote, shortest-of-n and pass@n (any sample right: an oracle, not a strategy).
For campaigns of n > 1 samples the bench then exports the verified samples and adds the two
strategies evaluation jobs compute with a model (coordinator/pipeline/ops/ttc.py, the same code):
fuzzy majority over all-MiniLM-L6-v2 embeddings of the final answers (threshold 0.9) and
selection by the tiny model's own likelihood. Cost is completion tokens generated per problem, all
samples counted (the likelihood scorer's prefill is not generation and is left out).

The tiny model has no `<think>` section: it writes column-by-column work, then `\\boxed{answer}`.
Budget forcing treats that work as the thinking span, the way docs/worker.md ("Budget forcing")
suggests for this model: `think_end = "\\boxed{"` with a maximum cuts the work short and forces
the answer to start; `think_end = "\\"` with a minimum turns an early answer into "Wait" and more
work. A plain `max_tokens` cap, which truncates instead, is the baseline cost lever beside them.

`--seed` is the campaigns' seed. Job seeds also depend on the problems' row ids, which each run's
fresh database draws anew, so sampled numbers vary between runs by about their standard error;
greedy ones are deterministic.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.flywheel import ROOT, TINY, Cluster, log
from shared.protocol import (
    BudgetForcing,
    CampaignCreate,
    CampaignOut,
    ModelRef,
    SamplingParams,
    StrategyReport,
)

MAX_TOKENS = 192  # as bench/flywheel.py evaluates; greedy completions here are at most 89 tokens
BOXED = "\\boxed{"
STRATEGIES: tuple[str, ...] = ("pass@1", "majority", "shortest", "pass@n")
MODEL_STRATEGIES: tuple[str, ...] = ("fuzzy_majority", "likelihood")
CAMPAIGN_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Config:
    """One campaign: n samples per problem under one sampling and budget."""

    name: str
    samples: int = 1
    temperature: float = 0.0
    max_tokens: int = MAX_TOKENS
    budget: BudgetForcing | None = None
    quick: bool = False  # also in the --quick smoke run

    def campaign(self, label: str, problem_set_id: str, seed: int) -> CampaignCreate:
        return CampaignCreate.model_validate(
            {
                "name": label,
                "problem_set_id": problem_set_id,
                "model": ModelRef(name=TINY),
                "sampling": SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens),
                "samples_per_problem": self.samples,
                "seed": seed,
                "budget": self.budget,
            }
        )


def configurations(temperature: float) -> list[Config]:
    t = f"T={temperature:g}"
    return [
        Config("greedy", quick=True),
        Config(f"sampled {t}", temperature=temperature),
        Config(f"sampled {t}, n=4", samples=4, temperature=temperature, quick=True),
        Config(f"sampled {t}, n=8", samples=8, temperature=temperature),
        Config("greedy, max_tokens 32 (truncates)", max_tokens=32),
        Config("greedy, max_tokens 48 (truncates)", max_tokens=48),
        Config("greedy, budget: thinking ≤ 16, then \\boxed{ forced", budget=_cap(16)),
        Config("greedy, budget: thinking ≤ 32, then \\boxed{ forced", budget=_cap(32), quick=True),
        Config(
            "greedy, budget: thinking ≥ 48, early \\ → Wait (once)",
            budget=BudgetForcing(think_end="\\", min_thinking_tokens=48, max_waits=1),
        ),
        Config(
            f"sampled {t}, n=8, budget: thinking ≤ 32", samples=8, temperature=temperature, budget=_cap(32)
        ),
    ]


def quick_configurations(temperature: float) -> list[Config]:
    return [c for c in configurations(temperature) if c.quick]


def _cap(tokens: int) -> BudgetForcing:
    return BudgetForcing(think_end=BOXED, max_thinking_tokens=tokens)


@dataclass(frozen=True)
class Row:
    config: str
    strategy: str
    accuracy: float
    tokens_per_problem: float
    problems: int
    wall_s: float


def rows_for(config: Config, reports: Sequence[StrategyReport], wall_s: float) -> list[Row]:
    """The table's rows for one campaign: with one sample per problem every strategy picks that
    sample, so only pass@1 is shown; with n, all four."""
    by_name: dict[str, StrategyReport] = {r.strategy: r for r in reports}
    missing = [s for s in STRATEGIES if s not in by_name]
    if missing:
        raise RuntimeError(f"{config.name}: the coordinator reported no {', '.join(missing)}")
    names = STRATEGIES if config.samples > 1 else ("pass@1",)
    return [
        Row(
            config=config.name,
            strategy=name if config.samples > 1 else "single sample",
            accuracy=by_name[name].accuracy,
            tokens_per_problem=by_name[name].tokens_per_problem,
            problems=by_name[name].problems,
            wall_s=wall_s,
        )
        for name in names
    ]


def table(rows: Sequence[Row]) -> str:
    """Markdown: one line per (configuration, strategy); a configuration's wall time on its first line."""
    lines = [
        "| configuration | strategy | accuracy | tokens / problem | wall |",
        "|---|---|---:|---:|---:|",
    ]
    previous = ""
    for row in rows:
        first = row.config != previous
        previous = row.config
        config = row.config if first else ""
        wall = f"{row.wall_s:.0f} s" if first else ""
        strategy = f"{row.strategy} (oracle)" if row.strategy == "pass@n" else row.strategy
        lines.append(
            f"| {config} | {strategy} | {row.accuracy:.3f} | {row.tokens_per_problem:.1f} | {wall} |"
        )
    return "\n".join(lines)


def standard_error(accuracy: float, problems: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(problems, 1))


# --------------------------------------------------------------------------- running campaigns


class TTCCluster(Cluster):
    """The flywheel bench's coordinator and workers, with the workers' state (pause, daily count)
    kept in the run's folder, so a person's own worker state on this machine cannot pause them."""

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, "XDG_STATE_HOME": str(self.work / "state")}


@dataclass
class Settings:
    work: Path
    problems: int = 500
    seed: int = 0
    temperature: float = 1.0
    workers: int = 2
    batch: int = 64
    quick: bool = False


def run_campaign(cluster: Cluster, config: Config, problem_set_id: str, seed: int, label: str) -> list[Row]:
    started = time.monotonic()
    body = config.campaign(f"ttc-{label}", problem_set_id, seed).model_dump(mode="json")
    campaign = CampaignOut.model_validate(cluster.call("POST", "/campaigns", body))
    reported = 0.0
    while campaign.status != "done":
        if time.monotonic() - started > CAMPAIGN_TIMEOUT_S:
            raise RuntimeError(f"{config.name}: not done after {CAMPAIGN_TIMEOUT_S:.0f} s")
        if cluster.workers and all(w.poll() is not None for w in cluster.workers):
            raise RuntimeError("every worker exited; see workers.log in the run's folder")
        if time.monotonic() - reported > 15:
            p = campaign.progress
            log(f"  {config.name}: {p.accepted + p.rejected}/{p.jobs} verified, {p.leased} leased")
            reported = time.monotonic()
        time.sleep(0.5)
        campaign = CampaignOut.model_validate(cluster.call("GET", f"/campaigns/{campaign.id}"))
    wall_s = time.monotonic() - started
    reports = [
        StrategyReport.model_validate(r) for r in cluster.call("GET", f"/campaigns/{campaign.id}/strategies")
    ]
    rows = rows_for(config, reports, wall_s)
    if config.samples > 1:
        rows += model_rows(config, model_reports(cluster, str(campaign.id)), wall_s)
    log(f"{config.name}: " + ", ".join(f"{r.strategy} {r.accuracy:.3f}" for r in rows) + f" ({wall_s:.0f} s)")
    return rows


def model_reports(cluster: Cluster, campaign_id: str) -> list[StrategyReport]:
    """Fuzzy majority and likelihood over the campaign's verified samples, as an evaluation job
    computes them."""
    from coordinator.pipeline.ops import selection, ttc
    from ml import embeddings
    from shared.assets import ModelSource, resolve_model
    from shared.pipeline_types import FuzzyMajority, LikelihoodSelect

    headers = {"Authorization": f"Bearer {cluster.token}"}
    url = f"{cluster.url}/v1/datasets/{campaign_id}/export?status=accepted&status=rejected"
    body = httpx.get(url, headers=headers, timeout=300)
    body.raise_for_status()
    groups = ttc.samples_of([json.loads(line) for line in body.text.splitlines() if line.strip()])
    fuzzy, _ = ttc.fuzzy_majority(groups, FuzzyMajority(device="cpu"), embeddings.embed)
    scorer = selection.scorer_for(ModelSource(resolve_model(TINY)), "cpu")
    likely, _ = ttc.likelihood(groups, LikelihoodSelect(device="cpu"), scorer)
    return [fuzzy, likely]


def model_rows(config: Config, reports: Sequence[StrategyReport], wall_s: float) -> list[Row]:
    return [
        Row(config.name, r.strategy, r.accuracy, r.tokens_per_problem, r.problems, wall_s) for r in reports
    ]


def wait_for_workers(cluster: Cluster, count: int, timeout_s: float = 180.0) -> None:
    """Until every daemon has loaded the model, so no configuration's wall time includes a start."""
    logfile = cluster.work / "workers.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(w.poll() is not None for w in cluster.workers):
            raise RuntimeError(f"every worker exited; see {logfile}")
        text = logfile.read_text(errors="replace") if logfile.exists() else ""
        if text.count(f"loaded {TINY} on") >= count:
            return
        time.sleep(0.5)
    log(f"the workers did not report a loaded model within {timeout_s:.0f} s; going on")


def warm_up(cluster: Cluster, settings: Settings) -> None:
    """One small campaign on `train` problems, left out of the table: the first batches of each
    worker and the coordinator's first re-scoring (it loads the model) would slow the first row."""
    body = {"name": "ttc-warm-up", "source": "arithmetic", "split": "train", "seed": 0, "limit": 8}
    problem_set_id: str = cluster.call("POST", "/problem-sets", body)["id"]
    config = Config("warm-up", samples=max(1, 2 * settings.batch * settings.workers // 8), temperature=1.0)
    run_campaign(cluster, config, problem_set_id, settings.seed, "warm-up")


def run(settings: Settings) -> list[Row]:
    configs = (quick_configurations if settings.quick else configurations)(settings.temperature)
    cluster = TTCCluster(settings.work)
    cluster.start()
    try:
        body = {
            "name": "ttc-heldout",
            "source": "arithmetic",
            "split": "test",
            "seed": 0,
            "limit": settings.problems,
        }
        problem_set_id: str = cluster.call("POST", "/problem-sets", body)["id"]
        cluster.start_workers(TINY, settings.workers, settings.batch)
        wait_for_workers(cluster, settings.workers)
        warm_up(cluster, settings)
        rows: list[Row] = []
        for index, config in enumerate(configs):
            rows += run_campaign(cluster, config, problem_set_id, settings.seed, str(index))
        return rows
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- command line


def parse(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=None, help="held-out problems (500; --quick: 16)")
    parser.add_argument("--seed", type=int, default=0, help="the campaigns' seed")
    parser.add_argument("--temperature", type=float, default=1.0, help="of the sampled configurations")
    parser.add_argument("--workers", type=int, default=2, help="worker daemons (one CPU thread each)")
    parser.add_argument("--batch", type=int, default=64, help="each worker's batch size")
    parser.add_argument("--work", type=Path, default=None, help="the run's folder (emptied first)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few problems, three configurations")
    args = parser.parse_args(argv)
    problems = args.problems if args.problems is not None else (16 if args.quick else 500)
    if problems < 1:
        parser.error("--problems must be at least 1")
    work = args.work or ROOT / ".flywheel" / "bench" / ("ttc-quick" if args.quick else "ttc")
    return Settings(work, problems, args.seed, args.temperature, args.workers, args.batch, args.quick)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    settings = parse(args)
    if settings.work.exists():
        shutil.rmtree(settings.work)  # a fresh database: every number comes from this run
    settings.work.mkdir(parents=True)
    started = time.monotonic()
    rows = run(settings)
    wall_s = time.monotonic() - started
    result = {
        "settings": {k: str(v) for k, v in asdict(settings).items()},
        "rows": [asdict(r) for r in rows],
        "wall_s": wall_s,
        "command": " ".join(["python -m bench.ttc", *args]),
    }
    (settings.work / "results.json").write_text(json.dumps(result, indent=1))
    se = standard_error(0.5, settings.problems)
    print(
        f"Test-time compute on {TINY}: {settings.problems} held-out problems (arithmetic test split), "
        f"seed {settings.seed}, {settings.workers} CPU workers; wall time {wall_s:.0f} s"
    )
    print(table(rows))
    print(f"standard error of one accuracy: at most {se:.3f}; results in {settings.work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
