"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a coordinator
served by uvicorn, with every request outside the coordinator refused (it must work offline).
Screenshots go to test-artifacts/ (FLYWHEEL_TEST_ARTIFACTS to put them elsewhere)."""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from coordinator.credit.models import CreditGrant
from coordinator.db import transaction, utcnow
from coordinator.pipeline.models import PipelineJob
from coordinator.queue import InProcessQueue
from coordinator.results.models import Trace
from coordinator.trust.models import WorkerTrust
from coordinator.workers.models import Worker
from shared.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.credit.conftest import Served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install -y chromium)"),
    pytest.mark.slow,
]
ARTIFACTS = Path(
    os.environ.get("FLYWHEEL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
HOSTILE = "<img src=x onerror=alert(1)>"  # a volunteer may name itself anything


class Seeder:
    """Campaigns, volunteers and their traces through the API, then ages and states set in the
    database so the page has a day of history to draw."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.http = httpx.Client(base_url=served.url, timeout=60)
        self.operator = {"Authorization": f"Bearer {served.operator_token}"}

    def campaign(self, name: str, problems: int) -> str:
        body = {"name": f"set-{name}", "source": "arithmetic", "limit": problems}
        problem_set = self.http.post("/v1/problem-sets", json=body, headers=self.operator)
        assert problem_set.status_code == 201, problem_set.text
        campaign = {
            "name": name,
            "problem_set_id": problem_set.json()["id"],
            "model": {"name": "flywheel/tiny-arith"},
            "samples_per_problem": 1,
            "sampling": {"max_tokens": 64, "temperature": 1.0},
        }
        response = self.http.post("/v1/campaigns", json=campaign, headers=self.operator)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def volunteer(self, name: str, team: str | None = None) -> dict[str, str]:
        body: dict[str, Any] = {"name": name, "engine": {"name": "transformers"}, "team": team}
        response = self.http.post("/v1/workers/register", json=body)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}

    def work(self, worker: dict[str, str], jobs: int, tokens: int) -> None:
        leased = self.http.post("/v1/leases", json={"max_jobs": jobs}, headers=worker)
        assert leased.status_code == 200, leased.text
        results = [
            {
                "lease_id": job["lease_id"],
                "attempt_id": str(uuid.uuid4()),
                "job_id": job["spec"]["job_id"],
                "text": f"so \\boxed{{{i % 3}}}",
                "completion_token_ids": [1 + (i + k) % 300 for k in range(tokens)],
                "logprobs": [-0.5] * tokens,
                "finish_reason": "stop",
                "engine": {"name": "transformers"},
            }
            for i, job in enumerate(leased.json()["jobs"])
        ]
        response = self.http.post("/v1/results", json={"results": results}, headers=worker)
        assert response.status_code == 200, response.text

    def settle(self) -> None:
        queue = self.served.runtime.queue
        assert isinstance(queue, InProcessQueue)
        assert queue.join(timeout=120)

    def spread_over_a_day(self) -> None:
        """Give the traces (and their grants) submission times over the last 24 hours, busier lately."""
        with transaction(self.served.runtime.sessions) as session:
            ids = list(session.scalars(select(Trace.id).order_by(Trace.id)))
            now = utcnow()
            for i, trace_id in enumerate(ids):
                hours = 23.5 * (1 - math.sqrt((i + 0.5) / len(ids)))
                at = now - timedelta(hours=hours)
                session.execute(update(Trace).where(Trace.id == trace_id).values(created_at=at))
                session.execute(
                    update(CreditGrant).where(CreditGrant.trace_id == trace_id).values(created_at=at)
                )

    def age_grants(self, name: str, days: int) -> None:
        with transaction(self.served.runtime.sessions) as session:
            worker = session.scalar(select(Worker.id).where(Worker.name == name))
            at = utcnow() - timedelta(days=days)
            session.execute(update(CreditGrant).where(CreditGrant.worker_id == worker).values(created_at=at))

    def quarantine(self, name: str) -> None:
        """What a failed validation leaves (docs/trust.md): trust 0, quarantined, the token blocked."""
        with transaction(self.served.runtime.sessions) as session:
            worker = session.scalar(select(Worker.id).where(Worker.name == name))
            session.execute(update(Worker).where(Worker.id == worker).values(banned=True))
            session.add(
                WorkerTrust(
                    worker_id=worker,
                    trust=0,
                    quarantined=True,
                    passed=3,
                    failed=1,
                    skipped=0,
                    unverifiable=0,
                    updated_at=utcnow(),
                )
            )

    def pipeline_jobs(self) -> None:
        """An RL run and a fine-tuning run with the metrics their tasks record (docs/pipeline.md)."""
        history = [
            {
                "version": v,
                "reward": 0.2 + 0.5 * (1 - math.exp(-v / 4)),
                "kl": 0.002 * v**1.3,
                "loss": 0.9 * math.exp(-v / 6),
            }
            for v in range(1, 16)
        ]
        train = [[s, 2.4 * math.exp(-s / 120) + 0.35] for s in range(0, 400, 10)]
        held = [[s, 2.5 * math.exp(-s / 140) + 0.45] for s in range(0, 400, 50)]
        with transaction(self.served.runtime.sessions) as session:
            session.add_all(
                [
                    PipelineJob(
                        id=uuid.uuid4(),
                        name="grpo-arith",
                        kind="grpo",
                        spec={},
                        status="running",
                        stage="v15 trained; rolling out",
                        progress=0.75,
                        metrics={"version": 15, "history": history, "latest": history[-1]},
                    ),
                    PipelineJob(
                        id=uuid.uuid4(),
                        name="sft-distill",
                        kind="sft",
                        spec={},
                        status="done",
                        stage="trained",
                        progress=1.0,
                        metrics={"curve": {"train": train, "eval": held}},
                    ),
                ]
            )


