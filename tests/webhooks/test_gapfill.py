"""Backfill: events missed while the listener was down reach the inbox once; overlap with live
webhook deliveries produces no duplicates (same dedupe keys on both paths)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.clients.netsapiens import NetsapiensClient, parse_ns_datetime
from daemon.clock import FakeClock
from daemon.errors import UpstreamError
from daemon.sandbox import netsapiens_sim
from daemon.sandbox.netsapiens_sim import NetsapiensState
from daemon.sandbox.server import serve_app
from daemon.store import InsertedEvent, NewEvent, Store, SyncState
from daemon.webhooks.event import body_hash
from daemon.webhooks.events import parse_payload
from daemon.webhooks.gapfill import JOB, Backfiller, should_backfill
from daemon.webhooks.inbox import new_event
from daemon.webhooks.keeper import SubscriptionKeeper
from tests.netsapiens_fixtures import *  # noqa: F403 - fixtures
from tests.netsapiens_fixtures import SECRET, T0, WebhookListener

pytestmark = pytest.mark.timeout(30)


def make_keeper(
    client: NetsapiensClient, store: Store, clock: FakeClock, public_url: str
) -> SubscriptionKeeper:
    return SubscriptionKeeper(
        client, store, clock=clock, public_url=public_url, secret=SECRET, models=["message", "cdr"]
    )


async def test_events_missed_while_listener_down_are_backfilled_once(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    hook = WebhookListener(ns_store, ns_clock)
    async with serve_app(hook.app()) as url:
        hook.url = url
        await make_keeper(ns_client, ns_store, ns_clock, hook.public_url).sync_once()
        live = await ns_state.inbound_sms("15551230000", "15559870000", "before the outage")
    # the listener is down now: deliveries fail and the PBX never retries them
    ns_clock.advance(600)
    missed = [
        await ns_state.inbound_sms("15551230000", "15559870000", "balance?"),
        await ns_state.inbound_sms("15557770000", "15559870000", "hello"),
    ]
    ns_state.add_cdr("15557770000", "15559870000", duration=0, start=ns_clock.now())
    assert [d.status for d in ns_state.deliveries] == [200, None, None]
    assert ns_state.live_subscriptions("message")[0]["error-count"] == 2

    ns_clock.advance(60)
    woken: list[int] = []
    backfiller = Backfiller(
        ns_client, ns_store, clock=ns_clock, default_region="US", on_events=woken.extend
    )
    since = await backfiller.default_since()
    assert since == T0 - timedelta(minutes=10)  # last arrival minus the overlap margin
    report = await backfiller.backfill()
    assert (report.fetched, report.inserted, report.duplicates) == (4, 3, 1)
    # the dispatcher is told the recovered events' ids, as the listener tells it of its own
    live_id = (await ns_store.list_events(limit=10))[-1].id
    assert sorted(woken) == sorted(r.id for r in await ns_store.list_events() if r.id != live_id)
    keys = {r.dedupe_key for r in await ns_store.list_events()}
    assert keys == {f"netsapiens:message:{m['id']}" for m in [live, *missed]} | {
        "netsapiens:cdr:{call-orig-call-id}+{call-term-call-id}".format_map(ns_state.cdrs[0])
    }
    kinds = sorted(r.kind for r in await ns_store.list_events())
    assert kinds == ["call.missed", "message.received", "message.received", "message.received"]

    again = await backfiller.backfill(since=T0 - timedelta(hours=1))
    assert (again.inserted, again.duplicates) == (0, 4)
    assert len(woken) == 3  # duplicates wake nobody
    assert len(await ns_store.list_events()) == 4
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.last_success_at == ns_clock.now()


async def test_overlap_with_live_delivery_causes_no_duplicate(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    listener: WebhookListener,
) -> None:
    await make_keeper(ns_client, ns_store, ns_clock, listener.public_url).sync_once()
    msg = await ns_state.inbound_sms("15551230000", "15559870000", "balance?")
    assert listener.deliveries == 1
    webhook_row = (await ns_store.list_events())[0]
    report = await Backfiller(ns_client, ns_store, clock=ns_clock).backfill(
        since=T0 - timedelta(minutes=5)
    )
    assert (report.inserted, report.duplicates) == (0, 1)
    rows = await ns_store.list_events()
    assert [r.id for r in rows] == [webhook_row.id]
    assert rows[0].dedupe_key == f"netsapiens:message:{msg['id']}"


async def test_backfill_skips_messages_before_since(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    ns_state.record_inbound_sms("15551230000", "15559870000", "old")
    ns_clock.advance(3600)
    ns_state.record_inbound_sms("15551230000", "15559870000", "new")
    report = await Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False).backfill(
        since=ns_clock.now() - timedelta(minutes=1)
    )
    assert (report.fetched, report.inserted) == (1, 1)


async def test_default_since_without_history_from_the_inbox_and_from_cursor(
    ns_client: NetsapiensClient, ns_store: Store, ns_clock: FakeClock
) -> None:
    b = Backfiller(ns_client, ns_store, clock=ns_clock, first_lookback=timedelta(hours=6))
    assert await b.default_since() == T0 - timedelta(hours=6)
    # Before any backfill, the newest inbox event says where deliveries stopped ...
    await ns_store.insert_events(
        [NewEvent("netsapiens", "message.received", "k", "{}", T0 - timedelta(days=30))]
    )
    assert await b.default_since() == T0 - timedelta(days=7)  # capped at max_lookback
    await ns_store.insert_events(
        [NewEvent("netsapiens", "message.received", "k2", "{}", T0 - timedelta(hours=2))]
    )
    assert await b.default_since() == T0 - timedelta(hours=2, minutes=10)
    # ... after one, the cursor does, whatever the inbox holds.
    await ns_store.set_sync_state(JOB, cursor=(T0 - timedelta(hours=3)).isoformat())
    assert await b.default_since() == T0 - timedelta(hours=3, minutes=10)
    await ns_store.insert_events([NewEvent("netsapiens", "message.received", "k3", "{}", T0)])
    assert await b.default_since() == T0 - timedelta(hours=3, minutes=10)
    await ns_store.set_sync_state(JOB, cursor=(T0 - timedelta(days=30)).isoformat())
    assert await b.default_since() == T0 - timedelta(days=7)


@pytest.mark.parametrize(
    ("last_minutes_ago", "expected"), [(None, True), (5, False), (59, False), (60, True)]
)
def test_should_backfill(last_minutes_ago: int | None, expected: bool) -> None:
    last = None if last_minutes_ago is None else T0 - timedelta(minutes=last_minutes_ago)
    assert should_backfill(T0, last, timedelta(hours=1)) is expected


async def test_sim_inbound_sms_over_http(
    ns_sim: str,
    ns_state: NetsapiensState,
    listener: WebhookListener,
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_clock: FakeClock,
) -> None:
    import aiohttp

    from daemon.sandbox.netsapiens_sim import SIM_INBOUND_PATH

    await make_keeper(ns_client, ns_store, ns_clock, listener.public_url).sync_once()
    async with aiohttp.ClientSession() as http:
        body = {"from": "15551230000", "to": "15559870000", "text": "balance?"}
        async with http.post(ns_sim + SIM_INBOUND_PATH, json=body) as resp:
            assert resp.status == 200
            answer = await resp.json()
        async with http.post(ns_sim + SIM_INBOUND_PATH, json={"from": "x"}) as resp:
            assert resp.status == 400
    assert answer["deliveries"] == [200]
    rows = await ns_store.list_events()
    assert [r.dedupe_key for r in rows] == [f"netsapiens:message:{answer['message']['id']}"]


def conversations(
    state: NetsapiensState, clock: FakeClock, people: int, messages: int
) -> dict[str, list[str]]:
    """`people` senders, each with `messages` inbound SMS in their own session, one second
    apart (so the newest-first session listing has a fixed order); session id → message ids."""
    out: dict[str, list[str]] = {}
    for p in range(people):
        clock.advance(1)
        for m in range(messages):
            msg = state.record_inbound_sms(f"1555000{p:04d}", "15559870000", f"msg {m}")
            out.setdefault(msg["messagesession-id"], []).append(msg["id"])
    return out


def requests_to(state: NetsapiensState, ending: str) -> int:
    return sum(n for path, n in state.stats.requests.items() if path.endswith(ending))


async def message_keys(store: Store) -> set[str]:
    return {r.dedupe_key for r in await store.list_events() if r.kind.startswith("message.")}


def keys_of(sessions: dict[str, list[str]], *sids: str) -> set[str]:
    return {f"netsapiens:message:{m}" for sid in (sids or sessions) for m in sessions[sid]}


async def test_every_page_of_sessions_and_messages_is_read(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    sessions = conversations(ns_state, ns_clock, people=7, messages=5)
    ns_clock.advance(60)
    backfiller = Backfiller(ns_client, ns_store, clock=ns_clock, page_size=2, include_cdrs=False)
    report = await backfiller.backfill()
    assert (report.sessions, report.fetched, report.inserted) == (7, 35, 35)
    assert report.complete
    assert await message_keys(ns_store) == keys_of(sessions)
    assert requests_to(ns_state, "/messagesessions") == 4  # 2 + 2 + 2 + 1
    for sid in sessions:
        assert requests_to(ns_state, f"/messagesessions/{sid}/messages") == 3  # 2 + 2 + 1
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.cursor == ns_clock.now().isoformat()


@pytest.mark.parametrize(
    ("status", "others_read"),
    [(404, True), (503, False)],  # a final answer about one session / the upstream is unwell
)
async def test_a_session_that_fails_keeps_the_cursor_and_the_next_backfill_reads_it(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    status: int,
    others_read: bool,
) -> None:
    backfiller = Backfiller(ns_client, ns_store, clock=ns_clock, page_size=2)
    await backfiller.backfill()  # nothing yet; sets the cursor
    first = await ns_store.get_sync_state(JOB)
    assert first is not None and first.cursor == T0.isoformat()

    ns_clock.advance(600)
    sessions = conversations(ns_state, ns_clock, people=4, messages=3)
    ns_state.add_cdr("15557770000", "15559870000", duration=0, start=ns_clock.now())
    broken = list(sessions)[1]  # the listing is newest first: the third one read
    ns_state.faults.update(
        {
            "path_filter": f"/messagesessions/{broken}/messages",
            "fail_next": 100,
            "fail_status": status,
        }
    )
    ns_clock.advance(60)
    with capture_logs() as logs, pytest.raises(UpstreamError):
        await backfiller.backfill()
    incomplete = [e for e in logs if e["event"] == "backfill.incomplete"]
    assert len(incomplete) == 1 and not incomplete[0]["complete"]
    assert incomplete[0]["errors"][0].startswith(f"session {broken}")
    got = await message_keys(ns_store)
    assert not got & keys_of(sessions, broken)
    read_first = [sid for sid in list(sessions)[::-1] if sid != broken]  # newest first
    expected = keys_of(sessions, *read_first) if others_read else keys_of(sessions, *read_first[:2])
    assert got == expected  # what was read before (and, for a 404, after) is kept
    # the CDR call is separate and succeeded
    assert len([r for r in await ns_store.list_events() if r.kind.startswith("call.")]) == 1
    state = await ns_store.get_sync_state(JOB)
    assert state is not None
    assert (state.cursor, state.last_success_at) == (first.cursor, first.last_success_at)

    ns_state.faults.update({"path_filter": None, "fail_next": 0})
    ns_clock.advance(60)
    assert await backfiller.default_since() == T0 - timedelta(minutes=10)
    again = await backfiller.backfill()
    assert again.complete
    assert await message_keys(ns_store) == keys_of(sessions)
    assert again.inserted == 12 - len(expected)
    assert again.duplicates == len(expected) + 1  # and the CDR, read again
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.cursor == ns_clock.now().isoformat()


async def test_a_failed_cdr_listing_on_the_first_backfill_pins_the_cursor_at_its_start(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    sessions = conversations(ns_state, ns_clock, people=2, messages=2)
    ns_state.add_cdr("15557770000", "15559870000", duration=0, start=ns_clock.now())
    ns_state.faults.update({"path_filter": "/cdrs", "fail_next": 100, "fail_status": 500})
    backfiller = Backfiller(ns_client, ns_store, clock=ns_clock, first_lookback=timedelta(hours=6))
    started = ns_clock.now()
    with pytest.raises(UpstreamError):
        await backfiller.backfill()
    assert await message_keys(ns_store) == keys_of(sessions)  # the messages were inserted
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.last_success_at is None
    assert state.cursor == (started - timedelta(hours=6)).isoformat()
    # The messages just inserted do not move the next window past the missing CDR.
    assert await backfiller.default_since() == started - timedelta(hours=6, minutes=10)

    ns_state.faults.update({"path_filter": None, "fail_next": 0})
    ns_clock.advance(60)
    report = await backfiller.backfill()
    assert (report.inserted, report.duplicates) == (1, 4)
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.cursor == ns_clock.now().isoformat()


async def test_a_later_explicit_window_does_not_move_the_cursor_over_a_gap(
    ns_client: NetsapiensClient, ns_store: Store, ns_clock: FakeClock
) -> None:
    backfiller = Backfiller(ns_client, ns_store, clock=ns_clock)
    await ns_store.set_sync_state(JOB, cursor=(T0 - timedelta(hours=2)).isoformat())
    await backfiller.backfill(since=T0 - timedelta(minutes=5))  # [-2h, -5m] never read
    state = await ns_store.get_sync_state(JOB)
    assert state is not None and state.cursor == (T0 - timedelta(hours=2)).isoformat()
    assert state.last_success_at == T0


class RecordingInbox:
    """The real store, with every NewEvent handed to insert_events kept for inspection."""

    def __init__(self, store: Store):
        self.store = store
        self.inserted: list[NewEvent] = []

    async def insert_events(self, events: Sequence[NewEvent]) -> Sequence[InsertedEvent]:
        self.inserted.extend(events)
        return await self.store.insert_events(events)

    async def last_event_time(self, source: str, kind_prefix: str = "") -> datetime | None:
        return await self.store.last_event_time(source, kind_prefix)

    async def get_sync_state(self, job: str) -> SyncState | None:
        return await self.store.get_sync_state(job)

    async def set_sync_state(self, job: str, **fields: Any) -> None:
        await self.store.set_sync_state(job, **fields)  # a field left out stays as it was


async def test_backfilled_events_say_via_backfill_with_sender_time_and_body_hash(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    msg = ns_state.record_inbound_sms("15551230000", "15559870000", "  Balance?  ")
    ns_state.add_cdr("15557770000", "15559870000", duration=0, start=ns_clock.now())
    ns_clock.advance(60)
    inbox = RecordingInbox(ns_store)
    report = await Backfiller(ns_client, inbox, clock=ns_clock).backfill()
    assert report.inserted == 2
    by_kind = {e.kind: e for e in inbox.inserted}
    sms, call = by_kind["message.received"], by_kind["call.missed"]
    assert {e.via for e in inbox.inserted} == {"backfill"}
    assert sms.sender == "+15551230000" and call.sender == "+15557770000"
    assert sms.body_hash == body_hash("balance?") and call.body_hash is None
    assert sms.occurred_at == parse_ns_datetime(msg["timestamp"])
    assert sms.received_at == ns_clock.now()
    # exactly what the listener would have stored for the same object, apart from `via`
    event = parse_payload("message", [msg]).events[0]
    assert sms == new_event(event, via="webhook", received_at=ns_clock.now())._replace(
        via="backfill"
    )
    rows = {r.kind: r for r in await ns_store.list_events()}
    assert rows["message.received"].via == rows["call.missed"].via == "backfill"
    assert rows["message.received"].sender == "+15551230000"
    assert rows["message.received"].body_hash == body_hash("balance?")


async def _message_keys(store: Store) -> set[str]:
    return {
        r.dedupe_key
        for r in await store.list_events(limit=100_000)
        if r.kind.startswith("message.")
    }


def _key(msg: dict[str, Any]) -> str:
    return f"netsapiens:message:{msg['id']}"


# -- found by probing: the cursor after a cancel, a long downtime, a fast clock; long calls ------


async def test_a_first_backfill_cancelled_midway_leaves_its_window_to_be_read_again(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    """Found by probing: the cursor was pinned only on a caught read error; after a cancel (a
    shutdown, a SIGKILL) the next window started at the backfill's own inserts."""
    # An older conversation (3 h ago) and two busy recent ones (250 messages each, 1 h ago).
    old = ns_state.record_inbound_sms("15550000001", "15559870000", "old but missed")
    ns_clock.advance(2 * 3600)
    for p in (2, 3):
        for i in range(250):
            ns_state.record_inbound_sms(f"1555000000{p}", "15559870000", f"m{i}")
    ns_clock.advance(3600)

    real = ns_client.get_messages
    calls = 0

    async def get_messages(*args: Any, **kw: Any) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls == 4:  # the session list, two busy sessions (one batch inserted), then: stop
            raise asyncio.CancelledError  # shutdown_timeout cancels the gap filler (or SIGKILL)
        return await real(*args, **kw)

    ns_client.get_messages = get_messages  # type: ignore[method-assign]
    b = Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False)
    with pytest.raises(asyncio.CancelledError):
        await b.backfill()
    assert len(await _message_keys(ns_store)) == 500  # the first batch was committed
    ns_client.get_messages = real  # type: ignore[method-assign]

    ns_clock.advance(60)  # restart
    b2 = Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False)
    await b2.backfill()
    assert _key(old) in await _message_keys(ns_store), "the old session's missed message is lost"


