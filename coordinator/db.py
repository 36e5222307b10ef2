"""Database engine, sessions and schema migrations.

SQLite (the embedded default) and PostgreSQL behave differently under concurrency. On SQLite every
write transaction (`transaction`) starts with BEGIN IMMEDIATE, so a read-then-write (leasing) holds
the single writer lock from its first statement and two leases can never pick the same job; a
deferred transaction that read first would instead fail with SQLITE_BUSY when it tried to write. On
PostgreSQL the job repository uses row locks with SKIP LOCKED instead.

Work that only reads uses `read_transaction`: a deferred BEGIN on SQLite, which in WAL mode takes no
lock a writer waits for, and a READ ONLY transaction on PostgreSQL. Both refuse writes, so a read
transaction can never turn into the lock upgrade above. Long reads (dataset exports) page in short
read transactions rather than holding one open while a client downloads.
"""

from __future__ import annotations

import array
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    JSON,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    String,
    TypeDecorator,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from coordinator.config import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on both backends (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class GUID(TypeDecorator[uuid.UUID]):
    """Native UUID on PostgreSQL, 32-char hex on SQLite."""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(PG_UUID(as_uuid=True))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: uuid.UUID | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return value if dialect.name == "postgresql" else value.hex

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        if value is None or isinstance(value, uuid.UUID):
            return value
        return uuid.UUID(value)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class _Packed(TypeDecorator[list[Any]]):
    """A list of numbers as one binary value in a fixed little-endian layout: a trace's token ids
    and logprobs, thousands per row, read and written whole (docs/scaling.md measures the bytes)."""

    impl = LargeBinary
    cache_ok = True
    code = "d"

    def process_bind_param(self, value: Sequence[Any] | None, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        packed = array.array(self.code, value)
        if sys.byteorder != "little":
            packed.byteswap()
        return packed.tobytes()

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> list[Any] | None:
        if value is None:
            return None
        packed = array.array(self.code)
        packed.frombytes(bytes(value))
        if sys.byteorder != "little":
            packed.byteswap()
        return packed.tolist()


class PackedInts(_Packed):
    """int32 values (token ids: every vocabulary fits), 4 bytes each."""

    cache_ok = True  # SQLAlchemy reads it from each class itself
    code = "i"


class PackedFloats(_Packed):
    """float64 values (logprobs, exactly as the worker sent them), 8 bytes each."""

    cache_ok = True
    code = "d"


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" event below issues BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# Execution option that marks a connection's next transaction as read-only (see `read_transaction`).
READ_ONLY = "flywheel_read_only"


def _sqlite_begin(conn: Connection) -> None:
    read_only = bool(conn.get_execution_options().get(READ_ONLY, False))
    info = conn.connection.info  # per DBAPI connection: the pragma is issued only when the mode changes
    if info.get(READ_ONLY, False) != read_only:
        # query_only makes a write in a read transaction an error, never a deferred lock upgrade.
        conn.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
        info[READ_ONLY] = read_only
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _ensure_sqlite_dir(settings: Settings) -> None:
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)


def _json_dumps(value: Any) -> str:
    """JSON for PostgreSQL parameters: orjson, several times faster than `json` on the token ids and
    logprobs every trace carries. What orjson refuses (integers past 64 bits, odd types) goes through
    `json` as before; NaN, which PostgreSQL refuses in JSON, becomes null."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def make_engine(settings: Settings) -> Engine:
    url = settings.database_url
    if settings.is_sqlite:
        _ensure_sqlite_dir(settings)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        json_serializer=_json_dumps,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error. Actions registered with
    `after_commit` run once the commit succeeded, in order; a rollback drops them."""
    with factory() as session:
        session.info[AFTER_COMMIT] = []
        with session.begin():
            yield session
        actions: list[Callable[[], None]] = session.info.pop(AFTER_COMMIT)
    for action in actions:
        action()


AFTER_COMMIT = "flywheel.after_commit"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` (enqueue a task, say) after this `transaction` commits, never before, so no
    task can look for a row that is not there yet; if the transaction rolls back it never runs."""
    actions = session.info.get(AFTER_COMMIT)
    if actions is None:  # a session whose commit nobody would report: the action would be lost
        raise RuntimeError("after_commit needs a session opened by coordinator.db.transaction")
    actions.append(action)


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of read-only work: a snapshot that blocks no writer and refuses to write (module doc).

    Committed at the end (a rollback would expire what was loaded). Keep it short: on SQLite an open
    reader holds back WAL checkpoints, on PostgreSQL it holds a pooled connection and old row versions.
    """
    with factory() as session, session.begin():
        session.connection(execution_options=_read_only_options(session))
        yield session


def _read_only_options(session: Session) -> dict[str, Any]:
    if session.get_bind().dialect.name == "postgresql":
        return {"postgresql_readonly": True}  # BEGIN READ ONLY; reset when the connection is pooled
    return {READ_ONLY: True}


def one_of(session: Session, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)`. On PostgreSQL `column = ANY(:array)` instead: one parameter whatever the
    count, so a hot statement's compiled form is reused as is rather than expanded per execution."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest migration (safe to run on every start)."""
    from alembic import command

    _ensure_sqlite_dir(settings)
    command.upgrade(alembic_config(settings.database_url), "head")


@contextmanager
def command_sessions(settings: Settings | None = None) -> Iterator[sessionmaker[Session]]:
    """Sessions for one command-line step: migrate first, release the engine after."""
    settings = settings or Settings()
    migrate(settings)
    engine = make_engine(settings)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def run_once(work: Callable[[Session], Any], settings: Settings | None = None) -> Any:
    """One command-line step: migrate, run `work` in a transaction, release the engine."""
    with command_sessions(settings) as factory, transaction(factory) as session:
        return work(session)
