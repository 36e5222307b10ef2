"""The dependency rules of DESIGN.md, checked mechanically, plus the instant CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
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


PACKAGES = ("shared", "coordinator", "worker", "verifier", "ml", "flywheel")


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.Module, module: str, known: set[str]) -> set[str]:
    """Our modules a module imports, anywhere in its text (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` depends on the submodule, not on the package's own code
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [s for s in subs if s in known] or [node.module]
        else:
            continue
        found |= {name for name in names if name in known and name != module}
    return found


def _import_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]
    known = {_module_of(p) for p in files}
    return {_module_of(p): _imported(ast.parse(p.read_text()), _module_of(p), known) for p in files}


def test_no_two_files_import_each_other() -> None:
    """A file-level circle (each importing the other, even inside a function) is a sign the two
    share a concern that belongs in a third module."""
    graph = _import_graph()
    circles = sorted(
        {tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, ())}
    )
    assert circles == []


STATUS_WORDS = {
    "queued",
    "leased",
    "submitted",
    "running",
    "paused",
    "waiting",
    "cancelled",
    "done",
    "failed",
}
STATUS_WORDS |= {"skipped", "recheck", "passed", "unverifiable", "pending", "accepted", "rejected"}


def _literals(node: ast.AST) -> Iterator[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _literals(element)


def _compared(node: ast.AST) -> list[ast.AST]:
    """What a comparison or an SQL `IN` compares a value with."""
    if isinstance(node, ast.Compare):
        return [node.left, *node.comparators]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("in_", "not_in")
    ):
        return list(node.args)
    return []


def test_statuses_are_compared_as_enums_not_bare_strings() -> None:
    """The coordinator names a status by its enum (campaigns, jobs, traces, validations, pipeline
    jobs); only the models that define them spell the words."""
    found = []
    for path in (ROOT / "coordinator").rglob("*.py"):
        if "migrations" in path.parts or path.name == "models.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            for side in _compared(node):
                found += [f"{path.relative_to(ROOT)}:{c.lineno} {c.value!r}" for c in _literals(side)
                          if c.value in STATUS_WORDS]  # fmt: skip
    assert found == []
