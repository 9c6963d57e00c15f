"""The ticket id Halo's create answer gives is checked before it becomes the action's reference
and the sender's thread (found by probing: `"."` made every later message of the sender fail
with an untyped ValueError, and an object or a float was stored as a reference)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.errors import RuleError
from daemon.rules.actions import ticket_id_of


@pytest.mark.parametrize(
    ("value", "expected"), [(7, "7"), ("7", "7"), (" 12 ", "12"), ("007", "7")]
)
def test_a_positive_whole_number_is_a_ticket_id(value: Any, expected: str) -> None:
    assert ticket_id_of({"id": value}) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        " ",
        ".",
        "..",
        "abc",
        "1/2",
        "\u0661\u0662",
        0,
        -1,
        "0",
        "-3",
        True,
        1.5,
        {"a": 1},
        [7],
    ],
)
def test_anything_else_is_refused_with_a_typed_error(value: Any) -> None:
    with pytest.raises(RuleError, match="usable ticket id"):
        ticket_id_of({"id": value})
    with pytest.raises(RuleError):
        ticket_id_of({})
