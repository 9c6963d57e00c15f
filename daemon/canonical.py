"""Canonical JSON: the one serialisation that hashes, dedupe keys and stored records share.

Sorted keys and compact separators, so key order never counts as a change; UTF-8 text kept
as is. Two things an upstream can send break JSON itself, and both get one documented rule:

- NaN and ±Infinity (Python's parser accepts them, JSON has no spelling for them) are refused:
  `json.dumps(allow_nan=False)` raises `ValueError`, and callers name the record that held it.
- A lone UTF-16 surrogate (`"\\ud800"` in the upstream's JSON) is not Unicode and cannot be
  encoded as UTF-8; it is replaced by U+FFFD, the replacement character, so the rest of the
  record is kept and readable.

A bottom-layer module (like `errors` and `clock`): clients, store and webhooks all use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

REPLACEMENT = "\ufffd"


def _encoder(default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    """One reusable encoder for these settings. With the C accelerator, its one-shot encoder is
    called directly: `json.dumps` builds a `JSONEncoder` per call and goes through two Python
    layers to reach the same C function, which is half the cost of a small record (10,000 of
    them per Billomat page set). Without cycle checking: what we encode is parsed JSON, and a
    cycle would end as `RecursionError` all the same."""
    encoder = json.JSONEncoder(
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=default,
    )
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return encoder.encode
    one_shot = c_make_encoder(
        None, encoder.default, encode_basestring, None, ":", ",", True, False, False
    )

    def encode(value: Any) -> str:
        return "".join(one_shot(value, 0))

    return encode


_PLAIN = _encoder(None)
_AS_STR = _encoder(str)


def canonical_json(value: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """Sorted, compact, non-finite numbers refused (`ValueError`), lone surrogates repaired."""
    return repair_surrogates(_text(value, default))


# A str as a JSON string literal, exactly as `canonical_json` writes one (the json module's own
# string encoder; no surrogate repair), for a caller that writes fixed fields itself.
encode_string: Callable[[str], str] = encode_basestring


def canonical_json_hash(value: Any) -> tuple[str, str]:
    """`(canonical_json(value), its sha256_hex)`, encoding the text to UTF-8 once for both."""
    text = _PLAIN(value)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        text = repair_surrogates(text)
        raw = text.encode("utf-8")
    return text, hashlib.sha256(raw).hexdigest()


def _text(value: Any, default: Callable[[Any], Any] | None) -> str:
    if default is None:
        return _PLAIN(value)
    if default is str:
        return _AS_STR(value)
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=default,
    )


def repair_surrogates(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD. Python's JSON parser merges a valid
    `\\ud83d\\ude00` pair into one character, so any surrogate left in a str is a lone one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(REPLACEMENT if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def may_hold_surrogates(raw: bytes) -> bool:
    """Whether JSON text `raw` can decode to a lone surrogate (a cheap scan, no parse).

    A lone surrogate in a decoded str can only come from a `\\ud800`-style escape in the JSON
    text (UTF-8 itself cannot carry one); text without `\\uD`/`\\ud` needs no repair pass."""
    # Most bodies hold no `\\u` escape at all: one scan says so.
    return b"\\u" in raw and (b"\\ud" in raw or b"\\uD" in raw)


def repair_surrogates_in(value: Any) -> Any:
    """Decoded JSON `value` with every lone surrogate, in keys and strings, replaced by U+FFFD:
    nothing downstream (SQLite binds UTF-8, logs write it) can carry one. Recursive: callers
    bound the depth (a parser's own limit, or a check), or catch `RecursionError`."""
    if isinstance(value, str):
        return repair_surrogates(value)
    if isinstance(value, dict):
        return {repair_surrogates(str(k)): repair_surrogates_in(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repair_surrogates_in(v) for v in value]
    return value
