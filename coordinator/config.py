"""Coordinator settings, read from the environment (no instance is created at import time)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can tune; `FLYWHEEL_*` variables, plus the usual `DATABASE_URL`/`REDIS_URL`."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = Field(
        default="sqlite:///.flywheel/flywheel.db",
        validation_alias=AliasChoices("DATABASE_URL", "FLYWHEEL_DATABASE_URL"),
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "FLYWHEEL_REDIS_URL")
    )
    data_dir: Path = Path(".flywheel")
    lease_ttl_s: float = Field(default=300.0, gt=0, le=86_400)
    heartbeat_interval_s: float = Field(default=30.0, gt=0, le=3_600)
    max_in_flight_per_worker: int = Field(default=256, ge=1, le=100_000)
    initial_in_flight_per_worker: int = Field(
        default=16,
        ge=1,
        le=100_000,
        description=(
            "jobs a new volunteer may hold at once; each of its traces that comes back usable adds"
            " one, up to max_in_flight_per_worker, and a failed validation takes it back to this"
        ),
    )
    max_unverifiable_per_worker: int = Field(
        default=32,
        ge=0,
        description="unverifiable traces a worker may store; beyond it each is refused (its job returned)",
    )
    verify_budget_s_per_hour: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "verification seconds a volunteer's traces may cost per hour; beyond it the volunteer's"
            " leases are refused with 429 until its hour is over; 0: no budget"
        ),
    )
    lease_max_lifetime_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        le=7 * 86_400,
        description="a lease ends this long after it was granted, however often it is heartbeated",
    )
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Security (docs/protocol.md, "Security"): who may register, and how fast one address may.
    registration_mode: Literal["open", "invite", "closed"] | None = Field(
        default=None,
        description="open: anyone may register; invite: only with one of registration_invite_codes; "
        "closed: operators create tokens (default: open, or closed where the older "
        "FLYWHEEL_REGISTRATION_OPEN=false is set)",
    )
    registration_open: bool = Field(default=True, description="deprecated: use registration_mode")
    registration_invite_codes: list[str] = Field(
        default_factory=list, description="codes accepted in invite mode (JSON list in the environment)"
    )
    registration_per_hour: float = Field(
        default=30.0, ge=0, description="registrations per hour per client address, sustained (0: no limit)"
    )
    registration_burst: int = Field(
        default=30, ge=1, description="registrations one address may send at once"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For names the client; "
        "empty: the connecting address is the client",
    )
    auto_migrate: bool = Field(default=True, description="apply migrations when the API starts")
    db_pool_size: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="database connections per API process; also the size of its thread pool for endpoints",
    )
    auth_cache_s: float = Field(
        default=60.0,
        ge=0,
        le=3_600,
        description="remember a token's holder this long per API process (0: look it up on every request); "
        "a ban reaches other API processes within this time",
    )
    last_seen_every_s: float = Field(
        default=30.0, ge=0, le=3_600, description="resolution of a worker's last_seen_at (0: every request)"
    )
    inprocess_task_threads: int = Field(default=2, ge=1, le=64)
    requeue_pending_after_s: float = Field(
        default=120.0, ge=1, description="re-enqueue verification of traces still pending this long"
    )
    verify_queue: str = "verify"
    default_queue: str = "default"
    train_queue: str = "train"
    # Trust (docs/trust.md): spot-check validation by re-scoring, and per-token rate limits.
    validation_enabled: bool = Field(
        default=True, description="spot-check traces by re-scoring (off: nothing is validated or withdrawn)"
    )
    validate_queue: str = "validate"
    validation_floor: float = Field(
        default=0.02, gt=0, le=1, description="lowest spot-check probability, for the most trusted worker"
    )
    validation_device: str = Field(default="auto", description="cpu, cuda, cuda:N or auto")
    validation_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    validation_batch: int = Field(default=32, ge=1, le=1024, description="traces per validation task")
    validation_noise: dict[str, dict[str, Annotated[float, Field(gt=0, le=100)]]] = Field(
        default_factory=dict,
        description="per model name, each compute dtype's honest logit noise, measured with "
        "`python -m bench.trust generate/check --model` (docs/trust.md); unlisted models use the "
        "bundled model's table",
    )
    evidence_false_alarm: float = Field(
        default=1e-6,
        gt=0,
        lt=1,
        description="bound on an honest worker's quarantine by its evidence, "
        "per lifetime of evidence_lifetime validations (sets the CUSUM threshold, docs/trust.md)",
    )
    evidence_lifetime: int = Field(
        default=100_000, ge=1, description="spot-checked validations in a worker's lifetime, for the bound"
    )
    rate_limit_per_s: float = Field(
        default=20.0, ge=0, description="requests per second per token, sustained (0: no limit)"
    )
    rate_limit_burst: int = Field(default=100, ge=1, description="requests a token may send at once")

    @model_validator(mode="after")
    def _invite_mode_has_codes(self) -> Settings:
        if self.registration == "invite" and not self.registration_invite_codes:
            raise ValueError("registration_mode=invite needs registration_invite_codes")
        return self

    @property
    def registration(self) -> Literal["open", "invite", "closed"]:
        """The registration mode in force (`registration_mode`, else the older boolean)."""
        if self.registration_mode is not None:
            return self.registration_mode
        return "open" if self.registration_open else "closed"

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        path = self.database_url.split("///", 1)[-1]
        return None if path in {"", ":memory:"} else Path(path)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
