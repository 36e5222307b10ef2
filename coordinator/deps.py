"""FastAPI dependencies shared by every area's endpoints: runtime, sessions, callers."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.orm import Session

from coordinator.db import transaction
from coordinator.runtime import Runtime
from coordinator.workers import service as workers
from shared.protocol import Scope

# Dependencies that only read memory are `async def`: FastAPI runs sync dependencies in its thread
# pool, and a thread hop per dependency costs more than the work itself on the hot paths.


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def session(rt: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the endpoint returns, rolled back on error."""
    with transaction(rt.sessions) as s:
        yield s


# scope="function": commit before the response is sent (the default scope commits after it), so a
# client never sees a success whose transaction then fails. The connection is still held while the
# response is validated, in the same thread pool as the endpoints; hot endpoints that many workers
# call at once therefore open their transaction inside the endpoint instead (see jobs.endpoints).
SessionDep = Annotated[Session, Depends(session, scope="function")]


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if any."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


# Where the API's authentication middleware leaves the caller it found (coordinator.app).
PRINCIPAL_KEY = "flywheel.principal"


async def authenticate(rt: Runtime, token: str | None) -> workers.Principal:
    """The holder of `token`: from this process's memory, else looked up in a thread."""
    ttl_s = rt.settings.auth_cache_s
    known = workers.remembered(token, ttl_s)
    if known is not None:
        return known
    # Authentication uses its own short transaction, so a rejected caller never touches state.
    sessions = partial(transaction, rt.sessions)
    return await run_in_threadpool(workers.authenticate_and_remember, sessions, token, ttl_s)


async def principal(
    request: Request, rt: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> workers.Principal:
    checked = request.scope.get(PRINCIPAL_KEY)
    if isinstance(checked, workers.Principal):
        return checked
    return await authenticate(rt, bearer(authorization))


PrincipalDep = Annotated[workers.Principal, Depends(principal)]


async def volunteer(who: PrincipalDep) -> workers.Principal:
    workers.require(who, Scope.volunteer, Scope.operator)
    return who


async def operator(who: PrincipalDep) -> workers.Principal:
    workers.require(who, Scope.operator)
    return who


async def researcher(who: PrincipalDep) -> workers.Principal:
    workers.require(who, Scope.researcher)
    return who


class _FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                # orjson refuses some input the standard parser takes (NaN, -Infinity, integers past
                # 64 bits); those bodies keep exactly their old meaning.
                self._json = json.loads(body)
        return self._json


class FastJSONRoute(APIRoute):
    """Parses JSON bodies with orjson: a submission carries thousands of token ids and logprobs,
    and the standard parser was the largest single cost of handling it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_FastJSONRequest(request.scope, request.receive))

        return handle


def wire(model: BaseModel) -> Response:
    """A wire model as a finished JSON response, serialised in the endpoint's own thread.

    For the hot endpoints: FastAPI would otherwise validate the returned model again and do so in a
    second trip through the thread pool. The route's `response_model` still documents the body.
    """
    return Response(model.model_dump_json(), media_type="application/json")


# Paging parameters, bounded so that no value can overflow a database integer (a 500 on SQLite).
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]

VolunteerDep = Annotated[workers.Principal, Depends(volunteer)]
OperatorDep = Annotated[workers.Principal, Depends(operator)]
ResearcherDep = Annotated[workers.Principal, Depends(researcher)]
