"""Migration 0004 creates the pipeline tables, and its downgrade removes exactly them."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from coordinator.config import Settings
from coordinator.db import alembic_config, migrate

PIPELINE_TABLES = {
    "pipeline_jobs",
    "pipeline_artifacts",
    "pipeline_outputs",
    "policy_versions",
    "rollout_groups",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_and_downgrade(database_url: str) -> None:
    migrate(Settings(database_url=database_url))
    assert _tables(database_url) >= PIPELINE_TABLES
    command.downgrade(alembic_config(database_url), "0003")
    remaining = _tables(database_url)
    assert not PIPELINE_TABLES & remaining and {"jobs", "traces", "campaigns"} <= remaining
    command.upgrade(alembic_config(database_url), "head")
    assert _tables(database_url) >= PIPELINE_TABLES
