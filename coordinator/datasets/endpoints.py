from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, StreamingResponse

from coordinator.datasets import service
from coordinator.db import read_transaction
from coordinator.deps import ResearcherDep, RuntimeDep, SessionDep
from shared.protocol import DatasetInfo, Routes

router = APIRouter(tags=["datasets"])


@router.get(Routes.datasets, response_model=list[DatasetInfo])
def list_datasets(session: SessionDep, _: ResearcherDep) -> list[DatasetInfo]:
    return service.list_datasets(session)


@router.get(Routes.datasets + "/{campaign_id}/card", response_class=PlainTextResponse)
def card(campaign_id: uuid.UUID, session: SessionDep, _: ResearcherDep) -> str:
    return service.dataset_card(session, campaign_id)


@router.get(Routes.datasets + "/{campaign_id}/export")
def export(
    campaign_id: uuid.UUID,
    _: ResearcherDep,
    rt: RuntimeDep,
    format: Literal["jsonl", "parquet"] = "jsonl",
    status: list[str] = Query(default=["accepted"]),
    min_score: float | None = None,
    since: datetime | None = None,
) -> StreamingResponse:
    where = service.ExportFilter(statuses=tuple(status), min_score=min_score, since=since)
    with read_transaction(rt.sessions) as session:  # fail fast (404) before the stream starts
        service.ensure_exists(session, campaign_id)
    filename = f"{campaign_id}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    body = _jsonl(rt, campaign_id, where) if format == "jsonl" else _parquet(rt, campaign_id, where)
    media = "application/x-ndjson" if format == "jsonl" else "application/vnd.apache.parquet"
    return StreamingResponse(body, media_type=media, headers=headers)


def _jsonl(rt: RuntimeDep, campaign_id: uuid.UUID, where: service.ExportFilter) -> Iterator[bytes]:
    yield from service.jsonl_chunks(service.records(rt.sessions, campaign_id, where))


def _parquet(rt: RuntimeDep, campaign_id: uuid.UUID, where: service.ExportFilter) -> Iterator[bytes]:
    # Parquet's footer is written last, so the file is built on disk (not in memory) first.
    with tempfile.TemporaryFile() as spool:
        service.write_parquet(service.records(rt.sessions, campaign_id, where), spool)
        spool.seek(0)
        while chunk := spool.read(1 << 20):
            yield chunk
