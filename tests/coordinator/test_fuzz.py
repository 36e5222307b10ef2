"""Schemathesis against the coordinator's own OpenAPI schema, over HTTP to a real uvicorn server.

Every operation gets a bounded number of generated requests with an operator token; any 5xx, or a
status the schema does not document, fails. Token rotation and bans are left out: a generated call
could revoke or ban the very token the run uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation

from tests.coordinator.conftest import make_settings
from tests.coordinator.http_server import serve_http

EXAMPLES = 8  # per operation: enough to hit bounds and empty strings, quick enough for CI


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A coordinator on SQLite served by uvicorn in a thread; its base URL and an operator token."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    # No rate limits: the run sends hundreds of requests from one address.
    config = make_settings(f"sqlite:///{path}", rate_limit_per_s=0, registration_per_hour=0)
    for served in serve_http(config):
        yield served.url, served.operator_token


@pytest.fixture(scope="module")
def api_schema(coordinator: tuple[str, str]) -> schemathesis.BaseSchema:
    base_url, _ = coordinator
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    return schema.exclude(path_regex=r"/(token|ban)$")


def _fuzz(operation: APIOperation, base_url: str, token: str) -> None:
    """Hypothesis-driven requests for one operation; any failed check raises with its case."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            checks=[not_a_server_error, status_code_conformance],
            timeout=60,
        )

    run()


def test_no_server_errors_and_only_documented_statuses(
    api_schema: schemathesis.BaseSchema, coordinator: tuple[str, str]
) -> None:
    # Driven through Hypothesis directly rather than schemathesis' pytest plugin, whose
    # collection hooks follow pytest's private attributes and break when pytest changes them.
    base_url, token = coordinator
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an operation schemathesis cannot read: {result}"
        operations.append(result.ok())
    assert len(operations) > 20, "the schema lost its operations"
    for operation in operations:
        try:
            _fuzz(operation, base_url, token)
        except Exception as error:
            error.add_note(f"operation: {operation.label}")
            raise
