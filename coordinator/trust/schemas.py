"""The trust area's response models live in shared/trust_types.py; this name stays for its importers."""

from shared.trust_types import Requeued, TokenRevoked, TrustOut, ValidationOut, WorkerState

__all__ = ["Requeued", "TokenRevoked", "TrustOut", "ValidationOut", "WorkerState"]
