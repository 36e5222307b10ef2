"""What hostile clients try at the edge: oversized or encoded bodies, bodies without a valid token,
made-up tokens, registration floods; and what an operator sets against them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest
from pydantic import ValidationError
from sqlalchemy import event
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message

from coordinator.config import Settings
from coordinator.trust.ratelimit import client_address
from tests.coordinator.conftest import Api, make_settings, serve

REGISTER = {"name": "w", "engine": {"name": "transformers"}}


class _Upload:
    """Drives the ASGI app directly with a body of `chunks` pieces and records what it read."""

    def __init__(self, headers: dict[str, str], chunks: int, chunk_bytes: int = 64 * 1024) -> None:
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.chunks, self.chunk = chunks, b"x" * chunk_bytes
        self.read = 0
        self.status = 0
        self.body = b""

    async def receive(self) -> Message:
        if self.read >= self.chunks:
            return {"type": "http.disconnect"}
        self.read += 1
        return {"type": "http.request", "body": self.chunk, "more_body": self.read < self.chunks}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def post(self, app: ASGIApp, path: str) -> Upload:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), *self.headers],
            "client": ("203.0.113.9", 5000),
            "server": ("testserver", 80),
            "state": {},
        }
        anyio.run(app, scope, self.receive, self.send)
        return self


Upload = _Upload


def _code(upload: Upload) -> str:
    return str(json.loads(upload.body)["error"]["code"])


def test_a_body_without_length_is_stopped_at_the_limit(api: Api) -> None:
    # No Content-Length and no Transfer-Encoding (as over HTTP/2): only counting can stop it.
    limit = api.runtime.settings.max_request_bytes
    upload = Upload({}, chunks=4 * limit // (64 * 1024)).post(api.client.app, "/v1/workers/register")
    assert upload.status == 413 and _code(upload) == "payload_too_large"
    assert upload.read <= limit // (64 * 1024) + 1  # stopped as the limit passed, not at the end


def test_a_body_is_not_read_before_its_token_is_checked(api: Api) -> None:
    for headers in ({}, {"authorization": "Bearer fw_made_up"}):
        upload = Upload(headers, chunks=8).post(api.client.app, "/v1/results")
        assert upload.status == 401 and _code(upload) == "unauthorized"
        assert upload.read == 0


def test_a_known_token_still_gets_its_body_read(api: Api) -> None:
    worker = {k.lower(): v for k, v in api.volunteer().items()}
    upload = Upload(worker, chunks=1).post(api.client.app, "/v1/results")
    assert upload.read == 1 and upload.status == 422  # read, then refused as malformed JSON


def _chunks() -> Iterator[bytes]:
    yield json.dumps(REGISTER).encode()


@pytest.mark.parametrize(
    ("coding", "status", "code"),
    [("gzip, chunked", 501, "unsupported_transfer_encoding"), ("chunked", 411, "length_required")],
)
def test_transfer_codings_are_refused(api: Api, coding: str, status: int, code: str) -> None:
    before = len(api.client.get("/v1/workers", headers=api.operator).json())
    response = api.client.post(
        "/v1/workers/register",
        content=_chunks(),
        headers={"Transfer-Encoding": coding, "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert len(api.client.get("/v1/workers", headers=api.operator).json()) == before


def test_length_and_transfer_coding_together_are_refused(api: Api) -> None:
    body = json.dumps(REGISTER).encode()
    headers = {"Transfer-Encoding": "chunked", "Content-Length": str(len(body))}
    response = api.client.post("/v1/workers/register", content=body, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


def test_made_up_tokens_spend_their_address_budget(database_url: str) -> None:
    settings = make_settings(database_url, rate_limit_per_s=0.01, rate_limit_burst=5)
    with serve(settings) as api:
        codes = [
            api.client.get("/v1/datasets", headers={"Authorization": f"Bearer fw_guess{i}"}).status_code
            for i in range(8)
        ]
    assert codes == [401] * 5 + [429] * 3


def test_a_known_worker_has_a_budget_of_its_own(database_url: str) -> None:
    settings = make_settings(database_url, rate_limit_per_s=0.01, rate_limit_burst=3)
    with serve(settings) as api:
        worker = api.volunteer()  # spends one request of the address's budget
        flood = [api.client.get("/v1/info").status_code for _ in range(3)]
        mine = [api.client.post("/v1/leases", json={}, headers=worker).status_code for _ in range(3)]
    assert flood == [200, 200, 429] and mine == [200, 200, 200]


def test_registration_is_limited_per_address(database_url: str) -> None:
    settings = make_settings(database_url, registration_per_hour=1, registration_burst=2)
    with serve(settings) as api:
        codes = [api.client.post("/v1/workers/register", json=REGISTER).status_code for _ in range(4)]
        assert api.client.get("/v1/info").status_code == 200  # other calls keep their own budget
    assert codes == [201, 201, 429, 429]


def test_closed_registration(database_url: str) -> None:
    with serve(make_settings(database_url, registration_mode="closed")) as api:
        response = api.client.post("/v1/workers/register", json=REGISTER)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_invite_registration_needs_a_listed_code(database_url: str) -> None:
    settings = make_settings(database_url, registration_mode="invite", registration_invite_codes=["s3cret"])
    with serve(settings) as api:
        codes = [
            api.client.post("/v1/workers/register", json={**REGISTER, **extra}).status_code
            for extra in ({}, {"invite_code": ""}, {"invite_code": "s3cre"}, {"invite_code": "s3cret"})
        ]
    assert codes == [403, 403, 403, 201]


def test_registration_mode_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().registration == "open"
    monkeypatch.setenv("FLYWHEEL_REGISTRATION_OPEN", "false")  # the older setting keeps its meaning
    assert Settings().registration == "closed"
    monkeypatch.setenv("FLYWHEEL_REGISTRATION_MODE", "invite")
    monkeypatch.setenv("FLYWHEEL_REGISTRATION_INVITE_CODES", '["a", "b"]')
    assert Settings().registration == "invite" and Settings().registration_invite_codes == ["a", "b"]
    monkeypatch.delenv("FLYWHEEL_REGISTRATION_INVITE_CODES")
    with pytest.raises(ValidationError, match="invite_codes"):
        Settings()


def test_forwarded_addresses_count_only_behind_trusted_proxies() -> None:
    import ipaddress

    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    forwarded = Headers({"x-forwarded-for": "1.2.3.4, 198.51.100.7, 10.0.0.3"})
    assert client_address(forwarded, ("10.0.0.2", 1), proxies) == "198.51.100.7"
    assert client_address(forwarded, ("192.0.2.1", 1), proxies) == "192.0.2.1"  # not a proxy: ignored
    assert client_address(forwarded, ("10.0.0.2", 1), []) == "10.0.0.2"
    assert client_address(Headers({}), ("10.0.0.2", 1), proxies) == "10.0.0.2"


def test_health_is_one_cheap_query(api: Api) -> None:
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(api.runtime.engine, "before_cursor_execute", record)
    try:
        assert api.client.get("/healthz").json() == {"status": "ok"}
    finally:
        event.remove(api.runtime.engine, "before_cursor_execute", record)
    # (The sweeper thread may query at the same time; it never groups.)
    assert "SELECT 1" in statements and not any("GROUP BY" in s.upper() for s in statements)


def test_health_is_limited_per_address(database_url: str) -> None:
    with serve(make_settings(database_url, rate_limit_per_s=0.01, rate_limit_burst=2)) as api:
        assert [api.client.get("/healthz").status_code for _ in range(3)] == [200, 200, 429]


def test_what_the_fuzzer_found_is_a_clear_422(api: Api) -> None:
    # Both were 500s: a pydantic error escaping the import, and SQLite overflowing on a huge offset.
    imported = api.client.post("/v1/problem-sets/import?name=", content=b"", headers=api.operator)
    assert imported.status_code == 422 and imported.json()["error"]["code"] == "validation_error"
    for path in ("/v1/trust/validations", "/v1/trust/workers", "/v1/workers"):
        for query in (f"offset={2**70}", f"limit={2**70}", "limit=0", "offset=-1"):
            response = api.client.get(f"{path}?{query}", headers=api.operator)
            assert response.status_code == 422, (path, query, response.text)
