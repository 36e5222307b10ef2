"""The dependency rules of DESIGN.md, checked mechanically, plus the instant CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    result = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


MODEL_LIBRARIES = {"torch", "transformers", "peft", "safetensors", "sentence_transformers", "vllm"}
NONE_OF = """
import sys
heavy = set(sys.argv[1].split()) & set(sys.modules)
sys.exit(f"imported {sorted(heavy)}" if heavy else 0)
"""


def _imports_none_of(libraries: set[str], code: str, *args: str) -> None:
    """Run `code` in a fresh interpreter, then fail if any of `libraries` was imported."""
    script = code + NONE_OF
    result = subprocess.run(
        [sys.executable, "-c", script, " ".join(libraries), *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_help_imports_no_heavy_library() -> None:
    code = "from flywheel.cli import main\nmain(['--help'])\n"
    _imports_none_of(MODEL_LIBRARIES | {"sqlalchemy", "fastapi"}, code)


def test_serving_the_coordinator_imports_no_model_library(tmp_path: Path) -> None:
    """What `flywheel coordinator serve` loads (its CLI, then the app with every router) stays free
    of torch: the model code is reached only from tasks, and only when they run."""
    code = """
import contextlib, sys
from flywheel.cli import main
with contextlib.suppress(SystemExit):
    main(["coordinator", "serve", "--help"])
from coordinator.app import create_app
from coordinator.config import Settings
create_app(Settings(database_url=f"sqlite:///{sys.argv[2]}", redis_url=None))
"""
    _imports_none_of(MODEL_LIBRARIES, code, str(tmp_path / "db.sqlite"))
