"""Token holders: registration, token checks, scopes, bans."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from coordinator.config import Settings
from coordinator.db import utcnow
from coordinator.errors import Forbidden, NotFound, RateLimited, Unauthorized
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
    engine_dtype: str = ""  # the compute dtype the worker registered its engine with, if any


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create(
    session: Session, name: str, scope: Scope, request: RegisterRequest | None = None
) -> tuple[Worker, str]:
    """Create a token holder; the plain token is returned once and only its hash is kept."""
    token = new_token()
    worker = Worker(id=uuid.uuid4(), name=name, scope=scope.value, token_hash=hash_token(token))
    if request is not None:
        worker.engine = request.engine.model_dump()
        worker.hardware = request.hardware.model_dump()
        worker.models = list(request.models)
    repository.add(session, worker)
    return worker, token


def check_registration(settings: Settings, invite_code: str | None) -> None:
    """Refuse a self-registration the coordinator's registration mode does not allow."""
    mode = settings.registration
    if mode == "closed":
        raise Forbidden("registration is closed; ask an operator for a token")
    if mode == "invite" and not _valid_invite(invite_code, settings.registration_invite_codes):
        raise Forbidden("registration needs a valid invite code; ask an operator for one")


def _valid_invite(code: str | None, codes: Sequence[str]) -> bool:
    # Every code is compared in constant time, so timing tells nothing about any of them.
    given = (code or "").encode()
    matches = [hmac.compare_digest(given, known.encode()) for known in codes]
    return bool(code) and any(matches)


def principal_of(worker: Worker) -> Principal:
    dtype = str((worker.engine or {}).get("dtype") or "")
    return Principal(worker_id=worker.id, scope=Scope(worker.scope), name=worker.name, engine_dtype=dtype)


def remember(token: str, worker: Worker, ttl_s: float) -> None:
    """Remember a new token's holder: its first request then needs no lookup, and the rate limiter
    budgets it as a known worker rather than by its address."""
    if ttl_s > 0:
        _principals.put(hash_token(token), principal_of(worker), ttl_s)


def authenticate(session: Session, token: str | None) -> Principal:
    if not token:
        raise Unauthorized("missing bearer token")
    worker = repository.by_token_hash(session, hash_token(token))
    if worker is None:
        raise Unauthorized("unknown or revoked token")
    if worker.banned:
        raise Forbidden("this token is banned", details={"worker_id": str(worker.id)})
    return principal_of(worker)


class _Recent:
    """A small per-process memo with expiry, safe to share between the API's threads.

    It holds at most `capacity` entries and forgets everything when full: the hot set (workers active
    right now) refills it within one lease round, and no bookkeeping runs on the hot path.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._items: dict[object, tuple[float, object]] = {}
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: object) -> object | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: object, value: object, ttl_s: float) -> None:
        with self._lock:
            if len(self._items) >= self._capacity:
                self._items.clear()
            self._items[key] = (time.monotonic() + ttl_s, value)

    def drop(self, predicate: Callable[[object], bool]) -> None:
        with self._lock:
            for key in [k for k, (_, v) in self._items.items() if predicate(v)]:
                del self._items[key]


# Token hash -> Principal. Every lease and submission authenticates; looking the token up each time
# costs a pool checkout and a transaction, and a token's holder changes only by a ban.
_principals = _Recent()
# Worker id -> True while its last_seen_at is fresh enough not to be written again.
_seen = _Recent()


def remembered(token: str | None, ttl_s: float) -> Principal | None:
    """The holder of `token` if this process looked it up less than `ttl_s` ago; no database access."""
    if not token or ttl_s <= 0:
        return None
    cached = _principals.get(hash_token(token))
    return cached if isinstance(cached, Principal) else None


def authenticate_and_remember(
    sessions: Callable[[], AbstractContextManager[Session]], token: str | None, ttl_s: float
) -> Principal:
    """`authenticate` in a transaction of its own; the holder is remembered for `ttl_s`."""
    with sessions() as session:
        principal = authenticate(session, token)
    if token and ttl_s > 0:
        _principals.put(hash_token(token), principal, ttl_s)
    return principal


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
    forget(worker_id)
    return worker


def forget(worker_id: uuid.UUID) -> None:
    """Drop this process's remembered holder of the worker's token (after a ban or a new token):
    it takes effect at once here; other API processes forget the holder within auth_cache_s."""
    _principals.drop(lambda p: isinstance(p, Principal) and p.worker_id == worker_id)


def seen(session: Session, worker_id: uuid.UUID, every_s: float = 0.0) -> None:
    """Record activity, at most once per `every_s` per worker and process: an UPDATE per request
    on the workers table would serialise a worker's concurrent requests for a timestamp."""
    if every_s > 0 and _seen.get(worker_id) is not None:
        return
    repository.touch(session, worker_id, utcnow())
    if every_s > 0:
        _seen.put(worker_id, True, every_s)


