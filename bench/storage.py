"""Bytes per completion token of a stored trace: token ids and logprobs as JSON lists (JSONB, as
stored before migration 0013) against packed binary arrays (int32 ids, float64 logprobs in BYTEA:
coordinator.db.PackedInts / PackedFloats), side by side on one PostgreSQL.

Each layout gets its own table holding the same traces (random ids below a 151,936-token
vocabulary, float64 logprobs as a sampler reports them); the figure is the table's whole size
(heap, TOAST and its index, after VACUUM) and the stored values' own size (`pg_column_size`,
after PostgreSQL's compression), divided by the tokens stored.

    python -m bench.storage --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, create_engine, func, select, text
from sqlalchemy.dialects.postgresql import JSONB

from coordinator.db import PackedFloats, PackedInts

VOCAB = 151_936


def tables(metadata: MetaData) -> dict[str, Table]:
    def table(name: str, ids: Any, logprobs: Any) -> Table:
        return Table(name, metadata, Column("id", Integer, primary_key=True), Column("ids", ids),
                     Column("logprobs", logprobs))  # fmt: skip

    return {"json": table("bench_storage_json", JSONB, JSONB),
            "packed": table("bench_storage_packed", LargeBinary, LargeBinary)}  # fmt: skip


def trace(rng: random.Random, length: int) -> tuple[list[int], list[float]]:
    ids = [rng.randrange(VOCAB) for _ in range(length)]
    logprobs = [-rng.expovariate(1.0) for _ in range(length)]
    return ids, logprobs


def measure(url: str, length: int, count: int) -> dict[str, Any]:
    engine = create_engine(url)
    metadata = MetaData()
    layouts = tables(metadata)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    rng = random.Random(length)
    ints, floats = PackedInts(), PackedFloats()
    dialect = engine.dialect
    with engine.begin() as conn:
        for start in range(0, count, 100):
            rows = [trace(rng, length) for _ in range(min(100, count - start))]
            conn.execute(layouts["json"].insert(), [{"ids": i, "logprobs": lp} for i, lp in rows])
            packed = [
                {
                    "ids": ints.process_bind_param(i, dialect),
                    "logprobs": floats.process_bind_param(lp, dialect),
                }
                for i, lp in rows
            ]
            conn.execute(layouts["packed"].insert(), packed)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        result: dict[str, Any] = {"tokens_per_trace": length, "traces": count}
        for name, table in layouts.items():
            conn.execute(text(f"VACUUM {table.name}"))
            total = int(conn.scalar(select(func.pg_total_relation_size(table.name))) or 0)
            sizes = func.pg_column_size(table.c.ids) + func.pg_column_size(table.c.logprobs)
            values = int(conn.scalar(select(func.sum(sizes))) or 0)
            result[f"{name}_table_bytes_per_token"] = round(total / (length * count), 2)
            result[f"{name}_value_bytes_per_token"] = round(values / (length * count), 2)
    metadata.drop_all(engine)
    engine.dispose()
    result["ratio_values"] = round(
        result["json_value_bytes_per_token"] / result["packed_value_bytes_per_token"], 2
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--database-url", required=True, help="a PostgreSQL URL (the tables are created and dropped)"
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 16_384])
    p.add_argument("--tokens", type=int, default=4_000_000, help="tokens stored per layout and length")
    a = p.parse_args(argv)
    for length in a.lengths:
        print(json.dumps(measure(a.database_url, length, max(1, a.tokens // length))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
