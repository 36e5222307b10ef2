"""Verified trace dumps: JSONL and Parquet with Hugging Face `datasets`-compatible columns."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Row
from sqlalchemy.orm import Session, sessionmaker

from coordinator.campaigns import service as campaigns
from coordinator.campaigns.models import Campaign
from coordinator.datasets import repository
from coordinator.db import read_transaction
from coordinator.errors import BadRequest
from coordinator.results.models import ACCEPTED, PENDING, REJECTED
from shared.protocol import DatasetInfo

ROW_GROUP = 1000
FORMATS = ("jsonl", "parquet")
STATUSES = ("accepted", "rejected", "pending")


@dataclass(frozen=True)
class ExportFilter:
    statuses: tuple[str, ...] = ("accepted",)
    min_score: float | None = None
    since: datetime | None = None

    def __post_init__(self) -> None:
        unknown = set(self.statuses) - set(STATUSES)
        if unknown or not self.statuses:
            raise BadRequest(f"status must be among {STATUSES}", details={"unknown": sorted(unknown)})


def list_datasets(session: Session) -> list[DatasetInfo]:
    merged: dict[uuid.UUID, dict[str, Any]] = {}
    for campaign_id, name, model, status, n in repository.summaries(session):
        entry = merged.setdefault(campaign_id, {"campaign_id": campaign_id, "name": name, "model": model})
        if status is not None:
            entry[status] = int(n)
    return [
        DatasetInfo(
            accepted=e.get(ACCEPTED, 0),
            rejected=e.get(REJECTED, 0),
            pending=e.get(PENDING, 0),
            **{k: e[k] for k in ("campaign_id", "name", "model")},
        )
        for e in merged.values()
    ]


def _record(row: Row[Any], campaign: Campaign) -> dict[str, Any]:
    trace, sample_index, seed, external_id, prompt, system, extra, set_name, source = tuple(row)
    verdict = trace.verdict or {}
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": trace.text}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return {
        "id": str(trace.id),
        "campaign_id": str(campaign.id),
        "campaign": campaign.name,
        "problem_set": set_name,
        "source": str(extra.get("source", source)),
        "problem_id": external_id,
        "messages": messages,
        "prompt": prompt,
        "completion": trace.text,
        "model": campaign.model_name,
        "model_revision": campaign.model_revision,
        "sampling": {**campaign.sampling, "seed": int(seed)},
        "sample_index": int(sample_index),
        "status": trace.status,
        "passed": bool(verdict.get("passed", False)),
        "score": trace.score,
        "verdict_reason": verdict.get("reason", ""),
        "verdict_details": json.dumps(verdict.get("details", {}), sort_keys=True),
        "finish_reason": trace.finish_reason,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "engine": trace.engine.get("name", ""),
        "created_at": trace.created_at,
        "verified_at": trace.verified_at,
    }


def ensure_exists(session: Session, campaign_id: uuid.UUID) -> None:
    campaigns.get(session, campaign_id)


def records(
    sessions: sessionmaker[Session], campaign_id: uuid.UUID, where: ExportFilter, page: int = 500
) -> Iterator[dict[str, Any]]:
    """A campaign's dump records in order, each page read in its own short read transaction: a
    client that downloads slowly holds no lock and no pooled connection between pages."""
    with read_transaction(sessions) as session:
        campaign = campaigns.get(session, campaign_id)

    def read(after: repository.ExportCursor | None) -> list[Row[Any]]:
        with read_transaction(sessions) as session:
            return repository.export_page(
                session, campaign_id, where.statuses, where.min_score, where.since, after, page
            )

    return (_record(row, campaign) for row in _paged(read, page))


def records_in(
    session: Session, campaign_id: uuid.UUID, where: ExportFilter, page: int = 500
) -> Iterator[dict[str, Any]]:
    """The same records inside a caller's own transaction (pipeline tasks reading a dump)."""
    campaign = campaigns.get(session, campaign_id)

    def read(after: repository.ExportCursor | None) -> list[Row[Any]]:
        return repository.export_page(
            session, campaign_id, where.statuses, where.min_score, where.since, after, page
        )

    return (_record(row, campaign) for row in _paged(read, page))


