"""One error vocabulary: every error a component raises derives from that component's base, and an
error's HTTP status, wherever it has one, is called `status_code`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest

from coordinator.errors import FlywheelError
from ml.errors import MLError
from verifier.errors import VerifierError
from worker.errors import WorkerError

BASES: dict[str, type[Exception]] = {
    "coordinator": FlywheelError,
    "worker": WorkerError,
    "verifier": VerifierError,
    "ml": MLError,
}
# Signals raised and caught within one module family, never seen by a caller of the component.
INTERNAL = {
    "verifier.fastmath.parse.Unsupported": "fastmath falls back to math-verify on it",
    "verifier.values.ValueFormatError": "verifier.code turns it into a spec error or a zero score",
    "verifier.scoring.safe_eval.UnsafeExpression": "the scoring service answers it as a zero score",
}
# Modules that need what CI does not install, or that start processes when imported.
SKIP_MODULES = ("worker.engines.vllm", "verifier.scoring", "coordinator.migrations")


def _modules(package: str) -> Iterator[str]:
    root = importlib.import_module(package)
    yield package
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not info.name.startswith(SKIP_MODULES):
            yield info.name


def _errors(package: str) -> Iterator[tuple[str, type[BaseException]]]:
    for name in _modules(package):
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
            ):
                yield f"{name}.{attr}", value


@pytest.mark.parametrize("package", sorted(BASES))
def test_every_error_derives_from_its_components_base(package: str) -> None:
    found = dict(_errors(package))
    assert found, f"no error classes found in {package}"
    strays = [n for n, cls in found.items() if n not in INTERNAL and not issubclass(cls, BASES[package])]
    assert strays == [], f"errors outside {BASES[package].__name__}: {strays}"


@pytest.mark.parametrize("package", sorted(BASES))
def test_the_http_status_is_always_status_code(package: str) -> None:
    other = [n for n, cls in _errors(package) for attr in ("status", "http_status") if hasattr(cls, attr)]
    assert other == [], f"an HTTP status under another name: {other}"
