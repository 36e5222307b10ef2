"""Credit through the real API and tasks: granted for usable traces at the model's rate, taken back
when a trace is withdrawn or returned, granted again when a re-check passes it, none for
unverifiable work; teams; the public leaderboard's windows and what it leaves out."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from pytest import approx
from sqlalchemy import select, update

from coordinator.credit import rates
from coordinator.credit.models import CreditGrant
from coordinator.db import transaction, utcnow
from coordinator.results.models import Trace
from shared.assets import tiny_model_dir
from shared.model_size import active_parameters
from shared.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign, trace_for
from tests.trust.helpers import generate, lease, settle, submission, submit
from tests.trust.helpers import worker_id as id_of
from worker.engines.hf import TransformersEngine

TINY_PARAMETERS = active_parameters(json.loads((tiny_model_dir() / "config.json").read_text())) or 0


def _register(api: Api, name: str, team: str | None = None, **extra: Any) -> dict[str, str]:
    body: dict[str, Any] = {"name": name, "engine": {"name": "transformers"}, **extra}
    if team is not None:
        body["team"] = team
    response = api.client.post("/v1/workers/register", json=body)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}


def _credit(api: Api, worker: dict[str, str]) -> dict[str, Any]:
    response = api.client.get("/v1/credit", headers=worker)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _ledger(api: Api, wid: str) -> list[tuple[str, float, bool]]:
    """(trace id, amount, live) of every grant of the worker, oldest first."""
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(
            select(CreditGrant.trace_id, CreditGrant.amount, CreditGrant.revoked_at)
            .where(CreditGrant.worker_id == uuid.UUID(wid))
            .order_by(CreditGrant.created_at, CreditGrant.id)
        ).all()
    return [(str(t), float(a), r is None) for t, a, r in rows]


def _tokens(api: Api, wid: str) -> dict[str, int]:
    with transaction(api.runtime.sessions) as session:
        rows = session.execute(
            select(Trace.id, Trace.completion_tokens).where(Trace.worker_id == uuid.UUID(wid))
        ).all()
    return {str(t): int(n) for t, n in rows}


def _fabricated(api: Api, worker: dict[str, str], n: int, tokens: int) -> None:
    """n traces of `tokens` tokens each, verified and (validation being off) skipped: usable."""
    jobs = lease(api, worker, n)
    results = [trace_for(job, tokens=tokens) for job in jobs]
    assert submit(api, worker, results) == ["accepted"] * n
    api.drain()


def _validation(api: Api, enabled: bool) -> None:
    api.runtime.settings = api.runtime.settings.model_copy(update={"validation_enabled": enabled})


def test_the_rate_is_two_flops_per_matrix_parameter_of_the_model() -> None:
    """The config-only estimate counts what the tiny model's own matrices hold (torch's count of its
    weights, less the input embedding: a lookup, not a multiply)."""
    import torch  # noqa: F401  (the model code: only the test compares against it)

    from ml.loading import load_model
    from shared.assets import ModelSource

    model = load_model(ModelSource(str(tiny_model_dir())), "cpu", "float32")
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name)
    assert matrices == TINY_PARAMETERS
    assert rates.credit(TINY_PARAMETERS, 1000) == 2 * matrices * 1000 / 1e12


def test_usable_traces_earn_credit_at_their_models_rate(api: Api) -> None:
    make_campaign(api, problems=4, samples=1)
    alice = _register(api, "alice", team="Red Team")
    _fabricated(api, alice, 3, tokens=5)
    wid = id_of(api, alice)

    body = _credit(api, alice)
    expected = 3 * rates.credit(TINY_PARAMETERS, 5)
    assert body["credit"] == body["credit_7d"] == approx(expected)
    assert (body["tokens"], body["tokens_7d"], body["rank"], body["team"]) == (15, 15, 1, "Red Team")
    assert len(_ledger(api, wid)) == 3
    # The hooks run again (a lost task's redo, the sweeper): still one grant per trace.
    from coordinator.trust import tasks

    for trace_id in _tokens(api, wid):
        tasks.after_verdict(api.runtime, uuid.UUID(trace_id))
    assert len(_ledger(api, wid)) == 3
    assert _credit(api, alice)["credit"] == approx(expected)


def test_a_worker_without_traces_has_no_credit_and_no_rank(api: Api) -> None:
    body = _credit(api, _register(api, "new"))
    assert (body["credit"], body["tokens"], body["rank"], body["team"]) == (0.0, 0, None, None)


def test_unverifiable_work_earns_nothing(trust_api: Api, engine: TransformersEngine) -> None:
    make_campaign(trust_api, problems=1, samples=1, max_tokens=32)
    junk = _register(trust_api, "junk")
    [leased] = lease(trust_api, junk, 1)
    gen = generate(engine, [leased])[0]
    assert submit(trust_api, junk, [submission(leased, gen, verifiable=False)]) == ["accepted"]
    settle(trust_api)
    assert _ledger(trust_api, id_of(trust_api, junk)) == []
    assert _credit(trust_api, junk)["credit"] == 0.0


def test_credit_is_taken_back_on_a_failure_and_granted_again_when_a_recheck_passes(
    trust_api: Api, engine: TransformersEngine
) -> None:
    """Skipped (validation off) honest traces are credited; a forged trace then fails: it earns
    nothing, and the withdrawal of the worker's unvouched traces takes their credit back until each
    passes its re-check. An operator's re-validation takes it back and grants it again too."""
    make_campaign(trust_api, problems=4, samples=1, max_tokens=32)
    alice = _register(trust_api, "alice")
    wid = id_of(trust_api, alice)
    jobs = lease(trust_api, alice, 4)
    gens = generate(engine, jobs)
    _validation(trust_api, False)
    honest = [submission(j, g) for j, g in zip(jobs[:3], gens[:3], strict=True)]
    assert submit(trust_api, alice, honest) == ["accepted"] * 3
    settle(trust_api)
    tokens = _tokens(trust_api, wid)
    earned = sum(rates.credit(TINY_PARAMETERS, n) for n in tokens.values())
    assert earned > 0
    assert _credit(trust_api, alice)["credit"] == approx(earned)
    assert [live for *_, live in _ledger(trust_api, wid)] == [True] * 3

    _validation(trust_api, True)
    forged = submission(
        jobs[3], gens[3], text=gens[0].text, completion_token_ids=gens[0].completion_token_ids,
        logprobs=gens[0].logprobs,
    )  # fmt: skip
    assert submit(trust_api, alice, [forged]) == ["accepted"]
    settle(trust_api)

    ledger = _ledger(trust_api, wid)
    honest_ids = set(tokens)
    assert {t for t, *_ in ledger} == honest_ids  # the forged trace was never credited
    assert sorted(live for *_, live in ledger) == [False] * 3 + [True] * 3  # taken back, granted again
    restored = trust_api.client.post(f"/v1/workers/{wid}/trust/restore", headers=trust_api.operator)
    assert restored.status_code == 200, restored.text
    assert _credit(trust_api, alice)["credit"] == approx(earned)

    revalidated = trust_api.client.post(f"/v1/workers/{wid}/trust/revalidate", headers=trust_api.operator)
    assert revalidated.status_code == 200, revalidated.text
    settle(trust_api)
    ledger = _ledger(trust_api, wid)
    assert sorted(live for *_, live in ledger) == [False] * 6 + [True] * 3
    assert _credit(trust_api, alice)["credit"] == approx(earned)


