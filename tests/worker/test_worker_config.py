"""Worker configuration: flags over environment over defaults, bounds, engine requirements."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.assets import TINY_MODEL_NAME
from worker.config import default_spool, load_config
from worker.errors import ConfigError

BASE = {"coordinator": "http://coord:8000/"}


def test_defaults() -> None:
    config = load_config(BASE, environ={})
    assert config.coordinator == "http://coord:8000"
    assert config.engine == "transformers" and config.model == TINY_MODEL_NAME
    assert config.token is None
    assert config.spool_dir == default_spool(config.name)


def test_environment_fills_what_flags_leave_out() -> None:
    env = {
        "FLYWHEEL_WORKER_COORDINATOR": "https://env.example",
        "FLYWHEEL_WORKER_TOKEN": "from-env",
        "FLYWHEEL_WORKER_BATCH_SIZE": "4",
        "FLYWHEEL_WORKER_ONCE": "true",
        "FLYWHEEL_WORKER_SPOOL": "/tmp/spool-env",
    }
    config = load_config({"batch_size": 2, "coordinator": None}, environ=env)
    assert config.coordinator == "https://env.example"
    assert config.token is not None and config.token.get_secret_value() == "from-env"
    assert "from-env" not in repr(config)  # tokens never end up in logs
    assert config.batch_size == 2 and config.once is True
    assert config.spool_dir == Path("/tmp/spool-env")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_jobs": 10_000}, "max_jobs"),
        ({"exit_when_idle": -1}, "exit_when_idle"),
        ({"device": "tpu"}, "device"),
        ({"engine": "openai"}, "openai-base-url"),
        ({"coordinator": "coord:8000"}, "http"),
    ],
)
def test_invalid_values_are_config_errors(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({**BASE, **flags}, environ={})


def test_missing_coordinator_is_reported() -> None:
    with pytest.raises(ConfigError, match="coordinator"):
        load_config({}, environ={})
