"""The contacts index says what the record table holds after every run that got to write —
one that failed part-way or was refused by `max_tombstone_fraction` included (its pages are
committed) — and nothing for a job without `phone_fields`. Found by probing: the index kept
matching a client by a number it no longer had, for as long as runs kept failing."""

from __future__ import annotations

from tests.hostile.conftest import Harness, harness
from tests.hostile.servers import Script, clients

__all__ = ["harness"]  # fixture

NEW = "+15559990001"


async def _check(harness: Harness, old: str) -> None:
    row = await harness.store.get_record("hostile", "1")
    assert row is not None and row["phone"] == NEW  # the record table has the new number...
    by_old = await harness.store.lookup_contact(old)
    by_new = await harness.store.lookup_contact(NEW)
    assert by_new is not None and by_new.record_id == "1", (
        f"new number unknown to the index; old number still maps to record "
        f"{by_old.record_id if by_old else None}"
    )


async def test_phone_change_on_a_run_that_later_fails(harness: Harness) -> None:
    script = Script(rows=clients(45))
    first = await harness.run("blesta", script, phone_fields=["phone"])
    assert first.status == "ok"
    old = script.rows[0]["phone"]
    script.rows[0]["phone"] = NEW  # client 1 changes number upstream
    script.statuses[3] = 503  # the last page fails (after its retry)
    result = await harness.run("blesta", script, phone_fields=["phone"])
    assert result.status == "failed" and result.updated == 1
    await _check(harness, old)


async def test_phone_change_on_a_run_refused_by_the_fraction(harness: Harness) -> None:
    script = Script(rows=clients(45))
    assert (await harness.run("blesta", script, phone_fields=["phone"])).status == "ok"
    old = script.rows[0]["phone"]
    script.rows = script.rows[:20]  # most clients archived upstream (a real clean-up)
    script.rows[0]["phone"] = NEW
    for _ in range(2):
        result = await harness.run("blesta", script, phone_fields=["phone"])
        assert result.error_type == "TombstonesRefused"
    await _check(harness, old)


async def test_phone_fields_removed_from_the_job(harness: Harness) -> None:
    """Taking `phone_fields` off a job (or renaming its table) leaves its old entries in the
    index for ever: nothing rebuilds that table's contacts again, so callers keep matching
    those records by numbers the records no longer carry."""
    script = Script(rows=clients(45))
    assert (await harness.run("blesta", script, phone_fields=["phone"])).status == "ok"
    old = script.rows[0]["phone"]
    script.rows[0]["phone"] = NEW
    result = await harness.run("blesta", script)  # the job, now without phone_fields
    assert result.status == "ok" and result.updated == 1
    stale = await harness.store.lookup_contact(old)
    assert stale is None, f"{old} (no longer on any record) still matches record {stale.record_id}"
