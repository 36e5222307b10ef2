"""Token ids and logprobs are stored as packed binary arrays (coordinator.db.PackedInts /
PackedFloats, migration 0013): exactly what the worker sent comes back, and the migration carries
stored traces across in both directions."""

from __future__ import annotations

import json
from typing import Any

from alembic import command
from sqlalchemy import create_engine, select, text

from coordinator.db import PackedFloats, PackedInts, alembic_config, transaction
from coordinator.results.models import Trace
from tests.coordinator.conftest import Api
from tests.coordinator.helpers import make_campaign, trace_for

# ids at both ends of the bundled model's vocabulary; logprobs with every float64 bit significant
TOKENS = [0, 1, 319, 200, 7]
LOGPROBS = [-2.5e-7, -1e-300, -123.456789012345678, -0.1 - 2**-50, -37.0]  # JSON has no -0.0


def _submit(api: Api) -> None:
    make_campaign(api, problems=1, samples=1)
    worker = api.volunteer()
    job = api.client.post("/v1/leases", json={"max_jobs": 1}, headers=worker).json()["jobs"][0]
    trace: dict[str, Any] = {**trace_for(job), "completion_token_ids": TOKENS, "logprobs": LOGPROBS}
    r = api.client.post("/v1/results", json={"results": [trace]}, headers=worker)
    assert r.json()["acks"][0]["status"] == "accepted", r.text


def _stored(api: Api) -> tuple[list[int], list[float]]:
    with transaction(api.runtime.sessions) as session:
        row = session.execute(select(Trace.completion_token_ids, Trace.logprobs)).one()
    return list(row[0]), list(row[1])


def test_a_trace_comes_back_bit_for_bit(api: Api) -> None:
    _submit(api)
    tokens, logprobs = _stored(api)
    assert tokens == TOKENS
    assert [x.hex() for x in logprobs] == [x.hex() for x in LOGPROBS]


def test_the_migration_converts_stored_traces_both_ways(api: Api, database_url: str) -> None:
    _submit(api)
    config = alembic_config(database_url)
    command.downgrade(config, "0012")
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            ids, logprobs = conn.execute(text("SELECT completion_token_ids, logprobs FROM traces")).one()
    finally:
        engine.dispose()
    as_list = [json.loads(v) if isinstance(v, str) else v for v in (ids, logprobs)]
    assert as_list[0] == TOKENS and as_list[1] == LOGPROBS  # JSON lists again, the same values
    command.upgrade(config, "head")
    tokens, packed = _stored(api)
    assert tokens == TOKENS and [x.hex() for x in packed] == [x.hex() for x in LOGPROBS]


def test_the_packed_types_hold_the_full_int32_and_float64_ranges() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    ints, floats = PackedInts(), PackedFloats()
    values = [0, 2**31 - 1, 151_935, -(2**31)]
    reals = [-0.0, -1e-300, float("-inf"), -(2.0**-1074), -1.7976931348623157e308]
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        stored = ints.process_bind_param(values, dialect)
        assert stored is not None and len(stored) == 4 * len(values)
        assert ints.process_result_value(stored, dialect) == values
        back = floats.process_result_value(floats.process_bind_param(reals, dialect), dialect)
        assert back is not None and [x.hex() for x in back] == [x.hex() for x in reals]
    assert ints.process_bind_param(None, sqlite.dialect()) is None


def test_a_legacy_list_that_is_not_all_numbers_packs_as_empty(api: Api, database_url: str) -> None:
    _submit(api)
    config = alembic_config(database_url)
    command.downgrade(config, "0012")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            garbage = json.dumps(["not a number"] * len(TOKENS))
            cast = "CAST(:v AS JSONB)" if engine.dialect.name == "postgresql" else ":v"
            conn.execute(text(f"UPDATE traces SET logprobs = {cast}"), {"v": garbage})
    finally:
        engine.dispose()
    command.upgrade(config, "head")
    tokens, logprobs = _stored(api)
    assert tokens == TOKENS and logprobs == []  # the validator fails that claim alone
