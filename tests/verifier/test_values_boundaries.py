"""Boundaries of the typed value rules: tolerance edges, exact integers, NaN, nesting depth, forged shapes.

Each case is a verdict a code problem can hinge on: a float one ulp beyond the tolerance is a wrong
answer, two large integers that share a float are different answers, and a malformed encoding from
the sandbox is refused rather than read as some other value.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from verifier import values

# Powers of two keep every difference below exact in binary floating point.
TOL = 2.0**-10
BIG = 2.0**20


def _nested(depth: int, wrap: Any) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = wrap(value)
    return value


@pytest.mark.parametrize(
    ("expected", "actual", "equal"),
    [
        # Absolute tolerance near zero: exactly at the edge passes, one ulp beyond fails.
        (0.0, TOL, True),
        (0.0, math.nextafter(TOL, 1.0), False),
        (0.0, -TOL, True),
        (0.0, math.nextafter(-TOL, -1.0), False),
        # Relative tolerance on large values: |a - e| <= tol * max(|a|, |e|).
        (BIG, BIG - BIG * TOL, True),
        (BIG, math.nextafter(BIG - BIG * TOL, 0.0), False),
        (BIG - BIG * TOL, BIG, True),
        (-BIG, -BIG + BIG * TOL, True),
        (-BIG, math.nextafter(-BIG + BIG * TOL, 0.0), False),
    ],
)
def test_float_tolerance_edges(expected: float, actual: float, equal: bool) -> None:
    assert values.same(expected, actual, TOL) is equal
    assert values.same(actual, expected, TOL) is equal


def test_relative_tolerance_applies_to_large_values() -> None:
    # 100 apart on 1e9 is within 1e-6 relative, far outside 1e-6 absolute.
    assert values.same(1e9, 1e9 + 100.0)
    assert not values.same(1e9, 1e9 + 2000.0)


def test_absolute_tolerance_applies_near_zero() -> None:
    assert values.same(0.0, 1e-7)
    assert not values.same(0.0, 1e-5)


@pytest.mark.parametrize(
    ("expected", "actual", "equal"),
    [
        # Two ints compare exactly, even where their floats coincide.
        (2**60, 2**60 + 1, False),
        (2**60 + 1, 2**60 + 1, True),
        (-(2**60), -(2**60) - 1, False),
        # An int against a float goes through the tolerance, in either order.
        (1, 1.0000001, True),
        (1.0000001, 1, True),
        (1, 1.001, False),
    ],
)
def test_integers_are_exact_and_mixed_numbers_are_tolerant(expected: Any, actual: Any, equal: bool) -> None:
    assert values.same(expected, actual) is equal


@pytest.mark.parametrize(
    ("expected", "actual"),
    [(math.nan, 1.0), (1.0, math.nan), (math.nan, math.inf), (math.nan, 0)],
)
def test_nan_equals_only_nan(expected: Any, actual: Any) -> None:
    assert not values.same(expected, actual)


@pytest.mark.parametrize(("expected", "actual"), [(math.inf, math.inf), (-math.inf, -math.inf)])
def test_infinities_equal_themselves(expected: float, actual: float) -> None:
    assert values.same(expected, actual)
    assert not values.same(expected, -actual)


@pytest.mark.parametrize(("expected", "actual"), [(True, 1), (1, True), (False, 0), (0.0, False)])
def test_bool_is_never_a_number(expected: Any, actual: Any) -> None:
    assert not values.same(expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [(1 + 2j, 1 + 3j), (1 + 2j, 5 + 2j)],
)
def test_complex_needs_both_parts(expected: complex, actual: complex) -> None:
    assert not values.same(expected, actual)


@pytest.mark.parametrize(
    ("expected", "actual"),
    [([1, 2], [1]), ([1], [1, 2]), ((1, 2), (1,)), ([], [0])],
)
def test_sequences_of_different_length_differ(expected: Any, actual: Any) -> None:
    assert values.same(expected, actual) is False


def test_containers_pass_the_tolerance_down() -> None:
    assert values.same([1.0], [1.05], float_tol=0.1)
    assert values.same((1.0,), (1.05,), float_tol=0.1)
    assert values.same({"k": 1.0}, {"k": 1.05}, float_tol=0.1)
    assert values.same({"k": [1.0]}, {"k": [1.05]}, float_tol=0.1)


@pytest.mark.parametrize(
    "wrap",
    [lambda v: [v], lambda v: (v,), lambda v: {0: v}],
    ids=["list", "tuple", "dict-value"],
)
def test_encode_depth_limit_is_exact(wrap: Any) -> None:
    values.encode(_nested(values.MAX_DEPTH, wrap))
    with pytest.raises(values.ValueFormatError):
        values.encode(_nested(values.MAX_DEPTH + 1, wrap))


def test_encode_depth_limit_for_dict_keys() -> None:
    key: Any = 0
    for _ in range(values.MAX_DEPTH - 1):
        key = (key,)
    values.encode({key: 0})  # the key sits one level below the dict: its innermost int at MAX_DEPTH
    with pytest.raises(values.ValueFormatError):
        values.encode({(key,): 0})


def test_encode_depth_limit_for_frozensets() -> None:
    value: Any = 0
    for _ in range(values.MAX_DEPTH):
        value = frozenset([value])
    values.encode(value)
    with pytest.raises(values.ValueFormatError):
        values.encode({value})


def _json_list(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


def _json_tagged(depth: int, tag: str) -> str:
    return ('{"' + tag + '":[') * depth + "0" + "]}" * depth


def test_decode_depth_limit_is_exact() -> None:
    assert values.loads(_json_list(values.MAX_DEPTH)) == _nested(values.MAX_DEPTH, lambda v: [v])
    with pytest.raises(values.ValueFormatError):
        values.loads(_json_list(values.MAX_DEPTH + 1))


@pytest.mark.parametrize("tag", ["$tuple", "$frozenset"])
def test_decode_depth_limit_for_tagged_values(tag: str) -> None:
    values.loads(_json_tagged(values.MAX_DEPTH, tag))
    with pytest.raises(values.ValueFormatError):
        values.loads(_json_tagged(values.MAX_DEPTH + 1, tag))


def test_decode_depth_limit_for_dicts() -> None:
    # A dict's key and value sit two levels below it: the pair list, then the item.
    inner = "0"
    for _ in range(values.MAX_DEPTH // 2):
        inner = '{"$dict":[[0,' + inner + "]]}"
    values.loads(inner)
    with pytest.raises(values.ValueFormatError):
        values.loads('{"$dict":[[0,' + inner + "]]}")


def test_direct_decode_depth_limit() -> None:
    deep = _nested(values.MAX_DEPTH + 1, lambda v: [v])
    with pytest.raises(values.ValueFormatError):
        values.decode(deep)
    values.decode(_nested(values.MAX_DEPTH, lambda v: [v]))


@pytest.mark.parametrize(
    "data",
    [
        {"$tuple": [], "$set": []},  # two tags at once
        {},
        {"$tuple": "ab"},  # a hex-looking string under a non-bytes tag
        {"$dict": [{"$tuple": [1, 2]}]},  # a pair that is a tuple, not a list
        {"$dict": [[1, 2, 3]]},
        {"$dict": [[1]]},
        {"$complex": [1.0]},
        {"$complex": [1.0, "2"]},
        {"$bytes": "zz"},
        {"$bytes": 12},
        {"$set": [[1]]},  # an unhashable member
    ],
)
def test_decode_refuses_forged_shapes(data: Any) -> None:
    with pytest.raises(values.ValueFormatError):
        values.decode(data)


def test_dumps_is_compact() -> None:
    # The sandbox writes this text through a size-limited channel: no padding.
    assert values.dumps([1, {"a": (2, 3)}]) == '[1,{"$dict":[["a",{"$tuple":[2,3]}]]}]'
