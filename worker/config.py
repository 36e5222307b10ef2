"""Worker configuration: one frozen value object from flags over `FLYWHEEL_WORKER_*` environment
variables over a TOML config file over defaults."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

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
from worker.schedule import Schedule

# The most jobs one engine batch may hold. Lease, release and result requests stay within the
# wire's MAX_BATCH each; an engine that schedules its own memory (vLLM) runs more at once than that.
MAX_ENGINE_BATCH = 2048
ENV_PREFIX = "FLYWHEEL_WORKER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
EngineName = Literal["transformers", "vllm", "openai"]


def default_name() -> str:
    return (socket.gethostname() or "worker")[:MAX_NAME]


def default_state_dir(name: str) -> Path:
    """Per-name state, so two daemons on one host never share (and lock each other out of) one."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return base / "flywheel" / "worker" / safe


def default_spool(name: str) -> Path:
    return default_state_dir(name) / "spool"


def default_config_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "flywheel" / "worker.toml"


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
    # No model named anywhere (flag, environment, file): pick one with jobs waiting (worker/picker.py).
    choose_model: bool = False
    device: Literal["cpu", "cuda", "auto"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=MAX_ENGINE_BATCH)] | Literal["auto"] = "auto"
    max_leases: int | None = Field(default=None, ge=1, le=100_000)
    max_jobs: int | None = Field(default=None, ge=1, le=MAX_BATCH)
    spool: Path | None = None
    state_dir: Path | None = None
    gpus: str | None = Field(default=None, max_length=256)
    gpu_memory_fraction: float | None = Field(default=None, gt=0, le=1)
    schedule: str = Field(default="", max_length=1024)
    max_jobs_per_day: int | None = Field(default=None, ge=1, le=100_000_000)
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
    serve_policies: bool = False
    policy_cache: Path | None = None
    policy_cache_versions: int = Field(default=3, ge=1, le=1000)
    policy_cache_gb: float = Field(default=100.0, gt=0, le=1_000_000)
    policy_poll_s: float = Field(default=10.0, gt=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("coordinator", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        Schedule.parse(value)  # raises ValueError with the bad entry
        return value.strip()

    @field_validator("gpus")
    @classmethod
    def _gpu_list(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = [p.strip() for p in value.split(",")]
        if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
            raise ValueError("must be GPU indices separated by commas, e.g. 0 or 0,2")
        return ",".join(parts)

    @model_validator(mode="after")
    def _engine_needs(self) -> WorkerConfig:
        if self.engine == "openai" and not self.openai_base_url:
            raise ValueError("--engine openai needs --openai-base-url")
        if self.engine == "vllm" and len(self.gpu_indices) > 1:
            raise ValueError("the vllm engine runs on one GPU; start one worker (own --name) per GPU")
        if self.device == "cpu" and (self.gpus or self.gpu_memory_fraction):
            raise ValueError("--gpus and --gpu-memory-fraction need a GPU device, not --device cpu")
        if self.engine == "openai" and self.serve_policies:
            raise ValueError("--serve-policies needs an engine that loads weights: transformers or vllm")
        return self

    @property
    def gpu_indices(self) -> list[int]:
        return [int(p) for p in self.gpus.split(",")] if self.gpus else []

    @property
    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else default_state_dir(self.name)

    @property
    def spool_dir(self) -> Path:
        return self.spool if self.spool is not None else self.state_path / "spool"

    @property
    def policy_cache_dir(self) -> Path:
        return self.policy_cache if self.policy_cache is not None else self.state_path / "policies"

    @property
    def policy_cache_bytes(self) -> int:
        return int(self.policy_cache_gb * (1 << 30))

    @property
    def parsed_schedule(self) -> Schedule:
        return Schedule.parse(self.schedule)


def env_values(environ: Mapping[str, str], fields: Mapping[str, Any]) -> dict[str, str]:
    """The `FLYWHEEL_WORKER_<FIELD>` variables that name a known field."""
    found = {}
    for field in fields:
        value = environ.get(ENV_PREFIX + field.upper())
        if value is not None and value != "":
            found[field] = value
    return found


def file_values(path: Path) -> dict[str, Any]:
    """The settings of a TOML config file; keys are option names (dashes or underscores)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return {key.replace("-", "_"): value for key, value in data.items()}


def config_file(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """--config, else $FLYWHEEL_WORKER_CONFIG, else the default file when it exists."""
    if flag is not None:
        return flag
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = default_config_file()
    return default if default.is_file() else None


def load_config(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Merge flags (None = not given) over the environment over the config file; raise ConfigError
    with every problem."""
    env = os.environ if environ is None else environ
    flags = dict(flags)
    path = config_file(flags.pop("config", None), env)
    values: dict[str, Any] = file_values(path) if path is not None else {}
    from_env = env_values(env, WorkerConfig.model_fields)
    from_env.pop("retry", None)
    values.update(from_env)
    values.update({k: v for k, v in flags.items() if v is not None})
    values.setdefault("choose_model", "model" not in values)
    try:
        return WorkerConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        where = f" (config file {path})" if path is not None else ""
        raise ConfigError(f"invalid worker configuration{where}: {problems}") from exc


def control_state_dir(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Path:
    """The state directory a running daemon uses, for `pause|resume|status`: found the way the
    daemon finds it (--state-dir, else per --name), from flags, environment and config file,
    without needing the rest of a valid run configuration."""
    env = os.environ if environ is None else environ
    path = config_file(flags.get("config"), env)
    values: dict[str, Any] = file_values(path) if path is not None else {}
    values.update(env_values(env, {"state_dir": None, "name": None}))
    values.update({k: v for k in ("state_dir", "name") if (v := flags.get(k)) is not None})
    if values.get("state_dir"):
        return Path(values["state_dir"])
    return default_state_dir(str(values.get("name") or default_name()))
