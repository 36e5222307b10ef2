"""Worker configuration: flags over environment over defaults, bounds, engine requirements."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.assets import TINY_MODEL_NAME
from worker.config import control_state_dir, default_spool, default_state_dir, load_config
from worker.engines import select_gpus
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"gpus": "0,x"}, "GPU indices"),
        ({"gpus": "1,1"}, "GPU indices"),
        ({"engine": "vllm", "gpus": "0,1"}, "one GPU"),
        ({"device": "cpu", "gpu_memory_fraction": 0.5}, "GPU device"),
        ({"gpu_memory_fraction": 1.5}, "gpu_memory_fraction"),
        ({"schedule": "mon-fri 9-17"}, "schedule"),
        ({"batch_size": "many"}, "batch_size"),
    ],
)
def test_volunteer_controls_are_validated(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({**BASE, **flags}, environ={})


def test_config_file_under_environment_under_flags(tmp_path: Path) -> None:
    file = tmp_path / "worker.toml"
    file.write_text(
        'coordinator = "http://file"\nbatch-size = 4\nmax_leases = 10\nschedule = "22:00-07:00"\n'
    )
    env = {"FLYWHEEL_WORKER_CONFIG": str(file), "FLYWHEEL_WORKER_MAX_LEASES": "12"}
    config = load_config({"schedule": None, "batch_size": 2}, environ=env)
    assert config.coordinator == "http://file" and config.schedule == "22:00-07:00"
    assert config.max_leases == 12 and config.batch_size == 2
    assert load_config({"config": file}, environ={}).batch_size == 4


def test_state_directory_for_control_commands(tmp_path: Path) -> None:
    assert control_state_dir({"name": "box 1"}, environ={}) == default_state_dir("box 1")
    assert control_state_dir({}, environ={"FLYWHEEL_WORKER_STATE_DIR": str(tmp_path)}) == tmp_path
    file = tmp_path / "w.toml"
    file.write_text('name = "from-file"\ncoordinator = "http://x"\n')
    assert control_state_dir({"config": file}, environ={}) == default_state_dir("from-file")
    assert default_state_dir("box 1").name == "box_1"


def test_gpus_select_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    select_gpus(load_config({**BASE, "gpus": " 2, 0 "}, environ={}))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,0"


def test_serving_policy_versions_is_opt_in_with_its_own_cache(tmp_path: Path) -> None:
    from worker.cli import build_parser

    config = load_config({**BASE, "state_dir": tmp_path}, environ={})
    assert config.serve_policies is False and config.policy_cache_dir == tmp_path / "policies"
    argv = ["run", "--serve-policies", "--policy-cache", str(tmp_path / "w")]
    flags = vars(build_parser().parse_args(argv))
    flags.pop("command")
    config = load_config({**flags, **BASE}, environ={"FLYWHEEL_WORKER_POLICY_CACHE_GB": "2.5"})
    assert config.serve_policies and config.policy_cache_dir == tmp_path / "w"
    assert config.policy_cache_bytes == int(2.5 * 2**30)
    off = vars(build_parser().parse_args(["run", "--no-serve-policies"]))
    off.pop("command")
    assert not load_config({**off, **BASE}, environ={"FLYWHEEL_WORKER_SERVE_POLICIES": "1"}).serve_policies
    with pytest.raises(ConfigError, match="serve-policies"):
        openai = {"engine": "openai", "openai_base_url": "http://x"}
        load_config({**BASE, **openai, "serve_policies": True}, environ={})
