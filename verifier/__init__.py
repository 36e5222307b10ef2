"""Verifiers: score a completion against a problem's hidden spec (math, reasoning-gym, code).

The public entry point is `verifier.api.verify`. This package file stays import-free because it
is also imported inside the sandbox, where only the standard library may be loaded up front.
"""
