"""Token holders: registration, token checks, scopes, bans."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from coordinator.db import utcnow
from coordinator.errors import Forbidden, NotFound, Unauthorized
from coordinator.jobs import repository as jobs_repository
from coordinator.workers import repository
from coordinator.workers.models import Worker
from shared.protocol import RegisterRequest, Scope, WorkerOut

TOKEN_PREFIX = "fw_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved once per request from the bearer token."""

    worker_id: uuid.UUID
    scope: Scope
    name: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create(session: Session, name: str, scope: Scope, request: RegisterRequest | None = None) -> tuple[Worker, str]:
    """Create a token holder; the plain token is returned once and only its hash is kept."""
    token = new_token()
    worker = Worker(id=uuid.uuid4(), name=name, scope=scope.value, token_hash=hash_token(token))
    if request is not None:
        worker.engine = request.engine.model_dump()
        worker.hardware = request.hardware.model_dump()
        worker.models = list(request.models)
    repository.add(session, worker)
    return worker, token


def authenticate(session: Session, token: str | None) -> Principal:
    if not token:
        raise Unauthorized("missing bearer token")
    worker = repository.by_token_hash(session, hash_token(token))
    if worker is None:
        raise Unauthorized("unknown or revoked token")
    if worker.banned:
        raise Forbidden("this token is banned", details={"worker_id": str(worker.id)})
    return Principal(worker_id=worker.id, scope=Scope(worker.scope), name=worker.name)


def require(principal: Principal, *scopes: Scope) -> None:
    # Operators may do anything a researcher may; volunteers only work.
    allowed = set(scopes) | ({Scope.operator} if Scope.researcher in scopes else set())
    if principal.scope not in allowed:
        raise Forbidden(
            f"this action needs the {' or '.join(s.value for s in scopes)} scope",
            details={"scope": principal.scope.value},
        )


def set_banned(session: Session, worker_id: uuid.UUID, banned: bool) -> Worker:
    worker = repository.get(session, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id}")
    worker.banned = banned
    return worker


def seen(session: Session, worker_id: uuid.UUID) -> None:
    repository.touch(session, worker_id, utcnow())


def list_workers(session: Session, limit: int = 100, offset: int = 0) -> Sequence[Worker]:
    return repository.list_all(session, limit, offset)


def to_out(session: Session, worker: Worker) -> WorkerOut:
    return WorkerOut(
        id=worker.id,
        name=worker.name,
        scope=Scope(worker.scope),
        banned=worker.banned,
        created_at=worker.created_at,
        last_seen_at=worker.last_seen_at,
        jobs_submitted=worker.jobs_submitted,
        jobs_accepted=worker.jobs_accepted,
        in_flight=jobs_repository.in_flight_any(session, worker.id),
    )
