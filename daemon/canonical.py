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
from typing import Any

REPLACEMENT = "\ufffd"


def canonical_json(value: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """Sorted, compact, non-finite numbers refused (`ValueError`), lone surrogates repaired."""
    text = json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=default,
    )
    return repair_surrogates(text)


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
