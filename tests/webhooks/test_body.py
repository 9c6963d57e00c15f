"""load_json: the shape is bounded before the parser runs; no input raises anything but
BodyError; typical and 1 MB bodies are cheap."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.webhooks.body import BodyError, load_json, nests_deeper

MESSAGE = {
    "id": "a1b2c3d4e5f60718",
    "timestamp": "2025-01-02T15:04:05+00:00",
    "type": "sms",
    "domain": "acme",
    "direction": "orig",
    "from-number": "15551230000",
    "dialed": "15559870000",
    "text": 'Hi, is my [invoice] {paid}? "yes" \\ no',
    "terminating-user-id": "101",
    "messagesession-id": "s" * 40,
}


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def deep_object(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"", "not json"),
        (b"   ", "not json"),
        (b"\xff\xfe[]", "not json"),
        (b"[1,2", "not json"),
        (b"[1]]", "not json"),
        (b"{]", "not json"),
        (b"[" * 3000, "not json"),  # a prefix that never closes is refused unparsed
        (b"[" * 3000 + b"x", "not json"),
        (b'["' + b"[" * 5000, "not json"),  # an unterminated string
        (nested(3000), "too deep"),
        (deep_object(3000), "too deep"),
        (nested(33), "too deep"),
        (b"[NaN]", "not finite"),
        (b'{"a": Infinity}', "not finite"),
        (b"[-Infinity]", "not finite"),
        (b"[1e999]", "not finite"),
        (b"[" + b"9" * 5000 + b"]", "not json"),  # int() refuses thousands of digits
        (b"[" + b"0," * 10_000 + b"0]", "too many elements"),
    ],
)
def test_refused(body: bytes, kind: str) -> None:
    with pytest.raises(BodyError) as info:
        load_json(body)
    assert info.value.kind == kind
    assert body[:20].decode("utf-8", "replace") not in info.value.reason or not body.strip()


def test_accepted_shapes() -> None:
    assert load_json(json.dumps([MESSAGE]).encode()) == [MESSAGE]
    assert load_json(b"\xef\xbb\xbf{}") == {}  # a BOM is tolerated
    assert load_json(nested(32)) is not None
    assert load_json(b'["\\\\", "\\"[[[", "]]]"]') == ["\\", '"[[[', "]]]"]
    # brackets inside strings are not structure
    text = json.dumps(["[" * 500, "{" * 500, "]" * 7])
    assert load_json(text.encode()) == ["[" * 500, "{" * 500, "]" * 7]
    assert load_json(json.dumps({"a": "\ud83d\ude00"}).encode()) == {"a": "😀"}


def test_depth_counts_mixed_containers() -> None:
    body = b'[{"a":[[{"b":[1]}]]}]'  # 6 levels
    assert load_json(body, max_depth=6)
    with pytest.raises(BodyError):
        load_json(body, max_depth=5)
    # a chain of containers with siblings at every level
    deep = "".join("[[]," for _ in range(40)) + "1" + "]" * 40
    with pytest.raises(BodyError, match="deeper"):
        load_json(deep.encode())


def test_element_cap_is_configurable() -> None:
    body = b"[" + b"0," * 20_000 + b"0]"
    assert len(load_json(body, max_elements=100_000)) == 20_001


def test_one_megabyte_is_cheap() -> None:
    one = json.dumps(MESSAGE)
    body = json.dumps([MESSAGE] * (1_000_000 // len(one))).encode()
    started = time.perf_counter()
    for _ in range(5):
        assert len(load_json(body, max_elements=100_000)) > 1000
    per_call = (time.perf_counter() - started) / 5
    assert per_call < 0.25  # ~10 ms here; generous for slow CI machines


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_valid_json_round_trips(value: Any) -> None:
    body = json.dumps([value]).encode()
    try:
        assert load_json(body, max_elements=10**6) == json.loads(body)
    except BodyError as exc:
        assert exc.kind in ("too deep", "not finite")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"1", b"NaN", b" "]),
        max_size=400,
    ).map(b"".join)
    | st.binary(max_size=300)
)
def test_only_body_errors(body: bytes) -> None:
    try:
        load_json(body)
    except BodyError:
        pass


def test_nests_deeper() -> None:
    value: list[Any] = []
    inner = value
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    assert nests_deeper(value, 32)
    assert not nests_deeper({"a": [1, {"b": 2}]}, 3)
    assert nests_deeper({"a": [1, {"b": {}}]}, 3)
