"""Test environment: PostgreSQL and Redis when the environment names them, SQLite otherwise.

Set FLYWHEEL_TEST_DATABASE_URL (a PostgreSQL server URL; a fresh database is created per run)
and FLYWHEEL_TEST_REDIS_URL to run the suite against real services, as CI does.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("FLYWHEEL_TEST_REDIS_URL")


def _create_pg_database(server_url: str) -> tuple[str, str]:
    name = f"flywheel_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False), name


def _drop_pg_database(server_url: str, name: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test."""
    if PG_URL:
        url, name = _create_pg_database(PG_URL)
        yield url
        _drop_pg_database(PG_URL, name)
    else:
        yield f"sqlite:///{tmp_path / 'flywheel.db'}"


@pytest.fixture
def backend_name(database_url: str) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"
