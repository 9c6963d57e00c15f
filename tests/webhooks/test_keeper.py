"""SubscriptionKeeper against the simulator and the real Store (tmp_path SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.clients.netsapiens import NetsapiensClient, parse_ns_datetime
from daemon.clock import FakeClock
from daemon.errors import LimitExceeded, NotFoundError, ServerError
from daemon.sandbox.netsapiens_sim import NetsapiensState
from daemon.store import Store
from daemon.webhooks.keeper import SubscriptionKeeper, next_check_delay, redact_url
from tests.netsapiens_fixtures import *  # noqa: F403 - fixtures
from tests.netsapiens_fixtures import SECRET, T0, WebhookListener, ns_settings, wait_for

pytestmark = pytest.mark.timeout(30)
PUBLIC = "https://hooks.example.com/webhooks/netsapiens"
LIFETIME = timedelta(hours=24)
RENEW = timedelta(minutes=15)


def keeper(client: Any, store: Store, clock: FakeClock, **kw: Any) -> SubscriptionKeeper:
    values: dict[str, Any] = {
        "clock": clock,
        "public_url": PUBLIC + "/",
        "secret": SECRET,
        "models": ["message", "cdr"],
        "renew_before": RENEW,
        "lifetime": LIFETIME,
    }
    values.update(kw)
    return SubscriptionKeeper(client, store, **values)


def upstream(state: NetsapiensState, model: str | None = None) -> list[dict[str, Any]]:
    return state.live_subscriptions(model)


async def test_creates_with_explicit_expiry_and_records(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    k = keeper(ns_client, ns_store, ns_clock)
    assert k.post_url("message") == f"{PUBLIC}/message/{SECRET}"
    report = await k.sync_once()
    assert len(report.created) == 2 and not report.errors
    subs = upstream(ns_state)
    assert {s["model"] for s in subs} == {"message", "cdr"}
    for s in subs:
        assert parse_ns_datetime(s["subscription-expires-datetime"]) == T0 + LIFETIME
        assert s["post-url"] == k.post_url(s["model"]) and s["domain"] == "*"
    rows = await ns_store.list_subscriptions()
    assert {r.id for r in rows} == {s["id"] for s in subs}
    assert all(r.expires_at == T0 + LIFETIME and r.status == "pending" for r in rows)
    # Recorded masked: the secret is the URL's last segment and never reaches the database.
    assert {r.post_url for r in rows} == {f"{PUBLIC}/{m}/[REDACTED]" for m in ("message", "cdr")}
    again = await k.sync_once()
    assert sorted(again.unchanged) == sorted(report.created) and not again.created


async def test_renews_before_expiry(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    k = keeper(ns_client, ns_store, ns_clock, models=["message"])
    created = (await k.sync_once()).created
    ns_clock.advance((LIFETIME - RENEW).total_seconds() - 60)
    assert (await k.sync_once()).unchanged == created
    ns_clock.advance(61)
    report = await k.sync_once()
    assert report.renewed == created
    new_expiry = ns_clock.now() + LIFETIME
    sub = upstream(ns_state, "message")[0]
    assert parse_ns_datetime(sub["subscription-expires-datetime"]) == new_expiry
    assert (await ns_store.list_subscriptions())[0].expires_at == new_expiry


async def test_run_loop_sleeps_until_renewal(
    ns_sim: str, ns_store: Store, ns_state: NetsapiensState
) -> None:
    clock = FakeClock(T0)  # manual: the loop must wait for advance()
    ns_state.now, ns_state.wall = clock.monotonic, clock.now
    async with NetsapiensClient.from_settings(ns_settings(ns_sim), clock=clock) as client:
        k = keeper(
            client,
            ns_store,
            clock,
            models=["message"],
            lifetime=timedelta(hours=1),
            max_interval=3600.0,
        )
        task = asyncio.create_task(k.run())
        try:
            await wait_for(lambda: k.last_report is not None and clock.sleepers == 1)
            first = k.last_report
            assert first is not None and len(first.created) == 1
            assert clock.sleeps[-1] == pytest.approx((timedelta(hours=1) - RENEW).total_seconds())
            # tokens expire after an hour too; the client refreshes them on its own
            clock.advance(clock.sleeps[-1])
            await wait_for(lambda: k.last_report is not first and clock.sleepers == 1)
            assert k.last_report is not None and k.last_report.renewed == first.created
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_adopts_after_restart_instead_of_duplicating(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    tmp_path: Any,
) -> None:
    first = await keeper(ns_client, ns_store, ns_clock).sync_once()
    async with Store.open(tmp_path / "fresh.db", clock=ns_clock) as fresh:
        with capture_logs() as logs:
            report = await keeper(ns_client, fresh, ns_clock).sync_once()
        assert sorted(report.adopted) == sorted(first.created) and not report.created
        assert len(await fresh.list_subscriptions()) == 2
    assert len(upstream(ns_state)) == 2
    assert {e["event"] for e in logs if e["event"].startswith("subscription.")} == {
        "subscription.adopted"
    }


class StaleList:
    """A subscriptions API whose first list() misses what exists (a race with another
    instance), so create() meets the 409."""

    def __init__(self, real: Any):
        self.real = real
        self.lists = 0

    async def list(self) -> list[dict[str, Any]]:
        self.lists += 1
        return [] if self.lists == 1 else await self.real.list()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Wrapped:
    def __init__(self, client: NetsapiensClient, subs: Any):
        self.subscriptions = subs
        self.client = client


async def test_conflict_on_create_adopts_existing(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    existing = await ns_client.subscriptions.create(
        "message", f"{PUBLIC}/message/{SECRET}", expires_at=T0 + LIFETIME
    )
    wrapped = Wrapped(ns_client, StaleList(ns_client.subscriptions))
    report = await keeper(wrapped, ns_store, ns_clock, models=["message"]).sync_once()
    assert report.adopted == [existing["id"]] and not report.errors
    assert len(upstream(ns_state)) == 1


async def test_replaces_one_deleted_behind_its_back(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    k = keeper(ns_client, ns_store, ns_clock, models=["message"])
    old = (await k.sync_once()).created[0]
    del ns_state.subscriptions[old]
    report = await k.sync_once()
    assert len(report.created) == 1 and report.created[0] != old
    assert report.gap_suspected
    assert [r.id for r in await ns_store.list_subscriptions()] == report.created


async def test_replaces_subscription_in_error(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    k = keeper(ns_client, ns_store, ns_clock, models=["message"])
    old = (await k.sync_once()).created[0]
    for _ in range(ns_state.error_after):  # nothing listens at PUBLIC: every post fails
        ns_state.subscriptions[old]["post-url"] = "http://127.0.0.1:9/nowhere"
        await ns_state.emit("message", [{"id": "m"}])
    ns_state.subscriptions[old]["post-url"] = k.post_url("message")
    assert ns_state.subscriptions[old]["status"] == "error"
    report = await k.sync_once()
    assert len(report.replaced) == 1 and report.deleted == [old] and report.gap_suspected
    assert [s["id"] for s in upstream(ns_state)] == report.replaced
    assert [r.id for r in await ns_store.list_subscriptions()] == report.replaced


async def test_cleans_duplicates_keeping_latest_expiry(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    url = f"{PUBLIC}/message/{SECRET}"
    a = await ns_client.subscriptions.create("message", url, expires_at=T0 + timedelta(hours=5))
    # duplicates the PBX let through (older builds, or another domain spelling)
    b = {**a, "id": "b" * 32, "subscription-expires-datetime": "2025-01-03 10:00:00"}
    c = {**a, "id": "c" * 32, "subscription-expires-datetime": "2025-01-02 18:00:00"}
    ns_state.subscriptions.update({b["id"]: b, c["id"]: c})
    report = await keeper(ns_client, ns_store, ns_clock, models=["message"]).sync_once()
    assert sorted(report.deleted) == sorted([a["id"], c["id"]])
    assert report.adopted == [b["id"]]
    assert [s["id"] for s in upstream(ns_state)] == [b["id"]]


async def test_renewal_404_recreates(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    class VanishOnUpdate:
        def __init__(self, real: Any):
            self.real = real

        async def update(self, sub_id: str, **fields: Any) -> Any:
            del ns_state.subscriptions[sub_id]
            return await self.real.update(sub_id, **fields)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    k = keeper(
        Wrapped(ns_client, VanishOnUpdate(ns_client.subscriptions)),
        ns_store,
        ns_clock,
        models=["message"],
    )
    old = (await k.sync_once()).created[0]
    ns_clock.advance((LIFETIME - RENEW).total_seconds() + 1)
    report = await k.sync_once()
    assert len(report.replaced) == 1 and report.replaced[0] != old
    assert report.gap_suspected
    assert [s["id"] for s in upstream(ns_state)] == report.replaced
    with pytest.raises(NotFoundError):
        await ns_client.subscriptions.get(old)


async def test_unconfigured_model_pointing_at_us_is_deleted(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    stale = await ns_client.subscriptions.create(
        "voicemail", f"{PUBLIC}/voicemail/{SECRET}", expires_at=T0 + LIFETIME
    )
    other = await ns_client.subscriptions.create(
        "voicemail", "https://someone-else.example/vm", expires_at=T0 + LIFETIME
    )
    report = await keeper(ns_client, ns_store, ns_clock, models=["message"]).sync_once()
    assert report.deleted == [stale["id"]]
    assert other["id"] in ns_state.subscriptions


async def test_secret_never_logged(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    k = keeper(ns_client, ns_store, ns_clock)
    with capture_logs() as logs:
        await k.sync_once()
        del ns_state.subscriptions[next(iter(ns_state.subscriptions))]
        await k.sync_once()
        ns_clock.advance((LIFETIME - RENEW).total_seconds() + 1)
        await k.sync_once()
    events = {e["event"] for e in logs}
    assert {"subscription.created", "subscription.renewed"} <= events
    assert SECRET not in repr(logs)
    assert all("[REDACTED]" in e["post_url"] for e in logs if "post_url" in e)
    assert redact_url(k.post_url("cdr"), SECRET).endswith("/cdr/[REDACTED]")


async def test_emitter_delivers_to_listener(
    ns_client: NetsapiensClient,
    ns_store: Store,
    ns_state: NetsapiensState,
    ns_clock: FakeClock,
    listener: WebhookListener,
) -> None:
    k = keeper(ns_client, ns_store, ns_clock, public_url=listener.public_url, secret=SECRET)
    await k.sync_once()
    msg = await ns_state.inbound_sms("15551230000", "15559870000", "balance?")
    assert [d.status for d in ns_state.deliveries] == [200]
    sub = upstream(ns_state, "message")[0]
    assert sub["status"] == "active" and sub["posts-count"] == 1
    rows = await ns_store.list_events()
    assert [(r.kind, r.dedupe_key) for r in rows] == [
        ("message.received", f"netsapiens:message:{msg['id']}")
    ]
    assert upstream(ns_state, "cdr")[0]["status"] == "pending"


@pytest.mark.parametrize(
    ("expiry_min", "expected"), [(None, 300.0), (60, 300.0), (20, 300.0), (16, 60.0), (10, 1.0)]
)
def test_next_check_delay(expiry_min: int | None, expected: float) -> None:
    expiries = [] if expiry_min is None else [T0 + timedelta(minutes=expiry_min)]
    assert next_check_delay(T0, expiries, RENEW, 300.0) == expected


async def test_subscriptions_command_core(
    ns_sim: str, ns_state: NetsapiensState, ns_clock: FakeClock, tmp_path: Any
) -> None:
    """`daemon subscriptions list|sync|delete` minus config loading (real settings models)."""
    from pathlib import Path

    from daemon.commands.cmd_subscriptions import run
    from daemon.config import parse_settings

    pbx = ns_settings(ns_sim, name="pbx")
    settings = parse_settings(
        {
            "daemon": {"database": str(tmp_path / "state.db")},
            "upstreams": {
                "pbx": {
                    "kind": "netsapiens",
                    "api_url": pbx.api_url,
                    "client_id": pbx.client_id,
                    "client_secret": pbx.client_secret.get_secret_value(),
                    "username": pbx.username,
                    "password": pbx.password.get_secret_value(),
                }
            },
            "webhooks": {
                "netsapiens": {
                    "secret": SECRET,
                    "public_url": PUBLIC,
                    "subscribe": ["message"],
                    "upstream": "pbx",
                }
            },
        },
        env={},
        credentials_dir=None,
        base_dir=Path(tmp_path),
    )
    synced = await run(settings, "sync", None, clock=ns_clock)
    assert len(synced["created"]) == 1
    listed = await run(settings, "list", None, clock=ns_clock)
    assert [s["id"] for s in listed["upstream"]] == synced["created"]
    assert [s["id"] for s in listed["local"]] == synced["created"]
    assert SECRET not in repr(listed)
    deleted = await run(settings, "delete", synced["created"][0], clock=ns_clock)
    assert deleted["upstream_deleted"] and deleted["local_deleted"]
    assert upstream(ns_state) == []
    again = await run(settings, "delete", synced["created"][0], clock=ns_clock)
    assert not again["upstream_deleted"] and not again["local_deleted"]


NEW_SECRET = "rotated-secret-abcdef0123"


async def test_rotation_replaces_subscriptions_carrying_the_previous_secret(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    before = await keeper(ns_client, ns_store, ns_clock).sync_once()  # under SECRET
    old_ids = sorted(before.created)
    rotated = keeper(ns_client, ns_store, ns_clock, secret=NEW_SECRET, previous_secrets=[SECRET])
    with capture_logs() as logs:
        report = await rotated.sync_once()
    assert sorted(report.deleted) == old_ids
    assert len(report.replaced) == 2 and not report.created and not report.gap_suspected
    subs = upstream(ns_state)
    assert sorted(s["id"] for s in subs) == sorted(report.replaced)
    assert {s["post-url"] for s in subs} == {
        f"{PUBLIC}/message/{NEW_SECRET}",
        f"{PUBLIC}/cdr/{NEW_SECRET}",
    }
    rows = await ns_store.list_subscriptions()
    assert sorted(r.id for r in rows) == sorted(report.replaced)
    replaced = [e for e in logs if e["event"] == "subscription.replaced"]
    assert sorted(e["old_id"] for e in replaced) == old_ids
    assert {e["reason"] for e in replaced} == {"rotation"}
    assert SECRET not in repr(logs) and NEW_SECRET not in repr(logs)
    # the next pass has nothing left to rotate
    again = await rotated.sync_once()
    assert sorted(again.unchanged) == sorted(report.replaced) and not again.deleted


async def test_rotation_keeps_the_old_subscription_when_creating_the_new_one_fails(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    before = await keeper(ns_client, ns_store, ns_clock, models=["message"]).sync_once()
    rotated = keeper(
        ns_client,
        ns_store,
        ns_clock,
        models=["message"],
        secret=NEW_SECRET,
        previous_secrets=[SECRET],
    )

    async def refuse(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ServerError("unavailable", upstream="netsapiens", status=503)

    real_create = ns_client.subscriptions.create
    ns_client.subscriptions.create = refuse  # type: ignore[method-assign]
    try:
        report = await rotated.sync_once()
    finally:
        ns_client.subscriptions.create = real_create  # type: ignore[method-assign]
    assert "message" in report.errors and not report.deleted
    assert [s["id"] for s in upstream(ns_state)] == before.created  # still delivering
    report = await rotated.sync_once()
    assert report.deleted == before.created and len(report.replaced) == 1


async def test_rotated_subscription_for_a_dropped_model_is_deleted(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    before = await keeper(ns_client, ns_store, ns_clock).sync_once()
    cdr_id = next(s["id"] for s in upstream(ns_state, "cdr"))
    rotated = keeper(
        ns_client,
        ns_store,
        ns_clock,
        models=["message"],
        secret=NEW_SECRET,
        previous_secrets=[SECRET],
    )
    report = await rotated.sync_once()
    assert cdr_id in report.deleted and len(before.created) == 2
    assert [s["model"] for s in upstream(ns_state)] == ["message"]


async def test_without_previous_secrets_an_old_secret_url_is_someone_elses(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    before = await keeper(ns_client, ns_store, ns_clock, models=["message"]).sync_once()
    report = await keeper(
        ns_client, ns_store, ns_clock, models=["message"], secret=NEW_SECRET
    ).sync_once()
    assert not report.deleted and len(report.created) == 1
    assert before.created[0] in ns_state.subscriptions


# -- found by probing: a clock ahead of the PBX's, stale rows, a gap fill past max_pages ----

SKEW = timedelta(hours=1)  # the PBX's clock an hour behind ours


@contextlib.asynccontextmanager
async def _ahead_of_the_pbx(
    ns_sim: str, ns_store: Store, ns_state: NetsapiensState
) -> AsyncIterator[tuple[FakeClock, SubscriptionKeeper, list[int], str]]:
    """A keeper whose subscription exists, then whose clock steps 24 h 30 m forward (a suspended
    VM resumes) while the PBX's runs an hour behind ours: still live on the PBX, the
    subscription looks long expired to us. Yields the clock, the keeper, its gap fills and the
    subscription's id."""
    clock = FakeClock(T0)
    ns_state.now = clock.monotonic
    ns_state.wall = lambda: clock.now() - SKEW
    gaps: list[int] = []

    async def on_gap() -> None:
        gaps.append(1)

    async with NetsapiensClient.from_settings(ns_settings(ns_sim), clock=clock) as client:
        keeper = SubscriptionKeeper(
            client, ns_store, clock=clock, public_url=PUBLIC, secret=SECRET,
            models=["message"], on_gap=on_gap,
        )  # fmt: skip
        first = await keeper.sync_once()
        clock.set_wall(T0 + timedelta(hours=24, minutes=30))
        yield clock, keeper, gaps, first.created[0]


