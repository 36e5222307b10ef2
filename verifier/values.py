"""Typed values that cross the sandbox boundary, and the strict rules that compare them.

Inside the sandbox a function's return value is encoded with `encode` into plain JSON; outside,
`decode` rebuilds it and `same` compares it with the expected value. Only exact built-in types
are accepted (`type(x) is int`, never `isinstance`), so an object whose `__eq__` always returns
True, or an `int` subclass with a forged comparison, cannot even be reported.

Encoding: None, bool, int, float, str and list are JSON themselves; other containers are tagged
objects with one key: {"$tuple": [...]}, {"$dict": [[k, v], ...]}, {"$set": [...]},
{"$frozenset": [...]}, {"$bytes": "hex"}, {"$complex": [re, im]}.

This module is standard library only: it is imported by the runner inside the sandbox.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64
DEFAULT_FLOAT_TOL = 1e-6
_TAGS = ("$tuple", "$dict", "$set", "$frozenset", "$bytes", "$complex")


class ValueFormatError(ValueError):
    """A value that cannot be encoded or decoded under the typed rules."""


def encode(value: Any, depth: int = 0) -> Any:
    """Plain-JSON form of `value`; raises ValueFormatError for any type outside the rules."""
    if depth > MAX_DEPTH:
        raise ValueFormatError("value nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind is tuple:
        return {"$tuple": [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"$dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        tag = "$set" if kind is set else "$frozenset"
        return {tag: [encode(item, depth + 1) for item in value]}
    if kind is bytes:
        return {"$bytes": value.hex()}
    if kind is complex:
        return {"$complex": [value.real, value.imag]}
    raise ValueFormatError(f"unsupported type {kind.__name__}")


def decode(data: Any, depth: int = 0) -> Any:
    """Inverse of `encode`, validating every node (the data comes from untrusted code)."""
    if depth > MAX_DEPTH:
        raise ValueFormatError("value nested too deeply")
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode(item, depth + 1) for item in data]
    if kind is not dict or len(data) != 1:
        raise ValueFormatError("malformed value")
    ((tag, body),) = data.items()
    return _decode_tagged(tag, body, depth)


def _decode_tagged(tag: str, body: Any, depth: int) -> Any:
    if tag == "$bytes" and type(body) is str:
        try:
            return bytes.fromhex(body)
        except ValueError as exc:
            raise ValueFormatError("malformed bytes") from exc
    if tag not in _TAGS or type(body) is not list:
        raise ValueFormatError("malformed value")
    if tag == "$complex":
        if len(body) != 2 or not all(type(x) in (int, float) for x in body):
            raise ValueFormatError("malformed complex")
        return complex(body[0], body[1])
    if tag == "$dict":
        pairs = [decode(pair, depth + 1) for pair in body]
        if not all(type(p) is list and len(p) == 2 for p in pairs):
            raise ValueFormatError("malformed dict")
        return _build(dict, [(k, v) for k, v in pairs])
    items = [decode(item, depth + 1) for item in body]
    if tag == "$tuple":
        return tuple(items)
    return _build(set if tag == "$set" else frozenset, items)


def _build(kind: type, items: list[Any]) -> Any:
    try:
        return kind(items)
    except TypeError as exc:  # an unhashable key or member
        raise ValueFormatError(f"malformed {kind.__name__}") from exc


def dumps(value: Any) -> str:
    return json.dumps(encode(value), separators=(",", ":"))


def loads(text: str) -> Any:
    """Parse untrusted JSON text into a typed value; any failure is a ValueFormatError."""
    try:
        return decode(json.loads(text))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and int-digit limits are ValueErrors
        raise ValueFormatError(str(exc)[:200]) from exc


def same(expected: Any, actual: Any, float_tol: float = DEFAULT_FLOAT_TOL) -> bool:
    """Strict, typed equality: no coercion except between int and float; floats within tolerance."""
    ek, ak = type(expected), type(actual)
    if ek is bool or ak is bool:
        return ek is ak and expected == actual
    if ek in (int, float) and ak in (int, float):
        return _same_number(expected, actual, float_tol)
    if ek is not ak:
        return False
    if ek is complex:
        return _same_number(expected.real, actual.real, float_tol) and _same_number(
            expected.imag, actual.imag, float_tol
        )
    if ek in (list, tuple):
        return len(expected) == len(actual) and all(
            same(e, a, float_tol) for e, a in zip(expected, actual, strict=True)
        )
    if ek is dict:
        return expected.keys() == actual.keys() and all(
            same(v, actual[k], float_tol) for k, v in expected.items()
        )
    # None, str, bytes, set, frozenset: plain data only, so == is trustworthy here.
    return bool(expected == actual)


def _same_number(expected: float, actual: float, tol: float) -> bool:
    if type(expected) is int and type(actual) is int:
        return expected == actual
    try:
        e, a = float(expected), float(actual)
    except OverflowError:  # an int beyond float range equals no float
        return False
    if math.isnan(e) or math.isnan(a):
        return math.isnan(e) and math.isnan(a)
    if math.isinf(e) or math.isinf(a):
        return e == a
    return math.isclose(e, a, rel_tol=tol, abs_tol=tol)
