"""Re-scoring is model code (ml/rescore.py); its verdict type lives in shared/trust_types.py, and
this name stays for the importers that read only the verdict."""

from shared.trust_types import Outcome

__all__ = ["Outcome"]