def credit_submissions(session: Session, worker_id: uuid.UUID, submitted: int, every_s: float = 0.0) -> None:
    """Count stored traces; refreshes last_seen_at in the same UPDATE, so `seen` is not needed too."""
    repository.add_counts(session, worker_id, submitted=submitted, seen_at=utcnow())
    if every_s > 0:
        _seen.put(worker_id, True, every_s)


def in_flight_limit(session: Session, principal: Principal, settings: Settings) -> int:
    """How many jobs the worker may hold at once, read with its verification spend in one query
    (both are asked on every lease); raises RateLimited when the spend is over its hourly budget.
    A volunteer starts small and earns more with each trace that comes back usable (BOINC's rule):
    a fresh identity can waste only a few jobs. Operators and researchers are trusted with the
    maximum and have no budget."""
    if principal.scope != Scope.volunteer:
        return settings.max_in_flight_per_worker
    credit, spent, start = repository.lease_state(session, principal.worker_id)
    _check_budget(spent, start, settings.verify_budget_s_per_hour)
    return _limit(credit, settings)


def _limit(credit: int, settings: Settings) -> int:
    return min(settings.max_in_flight_per_worker, settings.initial_in_flight_per_worker + credit)


def credit_usable(session: Session, worker_id: uuid.UUID) -> None:
    """One more of the worker's traces came back usable: its in-flight limit grows by one."""
    repository.set_lease_credit(session, worker_id, 1)


def clear_credit(session: Session, worker_id: uuid.UUID) -> None:
    """A failed validation: the worker starts again from the initial in-flight limit."""
    repository.set_lease_credit(session, worker_id, None)


HOUR = timedelta(hours=1)


def charge_verification(session: Session, worker_id: uuid.UUID, seconds: float, lock: bool) -> None:
    """Count what verifying one of the worker's traces cost, in the hour it falls in."""
    if seconds <= 0:
        return
    now = utcnow()
    spent, start = repository.verification_window(session, worker_id, lock)
    if start is None or now - start >= HOUR:
        spent, start = 0.0, now
    repository.set_verification_window(session, worker_id, spent + seconds, start)


def _check_budget(spent: float, start: datetime | None, budget: float) -> None:
    """A volunteer whose traces cost more verification time this hour than the budget gets no new
    jobs until its hour is over (a code trace can take a minute of sandbox time): what it holds
    is still taken, so no work is lost."""
    if budget <= 0:
        return
    now = utcnow()
    if start is None or now - start >= HOUR or spent <= budget:
        return
    retry = max(1, math.ceil((start + HOUR - now).total_seconds()))
    message = (
        f"this worker's traces cost {spent:.0f} s of verification this hour, over the budget of"
        f" {budget:.0f} s; new jobs in {retry} s"
    )
    raise RateLimited(message, retry)


def list_workers(session: Session, limit: int = 100, offset: int = 0) -> Sequence[Worker]:
    return repository.list_all(session, limit, offset)


def to_out(session: Session, worker: Worker, settings: Settings) -> WorkerOut:
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
        in_flight_limit=(
            _limit(worker.lease_credit, settings)
            if worker.scope == Scope.volunteer
            else settings.max_in_flight_per_worker
        ),
    )