def _paged(read: Callable[[repository.ExportCursor | None], list[Row[Any]]], page: int) -> Iterator[Row[Any]]:
    """Keyset paging: each page starts after the (created_at, id) of the last row of the one before."""
    after: repository.ExportCursor | None = None
    while True:
        rows = read(after)
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1][0]
        after = (last.created_at, last.id)


def jsonl_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for record in rows:
        yield (json.dumps(record, default=_json_default, ensure_ascii=False) + "\n").encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def arrow_schema() -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    sampling = pa.struct(
        [
            ("temperature", pa.float64()),
            ("top_p", pa.float64()),
            ("top_k", pa.int64()),
            ("max_tokens", pa.int64()),
            ("seed", pa.int64()),
        ]
    )
    ts = pa.timestamp("us", tz="UTC")
    fields = [
        ("id", pa.string()),
        ("campaign_id", pa.string()),
        ("campaign", pa.string()),
        ("problem_set", pa.string()),
        ("source", pa.string()),
        ("problem_id", pa.string()),
        ("messages", pa.list_(message)),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("sampling", sampling),
        ("sample_index", pa.int64()),
        ("status", pa.string()),
        ("passed", pa.bool_()),
        ("score", pa.float64()),
        ("verdict_reason", pa.string()),
        ("verdict_details", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("engine", pa.string()),
        ("created_at", ts),
        ("verified_at", ts),
    ]
    return pa.schema(fields)


def write_parquet(rows: Iterator[dict[str, Any]], sink: str | Path | BinaryIO) -> int:
    """Write row groups as rows arrive; returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    total, batch = 0, []
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for record in rows:
            batch.append(record)
            if len(batch) >= ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                total, batch = total + len(batch), []
        if batch or total == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            total += len(batch)
    return total


def dataset_card(session: Session, campaign_id: uuid.UUID) -> str:
    campaign = campaigns.get(session, campaign_id)
    progress = campaigns.progress(session, campaign_id)
    sampling = ", ".join(f"{k}={v}" for k, v in campaign.sampling.items())
    return CARD.format(
        name=campaign.name,
        model=campaign.model_name,
        sampling=sampling,
        samples=campaign.samples_per_problem,
        accepted=progress.accepted,
        rejected=progress.rejected,
        created=campaign.created_at.isoformat(),
        size=_size_category(progress.accepted),
    )


def _size_category(n: int) -> str:
    return "n<1K" if n < 1_000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "n>100K"


CARD = """---
license: other
task_categories:
- text-generation
tags:
- flywheel
- verified-reasoning-traces
size_categories:
- {size}
configs:
- config_name: default
  data_files: "*.parquet"
---
# {name}

Reasoning traces generated by volunteer workers for the Flywheel campaign `{name}` and re-verified
on the coordinator. Only traces whose verifier verdict passed are in the default (accepted) export.

- Model: `{model}`
- Sampling: {sampling}
- Samples per problem: {samples}
- Accepted traces: {accepted}; rejected: {rejected}
- Campaign created: {created}

## Columns
| column | meaning |
|---|---|
| `messages` | chat turns: optional system, the user prompt, the assistant completion |
| `prompt`, `completion` | the same text, flat |
| `problem_id`, `problem_set`, `source` | which problem, from which set and source |
| `model`, `model_revision`, `sampling` | what generated it; `sampling.seed`: the coordinator's job seed |
| `sample_index` | which of the problem's samples this is |
| `status`, `passed`, `score` | the coordinator's verdict (never the worker's claim) |
| `verdict_reason`, `verdict_details` | the verifier's reason and aggregate details (JSON) |
| `finish_reason`, `prompt_tokens`, `completion_tokens` | generation facts reported with the trace |
| `engine`, `created_at`, `verified_at` | which engine, when submitted, when verified |

Gold answers and hidden tests are not included.

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files="{name}.parquet")["train"]
```
"""
