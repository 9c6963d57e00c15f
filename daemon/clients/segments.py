"""Ids in URL paths: one segment each, whatever the id holds.

An id reaches a path from the command line (`daemon api billomat invoices delete ID`), a rule or
an upstream's own answer. Put in as it is, `../clients/3` would name another resource (a
review deleted a Billomat client through `invoices delete`). Every character outside the
unreserved set is percent-encoded, `/` included, and the two ids that are path steps by
themselves (`.` and `..`) are refused: encoded or not, URL resolution treats them as steps.
"""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["segment"]


def segment(value: object) -> str:
    """`value` as one path segment; `ValueError` for an empty id, `.` or `..`."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{text!r} is not a record id")
    return quote(text, safe="")
