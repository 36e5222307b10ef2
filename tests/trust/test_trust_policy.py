"""The policy's numbers, and the migration against the models."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from coordinator.config import Settings
from coordinator.db import migrate
from coordinator.models import Base
from coordinator.trust.policy import VALIDATOR_NOISE, WORKER_NOISE, check_probability, drawn, tolerance


def test_new_workers_are_always_checked_then_about_one_in_trust() -> None:
    assert check_probability(0, 0.02) == check_probability(1, 0.02) == 1.0
    assert check_probability(4, 0.02) == 0.25
    assert check_probability(10_000, 0.02) == 0.02  # the operator's floor


def test_the_draw_is_fixed_per_trace_and_fair_across_traces() -> None:
    ids = [uuid.uuid5(uuid.NAMESPACE_URL, str(i)) for i in range(20_000)]
    first = [drawn(i, 0.1) for i in ids]
    assert first == [drawn(i, 0.1) for i in ids]
    assert 0.09 < sum(first) / len(ids) < 0.11  # 20k draws at 10%: six standard deviations either side
    assert all(drawn(i, 1.0) for i in ids[:100])


def test_tolerances_add_each_sides_noise() -> None:
    assert tolerance("float32", "float32") == pytest.approx(
        WORKER_NOISE["float32"] + VALIDATOR_NOISE["float32"]
    )
    assert tolerance("bfloat16", "float32") == pytest.approx(
        WORKER_NOISE["bfloat16"] + VALIDATOR_NOISE["float32"]
    )
    assert (
        tolerance("bfloat16", "bfloat16") > tolerance("bfloat16", "float32") > tolerance("float32", "float32")
    )
    assert tolerance("", "float32") == tolerance("int3", "float32") >= tolerance("bfloat16", "float32")


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    migrate(Settings(database_url=database_url, redis_url=None))
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    ours = [d for d in diff if any(name in str(d) for name in ("worker_trust", "validations", "traces"))]
    assert ours == []


def test_a_model_with_its_own_noise_table_gets_its_own_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    table = '{"acme/deep-model": {"bfloat16": 1.2, "float32": 0.001}}'
    monkeypatch.setenv("FLYWHEEL_VALIDATION_NOISE", table)
    noise = Settings().validation_noise["acme/deep-model"]
    assert tolerance("bfloat16", "float32", noise) == pytest.approx(1.201)
    assert tolerance("float32", "float32", noise) == pytest.approx(0.002)
    assert tolerance("", "float32", noise) == pytest.approx(1.201)  # unreported: the widest allowance
    assert tolerance("bfloat16", "float32") == WORKER_NOISE["bfloat16"] + VALIDATOR_NOISE["float32"]
    monkeypatch.setenv("FLYWHEEL_VALIDATION_NOISE", '{"m": {"bfloat16": -1}}')
    with pytest.raises(ValueError, match="greater than 0"):
        Settings()
