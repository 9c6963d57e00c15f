"""Phone numbers out of synced records, for the rules' caller lookup.

Pure functions: which fields hold phones is the job's `phone_fields` (dotted paths into the
record, lists walked); numbers go through `daemon.phones.to_e164`, the same normaliser the
webhook path uses, so a caller's `from` matches however the upstream wrote the number.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from daemon.phones import to_e164

NAME_FIELDS = (("first_name", "last_name"), ("firstname", "surname"), ("name",), ("company",))


def _walk(value: Any, parts: Sequence[str]) -> Iterator[Any]:
    if not parts:
        if isinstance(value, list):
            yield from value
        else:
            yield value
        return
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, parts)
    elif isinstance(value, Mapping) and parts[0] in value:
        yield from _walk(value[parts[0]], parts[1:])


def display_name(record: Mapping[str, Any]) -> str | None:
    """A human name for a record: first + last name, else name, else company."""
    for fields in NAME_FIELDS:
        parts = [str(record[f]).strip() for f in fields if record.get(f)]
        if parts and any(parts):
            return " ".join(p for p in parts if p)
    return None


def record_phones(record: Mapping[str, Any], phone_fields: Sequence[str], region: str) -> list[str]:
    """Distinct E.164 numbers found at `phone_fields` (dotted paths) in `record`."""
    seen: dict[str, None] = {}
    for path in phone_fields:
        for raw in _walk(record, path.split(".")):
            phone = to_e164(raw, region)
            if phone:
                seen.setdefault(phone)
    return list(seen)