async def test_subscription_that_looks_expired_to_us_but_is_live_on_the_pbx_is_renewed(
    ns_sim: str, ns_store: Store, ns_state: NetsapiensState
) -> None:
    """Found by probing: judged by our clock (ahead of the PBX's) a listed subscription
    looked expired, was neither renewed nor replaced, and the loop woke every second."""
    async with _ahead_of_the_pbx(ns_sim, ns_store, ns_state) as (clock, keeper, _, sub_id):
        report = await keeper.sync_once()
        sub = ns_state.subscriptions[sub_id]
        pbx_expiry = parse_ns_datetime(sub["subscription-expires-datetime"])
        assert sub_id in report.renewed
        assert pbx_expiry is not None and pbx_expiry > clock.now()


async def test_run_loop_does_not_spin_once_a_second_with_a_backfill_each_pass(
    ns_sim: str, ns_store: Store, ns_state: NetsapiensState
) -> None:
    async with _ahead_of_the_pbx(ns_sim, ns_store, ns_state) as (clock, keeper, gaps, _):
        task = asyncio.create_task(keeper.run())
        try:
            for _ in range(20):
                await wait_for(lambda: clock.sleepers == 1)
                clock.advance(clock.sleeps[-1])
            await wait_for(lambda: clock.sleepers == 1)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert sum(clock.sleeps[:20]) > 60  # not a pass a second ...
        assert len(gaps) <= 1  # ... each with a full backfill


