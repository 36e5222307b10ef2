"""docker-compose.yml: valid for Compose with the documented .env, and in step with the settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from coordinator.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {"postgres", "redis", "migrate", "api", "tasks", "validators", "prometheus"}
COORDINATOR_SERVICES = {"migrate", "api", "tasks", "validators"}


def _setting_names() -> set[str]:
    """Every environment name `Settings` reads: FLYWHEEL_<field>, or a field's aliases."""
    names: set[str] = set()
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        else:
            names.add(f"FLYWHEEL_{field_name}".upper())
    return names


def _compose_config(env_file: Path, *args: str) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is not installed (Debian: apt-get install docker-compose)")
    command = [binary, "--env-file", str(env_file), "-f", str(COMPOSE), *args, "config"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_compose_config_is_valid_with_the_example_env(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, env)
    config = _compose_config(env, "--profile", "gpu")
    services = config["services"]
    assert set(services) == SERVICES
    assert services["validators"]["profiles"] == ["gpu"]
    devices = services["validators"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert all("profiles" not in services[name] for name in SERVICES - {"validators"})
    assert services["migrate"]["command"] == ["flywheel", "coordinator", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "postgresql+psycopg://" in services["api"]["environment"]["DATABASE_URL"]


def test_compose_refuses_to_start_without_the_database_password(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    env.write_text("\n".join(line for line in lines if not line.startswith("POSTGRES_PASSWORD=")) + "\n")
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is not installed (Debian: apt-get install docker-compose)")
    command = [binary, "--env-file", str(env), "-f", str(COMPOSE), "config"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr


def test_the_prometheus_config_scrapes_the_api_metrics() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    mounts = compose["services"]["prometheus"]["volumes"]
    source = next(m.split(":")[0] for m in mounts if m.endswith("/etc/prometheus/prometheus.yml:ro"))
    scrape = yaml.safe_load((ROOT / source).read_text(encoding="utf-8"))["scrape_configs"]
    assert any(
        job["metrics_path"] == "/metrics" and "api:8000" in job["static_configs"][0]["targets"]
        for job in scrape
    )


def test_every_flywheel_name_in_the_compose_file_and_env_example_is_a_setting() -> None:
    settings = _setting_names()
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for name in COORDINATOR_SERVICES:
        environment = compose["services"][name]["environment"]
        unknown = set(environment) - settings
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of coordinator/config.py"
    texts = {path.name: path.read_text(encoding="utf-8") for path in (COMPOSE, ENV_EXAMPLE)}
    for file, text in texts.items():
        unknown = set(re.findall(r"\bFLYWHEEL_[A-Z0-9_]+", text)) - settings
        assert not unknown, f"{file}: {sorted(unknown)} are not settings of coordinator/config.py"


def _example_values() -> dict[str, str]:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return {name: value.strip('"') for name, value in re.findall(r"^([A-Z0-9_]+)=(.*)$", text, re.M)}


def test_every_variable_the_compose_file_substitutes_is_documented_with_its_default() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    example = _example_values()
    assert set(re.findall(r"\$\{([A-Z0-9_]+)", text)) - set(example) == set()
    defaults = dict(re.findall(r"\$\{([A-Z0-9_]+):-([^}]*)\}", text))
    assert {name: example[name] for name in defaults} == defaults


def test_the_example_env_holds_the_coordinators_own_defaults() -> None:
    """A value the coordinator would refuse (a typo, a stale name) would stop every service at
    start; one that differs from config.py would make the example lie about the defaults."""
    names = [name for name in _example_values() if name.startswith("FLYWHEEL_")]
    from_file = Settings(_env_file=ENV_EXAMPLE)
    default = Settings()
    assert from_file.registration == default.registration
    for name in names:
        field = name.removeprefix("FLYWHEEL_").lower()
        if field != "registration_mode":
            assert getattr(from_file, field) == getattr(default, field), name
