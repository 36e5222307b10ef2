"""Handlers that run inside sandboxed scoring services (see verifier/pool.py)."""
