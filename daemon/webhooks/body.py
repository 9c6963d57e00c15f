"""Untrusted request bodies → JSON, with the shape bounded *before* the parser runs.

Why a scan first: `json.loads` recurses once per nesting level, so a body of 3,000 `[` raises
`RecursionError` (and a body just under the interpreter's limit still costs a deep C stack);
and a 1 MB body of `[[],[],...]` becomes a third of a million Python objects. Both are
refused here, cheaply, before any object is built.

The scan never loops over bytes in Python. The body is reduced to its `[ ] { } " ,` bytes (escape
pairs removed first, so every quote left delimits a string) and the strings are cut out with one
regex, which leaves only structure; the element count is then a `bytes.count` of commas and
openers, and the depth is the number of passes it takes to erase the innermost `[]`/`{}` pairs,
each pass one C-speed `re.sub` over a bracket string that the element cap keeps short. Brackets
that do not pair up mean the body is not JSON, and it is refused without being parsed, so a
malformed prefix (`[[[[…` then garbage) cannot make the parser recurse either. Up to the point
where the parser would fail, it sees the strings and brackets the scan saw, so it never nests
deeper than the scan measured; a `RecursionError` is still caught, as a second line.

NaN, Infinity and numbers that overflow to infinity (`1e999`) are refused: JSON cannot carry
them, and neither can the inbox's canonical payloads.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ELEMENTS",
    "BodyError",
    "load_json",
    "nests_deeper",
]

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_ELEMENTS = 10_000

# The scan works on a reduced copy of the body that keeps only `[ ] { } " ,`. Escaped backslashes
# and escaped quotes are removed first (left to right, `\\` pairs before `\"`, which is how a
# JSON string pairs them), so every `"` left delimits a string. Both steps are C-speed.
_KEEP = b'[]{}",'
_DROP = bytes(sorted(set(range(256)) - set(_KEEP)))
# A string of the reduced body — or the rest of it, when a string never ends (one match, not a
# fresh attempt at every later quote).
_QUOTED = re.compile(rb'"[^"]*(?:"|\Z)')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_DECODER_LIMITS = (RecursionError, MemoryError)


class BodyError(ValueError):
    """The body cannot be used. `reason` is short fixed text that never echoes the input;
    `kind` is one of a few labels (`not json`, `too deep`, `too many elements`, `not finite`),
    fit for a metric or a log field."""

    def __init__(self, reason: str, kind: str = "not json"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def _refuse_constant(name: str) -> NoReturn:
    raise BodyError("body holds NaN or Infinity, which JSON cannot carry", "not finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError("body holds a number too large for JSON", "not finite")
    return value


def _check_shape(body: bytes, max_depth: int, max_elements: int) -> None:
    """Raise BodyError unless `body` pairs its brackets, nests at most `max_depth` levels and
    has at most about `max_elements` values (commas plus containers)."""
    # Fast path, the usual webhook: counted over the raw bytes, strings included, the openers
    # bound the depth and openers plus commas bound the values, so when those raw counts are
    # within the limits nothing can exceed them (unpaired brackets are then the parser's to
    # refuse, and it cannot nest deeper than the openers allow).
    raw_openers = body.count(b"[") + body.count(b"{")
    if raw_openers <= max_depth and raw_openers + body.count(b",") <= max_elements:
        return
    reduced = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    # `""` is an empty string, or two strings with nothing structural between them (`"a":"b"`
    # reduces to `""""`): dropping it changes no structure and leaves the regex little to do.
    structure = _QUOTED.sub(b"", reduced.replace(b'""', b""))
    openers = structure.count(b"[") + structure.count(b"{")
    if structure.count(b",") + openers > max_elements:
        raise BodyError(f"body has more than {max_elements} elements", "too many elements")
    brackets = _NOT_BRACKET.sub(b"", structure)
    depth = 0
    while brackets:
        if depth >= max_depth:
            raise BodyError(f"body nests deeper than {max_depth} levels", "too deep")
        shorter = _EMPTY_PAIR.sub(b"", brackets)
        if len(shorter) == len(brackets):
            raise BodyError("body is not JSON")  # brackets that never pair up
        brackets = shorter
        depth += 1


# One decoder for every body: `json.loads` with hooks builds a new `JSONDecoder` per call,
# which was almost half of decoding a one-message webhook. Decoders keep no state between calls.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def load_json(
    body: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> Any:
    """The JSON value of `body` (UTF-8, an optional BOM allowed), or BodyError.

    `max_depth` counts container levels (`[{"a": 1}]` is 2); `max_elements` bounds the values
    in the body (approximately: each comma and each container counts one).
    """
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("body is not UTF-8 text") from None
    if not text.strip():
        raise BodyError("body is empty")
    _check_shape(body, max_depth, max_elements)
    try:
        return _DECODER.decode(text)
    except BodyError:
        raise
    except _DECODER_LIMITS:  # the scan should make this unreachable; never let it escape
        raise BodyError(f"body nests deeper than {max_depth} levels", "too deep") from None
    except ValueError:  # JSONDecodeError, and int() refusing a number of thousands of digits
        raise BodyError("body is not JSON") from None


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether already-decoded `value` nests containers more than `limit` levels (itself
    counting one) — for JSON that arrived some other way (an API page). Iterative, so it cannot
    overflow the stack it protects, and it stops as soon as it knows."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
