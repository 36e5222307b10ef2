"""The model package's errors, all under one base class:

    MLError
    ├── DeviceUnavailable (also RuntimeError)   the device asked for is not there
    ├── ModelUnavailable                        a model cannot be loaded (missing, no memory, bad revision)
    ├── WeightsMisfit (also ValueError)         a weights file that is not this model's
    ├── NoChatTemplate (also ValueError)        a tokenizer that cannot render chat messages
    └── LaunchFailed (also RuntimeError)        a multi-process training run (torchrun) exited with an error

Callers catch `MLError` for "the model side failed", or one class for one remedy.
"""

from __future__ import annotations


class MLError(Exception):
    """Base of every error the model package raises on purpose."""


class DeviceUnavailable(MLError, RuntimeError):
    """The device asked for is not there (CUDA asked for where torch sees none)."""


class ModelUnavailable(MLError):
    """The validation process cannot load the claimed model (missing, no memory, bad revision)."""


class WeightsMisfit(MLError, ValueError):
    """A weights file whose tensors are not this model's (another architecture or size)."""

    def __init__(self, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.missing = missing
        self.unexpected = unexpected


class NoChatTemplate(MLError, ValueError):
    """The tokenizer cannot render chat messages."""


class LaunchFailed(MLError, RuntimeError):
    """torchrun, or one of the training processes it started, exited with an error."""