async def test_row_of_a_dropped_model_whose_subscription_is_gone_is_removed(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    """Found by probing: a row stayed for a model dropped from `subscribe` after its
    subscription had vanished upstream (`daemon status` kept showing it)."""
    both = SubscriptionKeeper(
        ns_client,
        ns_store,
        clock=ns_clock,
        public_url=PUBLIC,
        secret=SECRET,
        models=["message", "cdr"],
    )
    await both.sync_once()
    cdr = next(s["id"] for s in ns_state.live_subscriptions("cdr"))
    del ns_state.subscriptions[cdr]  # gone upstream (expired while we were down, or deleted)
    only_message = SubscriptionKeeper(
        ns_client, ns_store, clock=ns_clock, public_url=PUBLIC, secret=SECRET, models=["message"]
    )
    await only_message.sync_once()
    await only_message.sync_once()
    rows = await ns_store.list_subscriptions()
    upstream_ids = {s["id"] for s in ns_state.live_subscriptions()}
    stale = [(r.id, r.model) for r in rows if r.id not in upstream_ids]
    # `daemon status` / `subscriptions list` keep showing a cdr subscription that does not exist
    assert not stale, f"rows for subscriptions that no longer exist: {stale}"


async def test_gap_fill_hitting_max_pages_does_not_kill_the_keeper(
    ns_client: NetsapiensClient, ns_store: Store, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    """Found by probing: LimitExceeded (a backfill past max_pages) is not an UpstreamError,
    and it ended the keeper's run loop."""

    async def on_gap() -> None:
        raise LimitExceeded("netsapiens: domains/~/messagesessions has more than max_pages")

    k = SubscriptionKeeper(
        ns_client,
        ns_store,
        clock=ns_clock,
        public_url=PUBLIC,
        secret=SECRET,
        models=["message"],
        on_gap=on_gap,
    )
    await k.sync_once()
    ns_state.subscriptions.clear()  # deleted behind our back: a gap is suspected
    ns_clock.autojump = False
    task = asyncio.create_task(k.run())
    try:
        await wait_for(lambda: task.done() or ns_clock.sleepers == 1)
        assert not task.done(), f"keeper.run() died: {task.exception()!r}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