async def test_the_cursor_moves_again_after_a_downtime_longer_than_max_lookback(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    """Found by probing: `since` cut at max_lookback came after the cursor, so no window ever
    counted as reaching back to it, and every backfill read 7 days."""
    b = Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False)
    await b.backfill()
    ns_clock.advance(8 * 86400)  # the service was down 8 days
    await b.backfill()  # reads the last 7 days (the documented cap): fine
    ns_clock.advance(600)
    await b.backfill()
    ns_clock.advance(600)
    # After two complete backfills the next window is minutes, not 7 days: the default window
    # that max_lookback cut gives the older gap up (logged), and the cursor moves again.
    assert ns_clock.now() - await b.default_since() < timedelta(hours=1)


async def test_the_cdr_of_a_call_longer_than_the_overlap_is_backfilled(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    """Found by probing: a CDR appears when its call ends but is dated by its start, which an
    earlier backfill's window had already passed."""
    b = Backfiller(ns_client, ns_store, clock=ns_clock)
    await b.backfill()  # cursor = T0
    call_start = ns_clock.now() + timedelta(minutes=1)
    ns_clock.advance(20 * 60)
    await b.backfill()  # during the call: nothing yet; cursor = T0 + 20m
    ns_clock.advance(20 * 60)
    # the call (a caller abandoned in a queue after 39 minutes: a missed call) ends now and
    # its CDR webhook is lost (listener down / subscription in error)
    cdr = ns_state.add_cdr("15557770000", "15559870000", duration=0, start=call_start)
    cdr["call-disconnect-datetime"] = netsapiens_sim.ns_dt(ns_clock.now())
    cdr["call-total-duration-seconds"] = 39 * 60
    ns_clock.advance(30 * 60)
    await b.backfill()
    calls = [r for r in await ns_store.list_events() if r.kind.startswith("call.")]
    assert calls, "the missed call's CDR was never backfilled"


async def test_a_cursor_written_by_a_fast_clock_does_not_skip_missed_messages(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    """Found by probing: a cursor in the future (our clock ran fast, then was stepped back)
    made the next window inverted, and what it should have read was lost."""
    fast = FakeClock(T0 + timedelta(hours=2))  # our clock 2 h fast (no NTP yet at boot)
    await Backfiller(ns_client, ns_store, clock=fast, include_cdrs=False).backfill()
    # NTP steps our clock back to the truth (ns_clock, which the PBX shares)
    ns_clock.advance(600)
    missed = ns_state.record_inbound_sms(
        "15551230000", "15559870000", "while the listener was down"
    )
    ns_clock.advance(1800)
    b = Backfiller(ns_client, ns_store, clock=ns_clock, include_cdrs=False)
    await b.backfill()
    assert _key(missed) in await _message_keys(ns_store), (
        "missed message lost: cursor in the future"
    )
