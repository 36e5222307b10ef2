"""The worker's credit as the coordinator counts it, for `flywheel worker status`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.protocol import CreditOut
from worker.config import RetryPolicy
from worker.errors import ConfigError, WorkerError

TIMEOUT_S = 5.0  # status is interactive: one short try, no retries


def fetch_credit(flags: Mapping[str, Any]) -> CreditOut | str:
    """The credit of the token the daemon's configuration names (flags, environment, config file),
    or why it could not be read."""
    from worker.client import CoordinatorClient
    from worker.config import load_config

    try:
        config = load_config({k: flags.get(k) for k in ("config", "name", "state_dir")})
    except ConfigError as exc:
        return exc.message
    if config.token is None:
        return "no token configured"
    token = config.token.get_secret_value()
    retry = RetryPolicy(attempts=1)
    try:
        with CoordinatorClient(config.coordinator, token, retry=retry, timeout_s=TIMEOUT_S) as client:
            return client.credit()
    except WorkerError as exc:
        return f"coordinator unavailable: {exc.message}"


def credit_rows(credit: CreditOut | str) -> list[tuple[str, str]]:
    if isinstance(credit, str):
        return [("credit", f"unknown ({credit})")]
    rank = f"#{credit.rank}" if credit.rank is not None else "not ranked yet"
    return [
        ("credit", f"{format_credit(credit.credit)} ({format_credit(credit.credit_7d)} in the last 7 days)"),
        ("credited tokens", f"{credit.tokens:,} ({credit.tokens_7d:,} in the last 7 days)"),
        ("leaderboard", rank),
        ("team", credit.team or "none"),
    ]


def format_credit(value: float) -> str:
    """Credit is in TFLOPs: a small model's traces earn fractions, so small values keep digits."""
    if value == 0:
        return "0"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"


def render_credit(credit: CreditOut | str) -> Any:
    from rich.table import Table

    table = Table(title="credit (1 = 1 TFLOP of accepted generation)", show_header=False,
                  title_justify="left", expand=False)  # fmt: skip
    table.add_column(style="bold")
    table.add_column()
    for name, value in credit_rows(credit):
        table.add_row(name, value)
    return table
