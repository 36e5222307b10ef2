"""One mechanism for work that must follow a commit (enqueueing a task): an action registered with
`after_commit` runs once the transaction committed, and sees what it committed; a rollback drops
it; a session no `transaction` owns refuses it rather than lose it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from coordinator.config import Settings
from coordinator.db import after_commit, make_engine, make_session_factory, migrate, transaction
from coordinator.workers.models import Worker


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    settings = Settings(database_url=database_url, redis_url=None)
    migrate(settings)
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


def _worker() -> Worker:
    return Worker(id=uuid.uuid4(), name="w", scope="volunteer", token_hash=uuid.uuid4().hex)


def test_an_action_runs_after_the_commit_and_sees_its_rows(sessions: sessionmaker[Session]) -> None:
    seen: list[object] = []
    worker = _worker()
    with transaction(sessions) as session:
        session.add(worker)
        after_commit(session, lambda: seen.append(_found(sessions, worker.id)))
        assert seen == []  # not while the transaction is open
    assert seen == [worker.id]


def test_a_rollback_drops_the_action(sessions: sessionmaker[Session]) -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), transaction(sessions) as session:
        session.add(_worker())
        after_commit(session, lambda: seen.append("ran"))
        raise RuntimeError("boom")
    assert seen == []


def test_a_session_no_transaction_owns_refuses_an_action(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(RuntimeError, match=r"coordinator\.db\.transaction"):
        after_commit(session, lambda: None)


def _found(sessions: sessionmaker[Session], worker_id: uuid.UUID) -> object:
    with transaction(sessions) as session:
        return session.scalar(select(Worker.id).where(Worker.id == worker_id))
