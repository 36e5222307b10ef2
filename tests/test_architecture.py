"""The dependency rules of DESIGN.md, checked mechanically, plus the instant CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    result = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_help_imports_no_heavy_library() -> None:
    code = (
        "import sys; from flywheel.cli import main; main(['--help']);"
        "heavy = {'torch', 'transformers', 'vllm', 'sqlalchemy', 'fastapi'} & set(sys.modules);"
        "sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0
