"""Indexed listings for the simulators: filtered, sorted views kept current on every write.

A real upstream answers page N of a listing from a database index. A simulator that filters and
sorts its whole table on every request measures itself instead of the client under test (a Halo
page cost 55 ms of CPU at 100k tickets, so a 100k sync spent most of its time in the simulator).

A `Table` keeps its records in canonical order (ascending key: the record's numeric id, or the
order of insertion). The first request for a listing (a `Query`: equality filters, an extra
predicate, an order) builds a `View` in O(n); later pages slice it in O(page), and every write
updates each cached view by bisection instead of discarding it, so a page stays cheap while
records are created, edited and deleted between pages. Equality filters on fields declared as
`hash_fields` (a ticket's actions, a client's contacts) are answered from a hash index, so
per-parent listings never scan the table.

The table also speaks enough of the `list` protocol (`append`, `pop`, `insert`, `del t[i:]`,
indexing, iteration) for tests to mutate a simulator's data directly, as they did when it was a
list. A record edited in place must be announced with `reindex(record)` (the simulators' own
write handlers do), or a cached view may keep it under its old values.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, SupportsIndex, overload

Record = dict[str, Any]
Predicate = Callable[[Record], bool]
HASH_SCAN_LIMIT = 2000  # above this many candidates a cached view beats a per-request scan


class Desc:
    """Reverses the order of one sort-key component (for `field DESC`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __lt__(self, other: Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def sort_value(value: Any) -> tuple[int, float | str]:
    """A total order over the mixed values APIs return: numbers (also numeric strings) first,
    by value, then text; `None` sorts as empty text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif value is None:
        return (1, "")
    else:
        text = str(value)
        try:
            number = float(text)
        except ValueError:
            return (1, text)
    if number != number:  # NaN has no place in an order
        return (1, str(value))
    return (0, number)


@dataclass(frozen=True)
class Query:
    """One listing, hashable so its view can be cached.

    `equal`: (field, allowed values as strings) pairs, all of which must hold; `order`: (field,
    descending) pairs, ties broken by the canonical key; `test`: any further predicate, which
    `extra` must identify (two queries with equal `extra` must mean the same `test`).
    """

    equal: tuple[tuple[str, tuple[str, ...]], ...] = ()
    order: tuple[tuple[str, bool], ...] = ()
    extra: Hashable = None
    test: Predicate | None = field(default=None, compare=False, hash=False)

    def matches(self, record: Record) -> bool:
        for name, allowed in self.equal:
            if str(record.get(name, "")) not in allowed:
                return False
        return self.test is None or self.test(record)


class _View:
    """The records one query selects, in its order, with their sort keys for bisection.

    In canonical order a record's sort key is its canonical key, so membership is found by
    bisection; an ordered view remembers each member's sort key (its fields may change)."""

    __slots__ = ("keys", "member", "ordered", "query", "rows")

    def __init__(self, query: Query, rows: list[Record], keys: list[Any]):
        self.query = query
        self.rows = rows
        self.keys = keys
        self.ordered = bool(query.order)
        self.member: dict[Hashable, Any] = {}

    def put(self, canon: Hashable, sort_key: Any, record: Record) -> None:
        if not self.keys or self.keys[-1] < sort_key:
            self.keys.append(sort_key)
            self.rows.append(record)
        else:
            pos = bisect_left(self.keys, sort_key)
            self.keys.insert(pos, sort_key)
            self.rows.insert(pos, record)
        if self.ordered:
            self.member[canon] = sort_key

    def drop(self, canon: Hashable) -> None:
        if self.ordered:
            sort_key = self.member.pop(canon, None)
            if sort_key is None:
                return
        else:
            sort_key = canon
        pos = bisect_left(self.keys, sort_key)
        if pos < len(self.keys) and self.keys[pos] == sort_key:
            del self.keys[pos]
            del self.rows[pos]


class Table:
    """Records in canonical order, with cached listings (see the module docstring).

    `key`: a record's canonical key (immutable while stored; numeric ids as ints); `None` keys
    records by insertion order. `hash_fields`: equality-filter fields worth a hash index.
    """

    def __init__(
        self,
        records: Iterable[Record] = (),
        *,
        key: Callable[[Record], Any] | None = None,
        hash_fields: Iterable[str] = (),
        max_views: int = 64,
    ):
        self._key_fn = key
        self._seq = itertools.count(1)
        self._hash_fields = frozenset(hash_fields)
        self._max_views = max_views
        self._high = 0
        self._by_key: dict[Any, Record] = {}
        self._key_of: dict[int, Any] = {}  # id(record) -> canonical key
        self._base = _View(Query(), [], [])
        self._views: OrderedDict[Query, _View] = OrderedDict()
        self._groups: dict[str, dict[str, list[Record]]] = {}
        self._group_value: dict[str, dict[Any, str]] = {}
        self.builds = 0  # views built from a scan (tests assert pages do not rebuild)
        self.extend(records)

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._base.rows)

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._base.rows))

    def __bool__(self) -> bool:
        return bool(self._base.rows)

    def __contains__(self, record: object) -> bool:
        return id(record) in self._key_of

    def __repr__(self) -> str:
        return f"Table({len(self)} records, {len(self._views)} views)"

    @overload
    def __getitem__(self, index: SupportsIndex) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Record | list[Record]:
        return self._base.rows[index]

    def get(self, key: Any) -> Record | None:
        """The record with canonical key `key` (O(1))."""
        return self._by_key.get(key)

    def key_of(self, record: Record) -> Any:
        return self._key_of[id(record)]

    def next_id(self) -> int:
        """An id above any ever stored: never reused, like an auto-increment column."""
        return self._high + 1

    def select(self, query: Query) -> Sequence[Record]:
        """The records `query` selects, in its order. Callers slice it and must not mutate it;
        it stays valid until the next write."""
        if not query.equal and query.test is None and not query.order:
            return self._base.rows
        hashed = self._hash_candidates(query)
        if hashed is not None:
            return hashed
        view = self._views.get(query)
        if view is None:
            view = self._build(query)
        else:
            self._views.move_to_end(query)
        return view.rows

    # -- writing -----------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        self.add(record)

    def add(self, record: Record) -> Record:
        """Store `record` (a new one: its key must be free) and index it everywhere."""
        if id(record) in self._key_of:
            raise ValueError("record is already stored")
        canon = next(self._seq) if self._key_fn is None else self._key_fn(record)
        if canon in self._by_key:
            raise KeyError(f"duplicate key {canon!r}")
        if isinstance(canon, int):
            self._high = max(self._high, canon)
        self._by_key[canon] = record
        self._key_of[id(record)] = canon
        self._base.put(canon, canon, record)
        for view in self._views.values():
            if view.query.matches(record):
                view.put(canon, self._sort_key(view.query, record, canon), record)
        for name, groups in self._groups.items():
            value = str(record.get(name, ""))
            self._group_value[name][canon] = value
            insort(groups.setdefault(value, []), record, key=self.key_of)
        return record

    def extend(self, records: Iterable[Record]) -> None:
        for record in records:
            self.add(record)

    def insert(self, index: SupportsIndex, record: Record) -> None:
        """List compatibility: the record takes its place by key, not by `index`."""
        self.add(record)

    def reindex(self, record: Record) -> None:
        """Re-file a stored record after its fields were changed in place."""
        canon = self._key_of[id(record)]
        for view in self._views.values():
            view.drop(canon)
            if view.query.matches(record):
                view.put(canon, self._sort_key(view.query, record, canon), record)
        for name, groups in self._groups.items():
            old = self._group_value[name][canon]
            new = str(record.get(name, ""))
            if old != new:
                self._ungroup(groups[old], canon, record)
                insort(groups.setdefault(new, []), record, key=self.key_of)
                self._group_value[name][canon] = new

    def discard_key(self, key: Any) -> Record | None:
        """Remove the record with canonical key `key`; returns it (None when absent)."""
        record = self._by_key.get(key)
        if record is None:
            return None
        for name, groups in self._groups.items():
            self._ungroup(groups[self._group_value[name].pop(key)], key, record)
        self._base.drop(key)
        for view in self._views.values():
            view.drop(key)
        del self._by_key[key]
        del self._key_of[id(record)]
        return record

    def remove(self, record: Record) -> None:
        key = self._key_of.get(id(record))
        if key is None:
            raise ValueError("record is not stored")
        self.discard_key(key)

    def pop(self, index: SupportsIndex = -1) -> Record:
        record = self._base.rows[index]
        self.remove(record)
        return record

    def __delitem__(self, index: SupportsIndex | slice) -> None:
        doomed = self._base.rows[index]
        for record in doomed if isinstance(doomed, list) else [doomed]:
            self.remove(record)

    def clear(self) -> None:
        for key in list(self._by_key):
            self.discard_key(key)

    # -- internals ---------------------------------------------------------------------------

    def _sort_key(self, query: Query, record: Record, canon: Any) -> Any:
        if not query.order:
            return canon
        parts: list[Any] = []
        for name, descending in query.order:
            value = sort_value(record.get(name))
            parts.append(Desc(value) if descending else value)
        parts.append(canon)
        return tuple(parts)

    def _build(self, query: Query) -> _View:
        self.builds += 1
        key_of = self._key_of
        if query.order:
            chosen = sorted(
                (
                    (self._sort_key(query, r, key_of[id(r)]), r)
                    for r in self._base.rows
                    if query.matches(r)
                ),
                key=lambda pair: pair[0],
            )
            view = _View(query, [r for _, r in chosen], [k for k, _ in chosen])
            view.member = {key_of[id(r)]: k for k, r in chosen}
        else:  # canonical order: no sort, no pairs, no member map (fewer allocations)
            rows = [r for r in self._base.rows if query.matches(r)]
            view = _View(query, rows, [key_of[id(r)] for r in rows])
        self._views[query] = view
        while len(self._views) > self._max_views:
            self._views.popitem(last=False)
        return view

    def _group_index(self, name: str) -> dict[str, list[Record]]:
        groups = self._groups.get(name)
        if groups is None:
            groups, values = {}, {}
            for record in self._base.rows:
                value = str(record.get(name, ""))
                values[self._key_of[id(record)]] = value
                groups.setdefault(value, []).append(record)
            self._groups[name], self._group_value[name] = groups, values
        return groups

    def _hash_candidates(self, query: Query) -> list[Record] | None:
        """Serve the query from a hash index when it filters a hashed field to few records."""
        for name, allowed in query.equal:
            if name not in self._hash_fields:
                continue
            groups = self._group_index(name)
            parts = [groups.get(value, []) for value in allowed]
            if sum(len(p) for p in parts) > HASH_SCAN_LIMIT:
                return None
            rows = [r for part in parts for r in part if query.matches(r)]
            if query.order or len(parts) > 1:
                rows.sort(key=lambda r: self._sort_key(query, r, self._key_of[id(r)]))
            return rows
        return None

    def _ungroup(self, group: list[Record], canon: Any, record: Record) -> None:
        pos = bisect_left(group, canon, key=self.key_of)
        assert group[pos] is record
        del group[pos]


def page(rows: Sequence[Record], number: int, size: int) -> list[Record]:
    """Page `number` (1-based) of `size` rows."""
    start = (max(1, number) - 1) * size
    return list(rows[start : start + size])
