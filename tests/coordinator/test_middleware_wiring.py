"""The rate limiter `create_app` installs takes its settings: behind a trusted proxy each
forwarded client has a budget of its own (`trusted_proxies`, docs/deployment.md; left out, every
client behind the proxy would share the proxy's budget), and with no auth cache (`auth_cache_s=0`)
a token buys no budget of its own."""

from __future__ import annotations

from fastapi.testclient import TestClient

from coordinator.app import create_app
from tests.coordinator.conftest import make_settings, serve

PROXY = ("10.0.0.2", 40000)
JSON = {"Content-Type": "application/json"}


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(database_url: str) -> None:
    settings = make_settings(
        database_url, rate_limit_per_s=0.01, rate_limit_burst=2, trusted_proxies=["10.0.0.0/8"]
    )
    with serve(settings) as api, TestClient(create_app(settings, api.runtime), client=PROXY) as proxied:

        def health(forwarded: str) -> int:
            return proxied.get("/healthz", headers={"X-Forwarded-For": forwarded}).status_code

        assert [health(f"198.51.100.{i}") for i in range(1, 5)] == [200] * 4
        assert [health("198.51.100.9") for _ in range(3)] == [200, 200, 429]


def test_an_untrusted_peer_cannot_claim_other_addresses(database_url: str) -> None:
    settings = make_settings(
        database_url, rate_limit_per_s=0.01, rate_limit_burst=2, trusted_proxies=["10.0.0.0/8"]
    )
    with (
        serve(settings) as api,
        TestClient(create_app(settings, api.runtime), client=("192.0.2.1", 1)) as peer,
    ):
        codes = [
            peer.get("/healthz", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(3)
        ]
    assert codes == [200, 200, 429]


def test_without_an_auth_cache_a_token_spends_its_address_budget(database_url: str) -> None:
    settings = make_settings(database_url, rate_limit_per_s=0.01, rate_limit_burst=3, auth_cache_s=0)
    with serve(settings) as api:
        worker = api.volunteer()  # spends one request of the address's budget
        codes = [api.client.post("/v1/leases", json={}, headers=worker).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_a_body_exactly_at_the_limit_is_read_and_one_byte_more_refused(database_url: str) -> None:
    limit = 2000
    with serve(make_settings(database_url, max_request_bytes=limit)) as api:
        head = b'{"name": "w", "engine": {"name": "transformers"}}'
        at_limit = head + b" " * (limit - len(head))  # JSON allows trailing whitespace
        sizes = {
            n: api.client.post("/v1/workers/register", content=at_limit + b" " * n, headers=JSON).status_code
            for n in (0, 1)
        }
    assert sizes == {0: 201, 1: 413}
