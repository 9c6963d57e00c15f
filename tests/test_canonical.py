"""The canonical encoder is the stored form and the hash input of every record and event: its
output must stay byte for byte what `json.dumps` gives with the same settings, or an upgrade
would see every stored record as changed."""

import hashlib
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.canonical import (
    REPLACEMENT,
    canonical_json,
    canonical_json_hash,
    may_hold_surrogates,
    repair_surrogates_in,
    sha256_hex,
)

SETTINGS: dict[str, Any] = {
    "sort_keys": True,
    "separators": (",", ":"),
    "ensure_ascii": False,
    "allow_nan": False,
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _reference(value: Any, default: Any = None) -> str:
    text = json.dumps(value, default=default, **SETTINGS)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join(REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_same_bytes_as_json_dumps(value: Any) -> None:
    text = canonical_json(value)
    assert text == _reference(value)
    assert canonical_json(value, default=str) == _reference(value, default=str)
    assert canonical_json_hash(value) == (text, sha256_hex(text))
    assert canonical_json_hash(value)[1] == hashlib.sha256(text.encode()).hexdigest()


def test_odd_values_through_default() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    value = {"b": Odd(), "a": "set"}
    assert canonical_json(value, default=str) == '{"a":"set","b":"odd"}'
    assert canonical_json(value, default=lambda o: "x") == '{"a":"set","b":"x"}'
    with pytest.raises(TypeError):
        canonical_json(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": [bad]})
    with pytest.raises(ValueError):
        canonical_json_hash({"x": bad})


def test_lone_surrogate_replaced_once_in_text_and_hash() -> None:
    text, digest = canonical_json_hash({"name": "a\ud800b"})
    assert text == '{"name":"a\ufffdb"}'
    assert digest == sha256_hex(text)


def test_deep_nesting_is_a_recursion_error_not_a_crash() -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(RecursionError):
        canonical_json(value)


def test_repair_surrogates_in_keys_strings_and_nesting() -> None:
    raw = b'{"a\\ud800": ["x\\udfff", {"k": "\\ud83d\\ude00 ok"}], "n": 1, "t": true}'
    assert may_hold_surrogates(raw)
    assert may_hold_surrogates(b'["\\uD800"]') and may_hold_surrogates(b'["\\u00e9\\udc00"]')
    assert not may_hold_surrogates(b'{"a": "\\u00e9"}') and not may_hold_surrogates(b'{"ud": 1}')
    value = repair_surrogates_in(json.loads(raw))
    assert value == {"a\ufffd": ["x\ufffd", {"k": "\U0001f600 ok"}], "n": 1, "t": True}
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # nothing left that UTF-8 refuses