def test_the_leaderboard_is_public_windowed_and_names_only(api: Api) -> None:
    make_campaign(api, problems=8, samples=1)
    secret_cpu = "cpu-of-a-private-host-4242"
    alice = _register(api, "alice", team="Red Team", hardware={"cpu": secret_cpu})
    bob = _register(api, "bob", team="red team")  # the same team: names match case aside
    carol = _register(api, "carol")
    mallory = _register(api, "mallory", team="Blue")
    _fabricated(api, alice, 1, tokens=10)
    _fabricated(api, bob, 2, tokens=10)
    _fabricated(api, carol, 1, tokens=30)
    _fabricated(api, mallory, 1, tokens=50)
    banned = api.client.post(f"/v1/workers/{id_of(api, mallory)}/ban", headers=api.operator)
    assert banned.status_code == 200, banned.text
    # Carol's grant is old: it counts all time, not in the last 7 days.
    with transaction(api.runtime.sessions) as session:
        session.execute(
            update(CreditGrant)
            .where(CreditGrant.worker_id == uuid.UUID(id_of(api, carol)))
            .values(created_at=utcnow() - timedelta(days=8))
        )

    response = api.client.get("/v1/credit/leaderboard")  # no token
    assert response.status_code == 200, response.text
    board = response.json()
    unit = rates.credit(TINY_PARAMETERS, 10)

    def rows(window: str, kind: str) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in board[window][kind]]

    assert rows("all_time", "workers") == [
        (1, "carol", None, approx(3 * unit), 30), (2, "bob", "Red Team", approx(2 * unit), 20),
        (3, "alice", "Red Team", approx(unit), 10),
    ]  # fmt: skip
    assert rows("last_7_days", "workers") == [
        (1, "bob", "Red Team", approx(2 * unit), 20), (2, "alice", "Red Team", approx(unit), 10),
    ]  # fmt: skip
    assert (
        rows("all_time", "teams")
        == rows("last_7_days", "teams")
        == [(1, "Red Team", 2, approx(3 * unit), 30)]
    )
    text = response.text
    for private in [secret_cpu, "mallory", "Blue", *(h["Authorization"][7:] for h in (alice, bob, carol))]:
        assert private not in text
    for worker in (alice, bob, carol):
        assert id_of(api, worker) not in text
    assert "worker_id" not in text and "trace_id" not in text


def test_the_public_summary_counts_credited_work_and_its_throughput(api: Api) -> None:
    make_campaign(api, problems=4, samples=1)
    alice = _register(api, "alice", team="Red Team")
    _fabricated(api, alice, 3, tokens=7)
    response = api.client.get("/v1/credit/summary?hours=1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["volunteers"], body["teams"], body["traces"], body["completion_tokens"]) == (1, 1, 3, 21)
    points = body["throughput"]["points"]
    bucket_s = body["throughput"]["bucket_s"]
    assert len(points) == 96 and bucket_s == 37
    assert sum(p["tokens_per_s"] for p in points) * bucket_s == approx(21)
    assert points[-1]["tokens_per_s"] > 0 or points[-2]["tokens_per_s"] > 0


def test_the_migrated_schema_matches_the_credit_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from coordinator.config import Settings
    from coordinator.db import migrate
    from coordinator.models import Base

    migrate(Settings(database_url=database_url, redis_url=None))
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert [
        d for d in diff if any(name in str(d) for name in ("credit_events", "teams", "team_members"))
    ] == []
