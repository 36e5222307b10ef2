"""bench/ttc.py: its table from strategy reports, and its --quick run against a real coordinator
with real worker daemons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.ttc import Config, Row, main, rows_for, table
from shared.assets import tiny_model_dir
from shared.protocol import StrategyReport


def reports(accuracy: dict[str, float], tokens: float, n: int) -> list[StrategyReport]:
    return [
        StrategyReport(
            strategy=name,
            problems=10,
            accuracy=acc,
            tokens_per_problem=tokens if name == "pass@1" else tokens * n,
        )
        for name, acc in accuracy.items()
    ]


ACCURACY = {"pass@1": 0.5, "majority": 0.6, "shortest": 0.4, "pass@n": 0.8}


def test_one_sample_shows_one_row_and_n_samples_show_every_strategy() -> None:
    single = rows_for(Config("greedy"), reports(ACCURACY, 40.0, 1), 3.0)
    assert [(r.strategy, r.accuracy, r.tokens_per_problem) for r in single] == [("single sample", 0.5, 40.0)]
    several = rows_for(Config("sampled, n=4", samples=4, temperature=1.0), reports(ACCURACY, 40.0, 4), 9.0)
    assert [r.strategy for r in several] == ["pass@1", "majority", "shortest", "pass@n"]
    assert [r.tokens_per_problem for r in several] == [40.0, 160.0, 160.0, 160.0]


def test_a_missing_strategy_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="shortest"):
        rows_for(
            Config("x", samples=2), reports({"pass@1": 0.5, "majority": 0.5, "pass@n": 0.5}, 1.0, 2), 1.0
        )


def test_table_names_each_configuration_and_its_wall_time_once() -> None:
    rows = [
        Row("greedy", "single sample", 0.625, 40.0, 10, 3.0),
        Row("n=4", "pass@1", 0.5, 40.0, 10, 9.0),
        Row("n=4", "pass@n", 0.75, 160.0, 10, 9.0),
    ]
    lines = table(rows).splitlines()
    assert lines[2] == "| greedy | single sample | 0.625 | 40.0 | 3 s |"
    assert lines[3] == "| n=4 | pass@1 | 0.500 | 40.0 | 9 s |"
    assert lines[4] == "|  | pass@n (oracle) | 0.750 | 160.0 |  |"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not (tiny_model_dir() / "config.json").exists(), reason="the tiny model is not built")
def test_quick_run_through_a_real_coordinator_and_workers(tmp_path: Path) -> None:
    work = tmp_path / "ttc"
    assert main(["--quick", "--problems", "12", "--work", str(work)]) == 0
    result = json.loads((work / "results.json").read_text())
    rows = {(r["config"], r["strategy"]): r for r in result["rows"]}
    greedy = rows["greedy", "single sample"]
    assert greedy["problems"] == 12 and 0.0 < greedy["accuracy"] <= 1.0
    sampled = {s: rows["sampled T=1, n=4", s] for s in ("pass@1", "majority", "shortest", "pass@n")}
    assert sampled["pass@1"]["accuracy"] <= sampled["pass@n"]["accuracy"]
    assert sampled["majority"]["accuracy"] <= sampled["pass@n"]["accuracy"]
    assert sampled["majority"]["tokens_per_problem"] == pytest.approx(
        4 * sampled["pass@1"]["tokens_per_problem"]
    )
    capped = rows["greedy, budget: thinking ≤ 32, then \\boxed{ forced", "single sample"]
    assert capped["tokens_per_problem"] <= greedy["tokens_per_problem"]
