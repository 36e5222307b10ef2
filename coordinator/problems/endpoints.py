from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from coordinator.db import transaction
from coordinator.deps import OperatorDep, RuntimeDep, SessionDep
from coordinator.errors import BadRequest, ValidationFailed
from coordinator.problems import service
from shared.protocol import ErrorBody, ProblemSetCreate, ProblemSetOut, Routes

router = APIRouter(tags=["problems"])
CREATED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "a set of that name exists, or repeated problem ids"}
}


@router.post(Routes.problem_sets, response_model=ProblemSetOut, status_code=201, responses=CREATED)
def create(body: ProblemSetCreate, session: SessionDep, _: OperatorDep) -> ProblemSetOut:
    """Load a built-in source (gsm8k, arithmetic, reasoning_gym, humaneval) or an installed
    verifiers environment's tasks (source verifiers, docs/problems.md)."""
    read = service.read_first(body)  # before the session's first query: no transaction waits on it
    return service.to_out(service.create_set(session, body, read=read))


@router.post(
    Routes.problem_sets + "/import", response_model=ProblemSetOut, status_code=201, responses=CREATED
)
async def import_jsonl(request: Request, name: str, _: OperatorDep, rt: RuntimeDep) -> ProblemSetOut:
    """Import a JSONL body (one problem per line, see docs/problems.md); all lines or none."""
    lines = await _body_lines(request)
    spec = _jsonl_spec(name)

    def work() -> ProblemSetOut:
        with transaction(rt.sessions) as session:
            return service.to_out(service.create_set(session, spec, lines))

    return await run_in_threadpool(work)


@router.post(
    Routes.problem_sets + "/import-code", response_model=ProblemSetOut, status_code=201, responses=CREATED
)
async def import_code(
    request: Request,
    name: str,
    format: str,
    _: OperatorDep,
    rt: RuntimeDep,
    limit: int | None = None,
    options: Annotated[str | None, Query(description="a JSON object of further code options")] = None,
) -> ProblemSetOut:
    """Import code problems in a published layout (`format`: apps, codecontests or mbpp) from a
    JSONL body (docs/problems.md); all lines or none."""
    lines = await _body_lines(request)
    spec = _spec(
        "query", name=name, source="code", limit=limit, options={**_options(options), "format": format}
    )

    def work() -> ProblemSetOut:
        with transaction(rt.sessions) as session:
            return service.to_out(service.create_set(session, spec, lines))

    return await run_in_threadpool(work)


async def _body_lines(request: Request) -> list[str]:
    body = await request.body()
    try:
        return body.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BadRequest("the problem file is not UTF-8") from exc


def _options(text: str | None) -> dict[str, Any]:
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise BadRequest(f"options: not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise BadRequest("options: must be a JSON object")
    return options


def _jsonl_spec(name: str) -> ProblemSetCreate:
    return _spec("query", name=name, source="jsonl")


def _spec(where: str, **fields: Any) -> ProblemSetCreate:
    # Query and form fields are checked by the wire model's own rules, as a body would be.
    try:
        return ProblemSetCreate(**fields)
    except ValidationError as exc:
        details = [{"loc": [where, *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        raise ValidationFailed("the problem set's fields are invalid", details) from exc


Column = Annotated[str | None, Form(description="the column holding this field (default: its own name)")]


@router.post(
    Routes.problem_sets + "/import-dataset", response_model=ProblemSetOut, status_code=201, responses=CREATED
)
async def import_dataset(
    _: OperatorDep,
    rt: RuntimeDep,
    file: Annotated[UploadFile, File(description="a parquet, JSON, JSON Lines, CSV or Arrow file")],
    name: Annotated[str, Form()],
    verifier: Annotated[str, Form(description="math, reasoning_gym or code, for every row")] = "math",
    format: Annotated[str | None, Form(description="default: from the file name's suffix")] = None,
    limit: Annotated[int | None, Form()] = None,
    prompt_column: Column = None,
    answer_column: Column = None,
    system_column: Column = None,
    id_column: Column = None,
    metadata_column: Column = None,
) -> ProblemSetOut:
    """Import an uploaded dataset file (multipart; docs/problems.md), all rows or none. The body is
    bounded by max_request_bytes like every request; larger files go through the CLI."""
    mapping = {"prompt": prompt_column, "answer": answer_column, "system": system_column}
    mapping |= {"id": id_column, "metadata": metadata_column}
    options: dict[str, Any] = {"verifier": verifier, "columns": {k: v for k, v in mapping.items() if v}}
    if format:
        options["format"] = format
    spec = _spec("form", name=name, source="dataset", limit=limit, options=options)

    def work() -> ProblemSetOut:
        with tempfile.TemporaryDirectory(prefix="flywheel-upload-") as folder:
            path = Path(folder) / _upload_name(file.filename)
            with path.open("wb") as handle:
                shutil.copyfileobj(file.file, handle)
            problems = service.dataset_problems(spec, path)
        with transaction(rt.sessions) as session:
            return service.to_out(service.create_set(session, spec, read=problems))

    return await run_in_threadpool(work)


def _upload_name(filename: str | None) -> str:
    """The upload's name on disk: only its suffix is kept (it tells the format), never a path."""
    suffix = Path(filename or "").suffix.lower()
    return "upload" + (suffix if re.fullmatch(r"\.[a-z0-9]{1,16}", suffix) else "")


@router.get(Routes.problem_sets, response_model=list[ProblemSetOut])
def list_sets(session: SessionDep, _: OperatorDep) -> list[ProblemSetOut]:
    return [service.to_out(s) for s in service.list_sets(session)]


@router.get(Routes.problem_sets + "/{set_id}", response_model=ProblemSetOut)
def get_set(set_id: uuid.UUID, session: SessionDep, _: OperatorDep) -> ProblemSetOut:
    return service.to_out(service.get_set(session, set_id))
