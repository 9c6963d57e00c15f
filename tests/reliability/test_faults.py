"""Issue 18, faults: every simulator answers 30% of requests with a 5xx, drops 10% of
connections and stalls 10% past the client's timeout (seeded ratios, not counts), during syncs
(Blesta, Reseller, Billomat, Halo: the sandbox's sync jobs) and during actions (NetSapiens,
Halo), where 20% of the requests also act and lose their answer.

Syncs: each run ends `ok` (complete, or incomplete and saying why) or cleanly `failed`; no run
is left `running`; nothing is tombstoned or marked missed (no record was deleted upstream); every
stored row is whole (its `hash` is its `data`'s) and equal to the upstream's record; and the next
run with the faults off completes and leaves every table equal to the truth (a run without
faults into a fresh file).

Actions: every event ends final, no attempt is left open, no SMS or ticket is made twice, and
an action recorded `sent` was carried out exactly once. The smallest cases below each doubled a
send or lost a reply before the dispatcher learnt (d5e01f9) that a look-up which fails is not
"not sent", and that an SMS look-up must not reach back to an earlier identical reply.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.canonical import sha256_hex
from daemon.clock import FakeClock
from daemon.config import load_settings
from daemon.sandbox.orchestra import run_sandbox
from daemon.sync.batch import burst
from tests.reliability.harness import OURS
from tests.reliability.inproc import Path_, event_path, tune_upstreams

SYNCED = ("blesta", "reseller", "billomat", "halo")  # the simulators the sync jobs read
STATUSES = {"blesta": 500, "reseller": 503, "billomat": 502, "halo": 503}
STRANGERS = ("15550001000", "15550002000", "15550003000", "15550004000")


def faults(seed: int, status: int, **more: float) -> dict[str, Any]:
    return {
        "fail_ratio": 0.3,
        "fail_status": status,
        "drop_ratio": 0.1,
        "slow_ratio": 0.1,
        "slow_seconds": 0.6,  # past the 0.3 s timeout below: a timeout, not just slowness
        "seed": seed,
        **more,
    }


# -- syncs --------------------------------------------------------------------------------------


def _tables(db: Path, names: list[str]) -> dict[str, dict[str, tuple[str, str, Any, Any]]]:
    """Every record table: id → (data, hash, deleted_at, missed_at)."""
    conn = sqlite3.connect(db)
    try:
        return {
            n: {
                str(r[0]): (r[1], r[2], r[3], r[4])
                for r in conn.execute(f'SELECT id, data, hash, deleted_at, missed_at FROM "{n}"')
            }
            for n in names
        }
    finally:
        conn.close()


def _runs(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT job, status, deleted, error, incomplete FROM sync_runs"))
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_syncs_under_faults_end_whole_and_the_next_run_heals(
    tmp_path: Path, seed: int
) -> None:
    now = datetime.now(UTC)
    truth_dir, dir_ = tmp_path / "truth", tmp_path / "faulty"
    async with run_sandbox(truth_dir, now=now, listen="127.0.0.1:1") as clean:
        settings = load_settings(clean.config_path)
        names = [j.table for j in settings.sync]
        results = await burst(settings, [], clock=FakeClock(now, autojump=True))
        assert {r.status for r in results} == {"ok"}
        truth = _tables(truth_dir / "state.db", names)

    async with run_sandbox(dir_, now=now, listen="127.0.0.1:1") as sb:
        text = tune_upstreams(sb.config_path.read_text(), timeout="0.3s", max_retries=2)
        sb.config_path.write_text(text.replace('\nrate_limit = "300/5m"\n', "\n", 1))
        settings = load_settings(sb.config_path)
        db = dir_ / "state.db"
        clock = FakeClock(now, autojump=True)
        assert {r.status for r in await burst(settings, [], clock=clock)} == {"ok"}

        for i, name in enumerate(SYNCED):
            sb.states[name].faults.update(faults(seed * 10 + i, STATUSES[name]))
        statuses: Counter[str] = Counter()
        for _ in range(2):  # twice: a record missed by two faulty runs in a row stays
            for r in await burst(settings, [], clock=clock):
                statuses[r.status] += 1
                assert r.status in ("ok", "failed"), r
                if r.status == "failed":
                    assert r.deleted == 0 and r.error, r
            tables = _tables(db, names)
            for name, rows in tables.items():
                for rid, (data, digest, deleted_at, missed_at) in rows.items():
                    assert deleted_at is None and missed_at is None, (name, rid)
                    assert digest == sha256_hex(data), (name, rid)  # no half-written row
                    assert json.loads(data) == json.loads(truth[name][rid][0]), (name, rid)
                assert rows.keys() <= truth[name].keys(), name
        assert all(run[1] in ("ok", "failed") for run in _runs(db))
        for name in SYNCED:
            assert sb.states[name].stats.faults_injected, f"{name} suffered no fault"
        assert statuses["failed"] > 0, "the faults never failed a run: the test proves nothing"

        for name in SYNCED:
            sb.states[name].faults.update({"fail_ratio": 0, "drop_ratio": 0, "slow_ratio": 0})
        healed = await burst(settings, [], clock=clock)
        assert [(r.job, r.status, r.incomplete) for r in healed] == [
            (j.name, "ok", None) for j in settings.sync
        ]
        after = _tables(db, names)
        for name in names:
            assert {k: v[:3] for k, v in after[name].items()} == {
                k: v[:3] for k, v in truth[name].items()
            }, name
        print(f"seed {seed}: faulty runs {dict(statuses)}")


# -- actions ------------------------------------------------------------------------------------


class DuplicateSideEffect(AssertionError):
    """An SMS or ticket made more than once for one action."""


async def _messages(p: Path_, clients: list[str], n: int) -> list[str]:
    """`n` messages at the PBX, posted to the listener: hellos from synced clients (each
    once: one reply each) and problem reports from a few strangers (tickets, then notes)."""
    ids = []
    for i in range(n):
        if i % 3 == 0 and clients:
            msg = await p.ns.inbound_sms(clients.pop(), OURS, "hello")
        else:
            msg = await p.ns.inbound_sms(STRANGERS[i % len(STRANGERS)], OURS, f"problem {i}")
        ids.append(str(msg["id"]))
    return ids


async def _assert_actions_whole(p: Path_) -> None:
    events = await p.store.list_events(limit=10_000)
    assert events and all(e.status in ("done", "ignored", "dead") for e in events)
    actions = await p.store.list_actions(limit=10_000)
    assert all(a.status in ("sent", "dead") and a.attempt_started_at is None for a in actions)
    texted = Counter((str(m["destination"]), str(m["message"])) for m in p.ns.sent)
    doubled_sms = {k: n for k, n in texted.items() if n > 1}
    doubled_tickets = {k: n for k, n in p.refs().items() if n > 1}
    if doubled_sms or doubled_tickets:
        raise DuplicateSideEffect(f"SMS {doubled_sms}, tickets/notes {doubled_tickets}")
    for a in actions:  # an action recorded sent was carried out: exactly once
        if a.status == "sent" and a.kind == "halo_ticket":
            assert p.refs()[a.idempotency_key] == 1, a
        if a.status == "sent" and a.kind == "sms_reply":
            assert texted[(a.phone.lstrip("+"), json.loads(a.request)["sms"]["text"])] == 1, a  # type: ignore[arg-type, union-attr]


async def test_actions_under_faults_are_final_and_never_doubled(tmp_path: Path) -> None:
    async with event_path(
        tmp_path, concurrency=1, upstreams={"timeout": "0.3s", "max_retries": 2}
    ) as p:
        clients = p.client_phones()
        p.ns.faults.update(faults(7, 500, lose_answer_ratio=0.2))
        p.halo.faults.update(faults(8, 503, lose_answer_ratio=0.2))
        await _messages(p, clients, 30)
        passes = await p.settle()
        assert p.ns.stats.faults_injected["lost_answer"] and p.halo.stats.faults_injected["503"]
        print(f"settled in {passes} passes; ns {p.ns.stats.faults_injected}, "
              f"halo {p.halo.stats.faults_injected}")  # fmt: skip
        await _assert_actions_whole(p)


# -- the smallest cases -------------------------------------------------------------------------


async def test_a_failed_lookup_does_not_create_a_second_ticket(tmp_path: Path) -> None:
    """The ticket is created but its answer lost (502); on the retry the look-up for its
    `[ref: key]` fails once (503). Not knowing is not "not created": the attempt fails, the
    next one looks again, finds the ticket, and none is created twice."""
    async with event_path(tmp_path) as p:
        p.halo.faults.update({"lose_answer_next": 1, "path_filter": "/api/Tickets"})
        await p.ns.inbound_sms(STRANGERS[0], OURS, "no dial tone")
        await p.dispatcher.run_until_idle()
        assert len(p.refs()) == 1
        p.halo.faults.update({"fail_next": 1, "fail_status": 503})  # the look-up's GET
        await p.settle()
        assert sum(p.refs().values()) == 1, p.refs()
        (action,) = await p.store.list_actions()
        assert action.status == "sent" and json.loads(action.response or "{}").get("found")
        assert (action.last_error or "").startswith("look-up") or action.attempts == 3


async def test_a_failed_lookup_does_not_send_an_sms_twice(tmp_path: Path) -> None:
    """The reply is sent into the session but its answer lost; on the retry reading the
    session's messages fails once. The next attempt reads them, finds the reply, and does not
    send it again."""
    async with event_path(tmp_path) as p:
        phone = p.client_phones()[0]
        p.ns.faults.update({"lose_answer_next": 1, "path_filter": "/messages"})
        await p.ns.inbound_sms(phone, OURS, "hello")
        await p.dispatcher.run_until_idle()
        assert len([m for m in p.ns.sent if m["destination"] == phone]) == 1
        p.ns.faults.update({"fail_next": 1, "fail_status": 503})  # the session's messages GET
        await p.settle()
        assert len([m for m in p.ns.sent if m["destination"] == phone]) == 1


async def test_an_uncertain_reply_is_not_mistaken_for_the_previous_one(tmp_path: Path) -> None:
    """Two hellos 70 s apart (past the demo rule's 1-minute cooldown) get the same templated
    reply. The second send ends uncertain (500, nothing sent); its look-up, reaching back
    2 minutes less clock skew, must not take the *first* reply's text for this one — or the
    client would never get the second."""
    async with event_path(tmp_path) as p:
        phone = p.client_phones()[0]
        await p.ns.inbound_sms(phone, OURS, "hello")
        await p.dispatcher.run_until_idle()
        p.clock.advance(70)
        p.ns.faults.update({"fail_next": 1, "fail_status": 500, "path_filter": "/messages"})
        await p.ns.inbound_sms(phone, OURS, "hello again")
        await p.settle()
        assert len([m for m in p.ns.sent if m["destination"] == phone]) == 2
