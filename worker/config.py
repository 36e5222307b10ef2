"""Worker configuration: one frozen value object built from flags over `FLYWHEEL_WORKER_*` env vars."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.assets import TINY_MODEL_NAME
from shared.protocol import MAX_BATCH, MAX_NAME
from worker.errors import ConfigError

ENV_PREFIX = "FLYWHEEL_WORKER_"
EngineName = Literal["transformers", "vllm", "openai"]


def default_name() -> str:
    return (socket.gethostname() or "worker")[:MAX_NAME]


def default_spool(name: str) -> Path:
    """Per-name spool, so two daemons on one host never share (and lock each other out of) one."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return base / "flywheel" / "worker" / safe / "spool"


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter for network errors, 5xx and 429."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(default=6, ge=1, le=100, description="tries per request, the first included")
    base_delay_s: float = Field(default=0.5, gt=0, le=60)
    max_delay_s: float = Field(default=30.0, gt=0, le=3600)

    def delay(self, retry: int, jitter: float) -> float:
        """Delay before retry number `retry` (0-based); `jitter` in [0, 1) spreads workers apart."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2**retry)
        return ceiling * (0.5 + 0.5 * jitter)


class WorkerConfig(BaseModel):
    """Everything `flywheel worker run` needs; flags win over environment, both over defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coordinator: str = Field(min_length=1, max_length=2048)
    token: SecretStr | None = None
    name: str = Field(default_factory=default_name, min_length=1, max_length=MAX_NAME)
    engine: EngineName = "transformers"
    model: str = Field(default=TINY_MODEL_NAME, min_length=1, max_length=MAX_NAME)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH)
    max_jobs: int = Field(default=16, ge=1, le=MAX_BATCH)
    spool: Path | None = None
    once: bool = False
    exit_when_idle: float | None = Field(default=None, ge=0, le=86_400)
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    poll_interval_s: float = Field(default=5.0, gt=0, le=600)
    request_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    openai_base_url: str | None = Field(default=None, max_length=2048)
    openai_model: str | None = Field(default=None, max_length=256)
    openai_api_key: SecretStr | None = None
    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("coordinator", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _engine_needs(self) -> WorkerConfig:
        if self.engine == "openai" and not self.openai_base_url:
            raise ValueError("--engine openai needs --openai-base-url")
        return self

    @property
    def spool_dir(self) -> Path:
        return self.spool if self.spool is not None else default_spool(self.name)


def env_values(environ: Mapping[str, str], fields: Mapping[str, Any]) -> dict[str, str]:
    """The `FLYWHEEL_WORKER_<FIELD>` variables that name a known field."""
    found = {}
    for field in fields:
        value = environ.get(ENV_PREFIX + field.upper())
        if value is not None and value != "":
            found[field] = value
    return found


def load_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Merge flags (None = not given) over the environment; raise ConfigError with every problem."""
    values: dict[str, Any] = env_values(os.environ if environ is None else environ, WorkerConfig.model_fields)
    values.pop("retry", None)
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return WorkerConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid worker configuration: {problems}") from exc
