from __future__ import annotations

import math
from typing import Any

import pytest

from verifier import values


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -3,
        2**80,
        1.5,
        "héllo",
        [1, [2, "x"]],
        (1, (2,)),
        {"a": 1, (1, 2): [3]},
        {1, 2},
        frozenset({"a"}),
        b"\x00\xff",
        1 + 2j,
        {"$tuple": 1},
    ],
)
def test_round_trip_keeps_types(value: Any) -> None:
    back = values.loads(values.dumps(value))
    assert type(back) is type(value)
    assert values.same(value, back)


def test_subclasses_and_custom_objects_cannot_be_encoded() -> None:
    class Liar:
        def __eq__(self, other: object) -> bool:
            return True

    class LyingInt(int):
        def __eq__(self, other: object) -> bool:
            return True

    for bad in (Liar(), LyingInt(3), [1, Liar()], {"k": LyingInt(1)}):
        with pytest.raises(values.ValueFormatError):
            values.encode(bad)


@pytest.mark.parametrize(
    ("expected", "actual", "equal"),
    [
        (True, 1, False),
        (1, True, False),
        (2, 2.0, True),
        (0.1 + 0.2, 0.3, True),
        (1.0, 1.001, False),
        ([1, 2], (1, 2), False),
        ({"a": [1.0]}, {"a": [1.0000000001]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        (float("nan"), float("nan"), True),
        (math.inf, 1e308, False),
        ("a", b"a", False),
        (None, 0, False),
        (10**400, 1e308, False),
    ],
)
def test_strict_comparison(expected: Any, actual: Any, equal: bool) -> None:
    assert values.same(expected, actual) is equal


@pytest.mark.parametrize(
    "text",
    [
        '{"$dict": [[[1], 2]]}',
        '{"$nope": []}',
        '{"a": 1, "b": 2}',
        "[" * 5000 + "]" * 5000,
        "not json",
        '{"$complex": ["1", 2]}',
        "1" * 5000,
    ],
)
def test_malformed_values_are_rejected(text: str) -> None:
    with pytest.raises(values.ValueFormatError):
        values.loads(text)