@pytest.fixture
def seeded(http_coordinator: Served) -> Iterator[Seeder]:
    seed = Seeder(http_coordinator)
    seed.campaign("arith-easy", 48)
    seed.campaign("arith-hard", 40)
    teams = {
        "alice": "Red Team",
        "bob": "red team",
        "carol": "Blue Herons",
        "dave": None,
        HOSTILE: "Blue Herons",
    }
    workers = {name: seed.volunteer(name, team) for name, team in teams.items()}
    for name, (jobs, tokens) in {
        "alice": (24, 40),
        "bob": (16, 48),
        "carol": (20, 30),
        "dave": (8, 60),
        HOSTILE: (4, 20),
    }.items():
        seed.work(workers[name], jobs, tokens)
    seed.settle()
    seed.spread_over_a_day()
    seed.age_grants("carol", days=9)
    seed.quarantine("dave")
    seed.pipeline_jobs()
    yield seed
    seed.http.close()


def test_the_dashboard_in_a_real_browser(seeded: Seeder) -> None:
    from playwright.sync_api import Dialog, Route, sync_playwright

    base = seeded.served.url
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []
    alerts: list[str] = []
    errors: list[str] = []

    def only_the_coordinator(route: Route) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    def answer(dialog: Dialog) -> None:
        if dialog.type == "alert":
            alerts.append(dialog.message)
        dialog.accept()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.route("**/*", only_the_coordinator)
        page.on("dialog", answer)
        page.on("pageerror", lambda e: errors.append(str(e)))
        # The browser also logs each refused request (the wrong token's 401s): those are expected.
        page.on(
            "console",
            lambda m: errors.append(m.text) if m.type == "error" and "Failed to load" not in m.text else None,
        )
        try:
            _public_view(page, base)
            _operator_view(page, base, seeded)
        finally:
            browser.close()
    assert outside == [], "the dashboard fetched something from outside the coordinator"
    assert alerts == [] and errors == []


def _public_view(page: Any, base: str) -> None:
    page.goto(base + "/leaderboard")
    page.wait_for_selector("#board-workers tbody tr td.rank")
    workers = page.locator("#board-workers tbody tr")
    assert workers.count() == 4  # dave is quarantined: not shown while it lasts
    assert workers.nth(0).inner_text().split("\t")[1].startswith("alice")
    assert page.locator("#board-workers").inner_text().count(HOSTILE) == 1  # shown as text
    teams = page.locator("#board-teams tbody tr")
    assert [teams.nth(i).inner_text().split("\t")[1] for i in range(teams.count())] == [
        "Red Team",
        "Blue Herons",
    ]
    assert page.locator("#chart-public canvas").count() == 1
    assert page.locator("#totals .card").count() == 6
    page.screenshot(path=str(ARTIFACTS / "dashboard-public.png"), full_page=True)
    page.click("button[data-window=last_7_days]")
    assert "carol" not in page.locator("#board-workers").inner_text()  # her credit is 9 days old
    page.screenshot(path=str(ARTIFACTS / "dashboard-public-7-days.png"), full_page=True)


def _operator_view(page: Any, base: str, seeded: Seeder) -> None:
    page.goto(base + "/#operator")
    page.fill("#token", "fw_not-a-token")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#op-error:not([hidden])")
    assert "token" in page.inner_text("#op-error")
    page.fill("#token", seeded.served.operator_token)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#workers tbody tr .actions")
    assert page.locator("#campaigns tbody tr").count() == 2
    assert page.locator("#queues .card").count() == 6
    assert page.locator("#chart-throughput canvas").count() == 1
    assert page.locator("#pipeline canvas").count() == 2  # the RL run's curves, the fine-tuning run's
    assert "quarantined" in page.locator("#workers").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-operator.png"), full_page=True)

    bob = page.locator("#workers tbody tr", has_text="bob")
    bob.locator("button[data-action=ban]").click()
    page.wait_for_selector("#workers tbody tr:has-text('bob') .badge.banned")
    state = seeded.http.get("/v1/trust/workers", headers=seeded.operator).json()
    assert {r["name"]: r["state"] for r in state}["bob"] == "banned"
    dave = page.locator("#workers tbody tr", has_text="dave")
    dave.locator("button[data-action=restore]").click()
    page.wait_for_selector("#workers tbody tr:has-text('dave') .badge.active")
