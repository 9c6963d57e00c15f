"""Issue 18, crash matrix: a real `daemon run` is SIGKILLed at each named step of the event
path (`daemon.crashpoints`), restarted without the crash armed, and must end with every
acknowledged event `done`/`ignored`/`dead`, no SMS or ticket sent twice, and a sound file.

"Acknowledged" is what the PBX saw: the simulator records each delivery's status. A crash
before the 2xx leaves the delivery failed at the PBX (it does not redeliver), so such a message
is recovered — if at all — by the gap filler reading it back through the API after the restart
(`via = 'backfill'`); one acknowledged is in the inbox whatever happens next.

The two unknown-outcome cases are told apart by `attempt_started_at`: a crash at `before_call`
leaves it set with nothing sent, and the restart looks upstream, finds nothing and sends once; a
crash at `after_call` (or `before_outcome`) leaves it set *after* the upstream acted, and the
restart looks (the session's messages for an SMS, the `[ref: key]` line for a Halo ticket),
finds it and does not send again.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.reliability.harness import OURS, World, post, world

STRANGER = "15550009999"  # no synced record: its messages become Halo tickets


async def _arrive(w: World, scenario: str, text: str) -> tuple[str, str, bool]:
    """Make an SMS arrive at the PBX (which posts it to the daemon); (sender, message id,
    whether the PBX saw a 2xx)."""
    sender = w.client_phone if scenario == "hello" else STRANGER
    before = len(w.ns.deliveries)
    msg = await w.ns.inbound_sms(sender, OURS, text)
    (delivery,) = w.ns.deliveries[before:]
    return sender, str(msg["id"]), delivery.status == 200


def _effects(w: World, scenario: str, sender: str) -> int:
    """What the upstream did for this scenario: SMS sent to the sender, or tickets opened."""
    return len(w.sms_to(sender)) if scenario == "hello" else len(w.tickets_from(sender))


# (point, scenario, acknowledged, effect already done when it died, inbox row after the crash)
MATRIX = [
    ("after_parse", "ticket", False, 0, None),
    ("before_commit", "ticket", False, 0, None),
    ("after_commit_before_2xx", "hello", False, 0, "pending"),
    ("after_plan", "ticket", True, 0, "pending"),
    ("before_call", "hello", True, 0, "pending"),
    ("before_call", "ticket", True, 0, "pending"),
    ("after_call", "hello", True, 1, "pending"),
    ("after_call", "ticket", True, 1, "pending"),
    ("before_outcome", "hello", True, 1, "pending"),
    ("before_outcome", "ticket", True, 1, "pending"),
]


@pytest.mark.parametrize(
    ("point", "scenario", "acked", "done_before", "row_after_crash"),
    MATRIX,
    ids=[f"{p}-{s}" for p, s, *_ in MATRIX],
)
async def test_sigkill_at_each_point_then_restart(
    tmp_path: Path,
    point: str,
    scenario: str,
    acked: bool,
    done_before: int,
    row_after_crash: str | None,
) -> None:
    async with world(tmp_path) as w:
        d = await w.start(crash_at=point)
        sender, message_id, was_acked = await _arrive(w, scenario, f"{scenario} crash {point}")
        assert await d.wait_exit() == -signal.SIGKILL
        assert was_acked is acked

        # What the dead process left behind.
        row = w.event_of(message_id)
        assert (row[1] if row else None) == row_after_crash
        assert _effects(w, scenario, sender) == done_before
        if row is not None:
            actions = w.actions(row[0])
            if point in ("after_commit_before_2xx",):
                assert actions == []  # not even planned
            else:
                (action,) = actions
                assert action["status"] == "pending" and action["attempts"] == 0
                started = action["attempt_started_at"] is not None
                # Set before the call whether or not the call happened: the restart must look.
                assert started is (point not in ("after_plan",)), action

        d2 = await w.start()
        await w.settled(d2)
        assert await d2.stop() == 0
        assert not d.tracebacks() and not d2.tracebacks()

        w.assert_invariants([message_id] if acked else [])
        assert _effects(w, scenario, sender) == 1  # exactly once, whoever did it
        row = w.event_of(message_id)
        assert row is not None and row[1] == "done"
        # A message the PBX never saw acknowledged came back through the gap filler.
        assert row[2] == ("webhook" if row_after_crash else "backfill")
        found = d2.events("action.found")
        assert len(found) == (1 if done_before else 0), found


async def test_a_crash_after_a_note_is_found_on_the_thread(tmp_path: Path) -> None:
    """The second message from a number is a note on its open ticket; a crash after the note
    was added is found by the note's `[ref: key]` on the thread's ticket, not added again."""
    async with world(tmp_path) as w:
        d = await w.start(crash_at="after_call@2")
        _, first, acked1 = await _arrive(w, "ticket", "the line is dead")
        _, second, acked2 = await _arrive(w, "ticket", "still dead")
        assert await d.wait_exit() == -signal.SIGKILL
        (ticket,) = w.tickets_from(STRANGER)
        notes = [a for a in w.halo.table("Actions") if a.get("ticket_id") == ticket["id"]]
        assert len([n for n in notes if "still dead" in str(n.get("note"))]) == 1

        d2 = await w.start()
        await w.settled(d2)
        assert await d2.stop() == 0
        w.assert_invariants([first, second])
        assert acked1 and acked2 and len(d2.events("action.found")) == 1
        notes = [a for a in w.halo.table("Actions") if a.get("ticket_id") == ticket["id"]]
        assert len([n for n in notes if "still dead" in str(n.get("note"))]) == 1
        assert len(w.tickets_from(STRANGER)) == 1


@pytest.mark.parametrize("how", ["no session id", "session refused"])
async def test_a_reply_that_opened_a_new_session_is_found_after_a_crash(
    tmp_path: Path, how: str
) -> None:
    """A reply that had to start a *new* session — the message came without a session id, or
    the PBX refused its session — is known by an id only the lost answer carried. After a crash
    between that send and its record, the restart looks in the sessions the PBX lists for the
    sending user with the recipient, finds the reply there and does not send it again."""
    async with world(tmp_path) as w:
        d = await w.start(crash_at="after_call")
        message = w.ns.record_inbound_sms(w.client_phone, OURS, "hello")
        if how == "no session id":
            message.pop("messagesession-id")  # as a PBX posting without the session would
        else:
            w.ns.reject_unknown_sessions = True
            message["messagesession-id"] = "0" * 32  # a session the PBX does not know
        assert await post(w.webhook_url, [message]) == 200
        assert await d.wait_exit() == -signal.SIGKILL
        assert len(w.sms_to(w.client_phone)) == 1
        row = w.event_of(str(message["id"]))
        assert row is not None
        (action,) = w.actions(row[0])
        assert action["attempt_started_at"] is not None  # the restart knows it is uncertain

        d2 = await w.start()
        await w.settled(d2)
        assert await d2.stop() == 0
        assert len(w.sms_to(w.client_phone)) == 1  # found in the new session: not sent again
        (found,) = d2.events("action.found")
        assert found["found_in"] == "new session"
        row = w.event_of(str(message["id"]))
        assert row is not None and row[1] == "done"
        assert w.integrity() == "ok"
