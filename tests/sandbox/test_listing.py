"""The simulators' indexed listings agree with a naive filter-and-sort under any writes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from daemon.sandbox.listing import HASH_SCAN_LIMIT, Query, Table, page, sort_value

Record = dict[str, Any]


def naive(records: list[Record], query: Query) -> list[Record]:
    rows = [r for r in sorted(records, key=lambda r: r["id"]) if query.matches(r)]
    for name, descending in reversed(query.order):
        rows.sort(key=lambda r, n=name: sort_value(r.get(n)), reverse=descending)
    return rows


QUERIES = [
    Query(),
    Query(equal=(("status", ("open",)),)),
    Query(equal=(("status", ("open", "closed")),), order=(("name", True),)),
    Query(equal=(("parent", ("3",)),)),
    Query(equal=(("parent", ("3", "4")),), order=(("score", False),)),
    Query(order=(("score", True), ("name", False))),
    Query(extra=("even",), test=lambda r: r["id"] % 2 == 0, order=(("name", False),)),
]


def test_views_follow_random_writes() -> None:
    rnd = random.Random(7)
    table = Table(key=lambda r: r["id"], hash_fields=["parent"], max_views=4)
    model: dict[int, Record] = {}

    def fresh(i: int) -> Record:
        return {
            "id": i,
            "status": rnd.choice(["open", "closed", "void"]),
            "name": rnd.choice(["b", "a", "c", None, "10", 2]),
            "score": rnd.choice([1, 2.5, "3", None, "x"]),
            "parent": rnd.randrange(6),
        }

    for _ in range(1500):
        op = rnd.random()
        if op < 0.5 or not model:
            rec = fresh(table.next_id() if rnd.random() < 0.8 else rnd.randrange(1, 400))
            if rec["id"] in model:
                continue
            model[rec["id"]] = table.add(rec)
        elif op < 0.75:
            rec = model[rnd.choice(list(model))]
            rec.update({k: v for k, v in fresh(rec["id"]).items() if rnd.random() < 0.5})
            table.reindex(rec)
        else:
            gone = table.discard_key(rnd.choice(list(model)))
            assert gone is not None
            del model[gone["id"]]
        query = rnd.choice(QUERIES)
        assert list(table.select(query)) == naive(list(model.values()), query)
    assert [r["id"] for r in table] == sorted(model)
    assert len(table) == len(model)


def test_pages_do_not_rescan() -> None:
    table = Table((({"id": i, "s": i % 3}) for i in range(1, 1001)), key=lambda r: r["id"])
    query = Query(equal=(("s", ("1",)),))
    first = page(table.select(query), 1, 50)
    for n in range(2, 8):
        page(table.select(query), n, 50)
    table.add({"id": 1001, "s": 1})
    last = table.select(query)
    assert table.builds == 1
    assert first[0]["id"] == 1 and last[-1]["id"] == 1001


def test_hash_index_serves_small_groups_and_falls_back_for_big_ones() -> None:
    rows = [{"id": i, "p": 0 if i <= HASH_SCAN_LIMIT + 1 else i} for i in range(1, 3000)]
    table = Table(rows, key=lambda r: r["id"], hash_fields=["p"])
    assert [r["id"] for r in table.select(Query(equal=(("p", ("2500",)),)))] == [2500]
    assert table.builds == 0
    assert len(table.select(Query(equal=(("p", ("0",)),)))) == HASH_SCAN_LIMIT + 1
    assert table.builds == 1


def test_list_protocol_for_tests_that_mutate_directly() -> None:
    table = Table(({"id": str(i)} for i in range(1, 11)), key=lambda r: int(r["id"]))
    gone = table.pop(3)
    assert gone["id"] == "4" and len(table) == 9
    table.insert(3, gone)
    assert [r["id"] for r in table] == [str(i) for i in range(1, 11)]
    del table[7:]
    assert [r["id"] for r in table] == [str(i) for i in range(1, 8)]
    assert table.next_id() == 11  # ids are never reused
    table.remove(table[0])
    assert table[0]["id"] == "2" and table[-1]["id"] == "7"
    with pytest.raises(KeyError):
        table.add({"id": "2"})


def test_insertion_order_when_records_have_no_key() -> None:
    table = Table([{"k": "b"}, {"k": "a"}])
    table.append({"k": "c"})
    assert [r["k"] for r in table] == ["b", "a", "c"]
    assert [r["k"] for r in table.select(Query(order=(("k", False),)))] == ["a", "b", "c"]
