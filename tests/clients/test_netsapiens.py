"""NetsapiensClient against the simulator over loopback: tokens, messaging, CDRs, subscriptions."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from daemon.clients.netsapiens import (
    NetsapiensClient,
    SubscriptionExists,
    format_ns_datetime,
    parse_ns_datetime,
    validate_session_id,
)
from daemon.clock import FakeClock
from daemon.errors import AuthError, NotFoundError, ValidationError
from daemon.sandbox.netsapiens_sim import NetsapiensState
from tests.netsapiens_fixtures import *  # noqa: F403 - fixtures
from tests.netsapiens_fixtures import T0, ns_settings

pytestmark = pytest.mark.timeout(30)

SID = "a" * 32


async def test_password_grant_and_token_info(
    ns_client: NetsapiensClient, ns_state: NetsapiensState
) -> None:
    info = await ns_client.token_info()
    assert info["user"] == "101"
    assert info["domain"] == "demo"
    assert info["territory"] == "demo-territory"
    assert info["scope"] == "Super User"
    assert info["expires_at"] == (T0 + timedelta(hours=1)).isoformat()
    assert info["api_url"].endswith("/ns-api/v2")
    assert "access_token" not in info
    assert ns_state.grants == ["password"]


async def test_refreshes_before_expiry(
    ns_client: NetsapiensClient, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    await ns_client.get_messages()
    ns_clock.advance(ns_state.token_ttl - 60 + 1)  # inside the leeway, still valid upstream
    await ns_client.get_messages()
    assert ns_state.grants == ["password", "refresh_token"]
    assert ns_state.stats.requests["/ns-api/v2/domains/~/messagesessions"] == 2  # no 401 retry


async def test_refreshes_on_expired_401_with_rotating_refresh_tokens(
    ns_client: NetsapiensClient, ns_state: NetsapiensState
) -> None:
    await ns_client.get_messages()
    for _ in range(2):  # the second refresh must use the rotated refresh token
        ns_state.expire_tokens()
        await ns_client.get_messages()
    assert ns_state.grants == ["password", "refresh_token", "refresh_token"]


@pytest.mark.parametrize("refused_status", [400, 401])
async def test_refused_refresh_falls_back_to_password(
    ns_client: NetsapiensClient, ns_state: NetsapiensState, refused_status: int
) -> None:
    ns_state.refresh_refused_status = refused_status
    await ns_client.get_messages()
    ns_state.revoke()  # access and refresh tokens both die
    assert await ns_client.get_messages() == []
    assert ns_state.grants == ["password", "refresh_token", "password"]
    assert ns_client.healthy


async def test_refused_password_grant_is_auth_error_without_storm(
    ns_client: NetsapiensClient, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    await ns_client.get_messages()
    ns_state.revoke()
    ns_state.password = "rotated-by-admin"
    with pytest.raises(AuthError) as caught:
        await ns_client.get_messages()
    assert "demo-password" not in str(caught.value)
    assert not ns_client.healthy
    assert ns_client.auth.last_error
    before = ns_state.stats.token_requests
    results = await asyncio.gather(
        *(ns_client.get_messages() for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, AuthError) for r in results)
    assert ns_state.stats.token_requests == before  # fail fast during the backoff
    ns_state.password = "demo-password"
    ns_clock.advance(61)
    assert await ns_client.get_messages() == []
    assert ns_client.healthy


@pytest.mark.parametrize("how", ["clock", "server"])
async def test_concurrent_sends_with_expired_token_cause_one_token_request(
    ns_client: NetsapiensClient, ns_state: NetsapiensState, ns_clock: FakeClock, how: str
) -> None:
    await ns_client.token_info()
    if how == "clock":
        ns_clock.advance(ns_state.token_ttl + 1)
    else:
        ns_state.expire_tokens()
    before = ns_state.stats.token_requests
    results = await asyncio.gather(
        *(
            ns_client.send_message(
                message=f"hi {i}",
                destination="15551230000",
                from_number="15559870000",
                session_id=SID,
            )
            for i in range(200)
        )
    )
    assert all(r == {"code": 202, "message": "Accepted"} for r in results)
    assert ns_state.stats.token_requests - before == 1
    assert len(ns_state.sent) == 200


@pytest.mark.parametrize("bad", ["short", "a" * 31, "x" * 31 + "-", "é" * 40, ""])
async def test_session_id_validated_before_any_request(
    ns_client: NetsapiensClient, bad: str
) -> None:
    sent = ns_client.session.requests_sent
    with pytest.raises(ValueError, match="32"):
        await ns_client.send_message(message="x", destination="1", from_number="2", session_id=bad)
    with pytest.raises(ValueError):
        await ns_client.get_messages(session_id=bad)
    assert ns_client.session.requests_sent == sent


def test_new_session_id_is_valid() -> None:
    ids = {NetsapiensClient.new_session_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(validate_session_id(i) == i for i in ids)


async def test_new_session_then_send_in_session_202(
    ns_client: NetsapiensClient, ns_state: NetsapiensState
) -> None:
    first = await ns_client.send_message(
        message="Hello", destination="15551230000", from_number="15559870000"
    )
    sid = first["messagesession-id"]
    assert first["direction"] == "term" and first["text"] == "Hello"
    second = await ns_client.send_message(
        message="Again", destination=["15551230000"], from_number="15559870000", session_id=sid
    )
    assert second == {"code": 202, "message": "Accepted"}
    msgs = await ns_client.get_messages(user="~", session_id=sid)
    assert [m["text"] for m in msgs] == ["Hello", "Again"]
    sessions = await ns_client.get_messages("demo", user="101")
    assert [s["messagesession-id"] for s in sessions] == [sid]
    assert ns_state.sent[1]["destination"] == ["15551230000"]


async def test_mms_data_is_base64_with_size(
    ns_client: NetsapiensClient, ns_state: NetsapiensState
) -> None:
    await ns_client.send_message(
        type="mms",
        message="pic",
        destination="15551230000",
        from_number="15559870000",
        data=b"\x89PNG...",
        mime_type="image/png",
    )
    sent = ns_state.sent[0]
    assert base64.b64decode(sent["data"]) == b"\x89PNG..."
    assert sent["size"] == 7 and sent["mime-type"] == "image/png"


async def test_send_rejected_is_validation_error(ns_client: NetsapiensClient) -> None:
    with pytest.raises(ValueError):
        await ns_client.send_message(type="fax", message="x", destination="1", from_number="2")
    with pytest.raises(ValidationError, match="destination"):
        await ns_client.send_message(message="x", destination="", from_number="15559870000")


async def test_list_cdrs_pages_until_short_page(
    ns_client: NetsapiensClient, ns_state: NetsapiensState, ns_clock: FakeClock
) -> None:
    ns_state.add_cdr("15550000001", "15559870000", start=T0 - timedelta(days=2))
    for i in range(7):
        ns_state.add_cdr(f"1555000010{i}", "15559870000", start=T0 + timedelta(minutes=i))
    cdrs = await ns_client.list_cdrs("~", start=T0, end=T0 + timedelta(hours=1), limit=3)
    assert len(cdrs) == 7
    assert ns_state.stats.requests["/ns-api/v2/domains/~/cdrs"] == 3


async def test_subscription_crud(ns_client: NetsapiensClient, ns_state: NetsapiensState) -> None:
    expires = T0 + timedelta(hours=24)
    sub = await ns_client.subscriptions.create(
        "message", "https://hooks.example/message/s", expires_at=expires
    )
    assert parse_ns_datetime(sub["subscription-expires-datetime"]) == expires
    assert sub["status"] == "pending" and sub["domain"] == "*"
    with pytest.raises(SubscriptionExists) as caught:
        await ns_client.subscriptions.create(
            "message", "https://hooks.example/message/s", expires_at=expires
        )
    assert caught.value.status == 409
    assert [s["id"] for s in await ns_client.subscriptions.list()] == [sub["id"]]
    later = expires + timedelta(hours=1)
    await ns_client.subscriptions.update(sub["id"], expires_at=later)
    got = await ns_client.subscriptions.get(sub["id"])
    assert parse_ns_datetime(got["subscription-expires-datetime"]) == later
    assert await ns_client.subscriptions.delete(sub["id"]) == {"code": 202, "message": "Accepted"}
    with pytest.raises(NotFoundError):
        await ns_client.subscriptions.get(sub["id"])


async def test_subscription_list_pages(
    ns_client: NetsapiensClient, ns_state: NetsapiensState
) -> None:
    for i in range(5):
        await ns_client.subscriptions.create(
            "cdr", f"https://h.example/{i}", expires_at=T0 + timedelta(hours=1)
        )
    subs = [s async for s in ns_client.paged("subscriptions", limit=2)]
    assert len(subs) == 5


async def test_expired_subscription_vanishes(
    ns_client: NetsapiensClient, ns_clock: FakeClock
) -> None:
    await ns_client.subscriptions.create(
        "cdr", "https://h.example/x", expires_at=T0 + timedelta(minutes=5)
    )
    ns_clock.advance(301)
    ns_clock.advance(0)
    # the token is still valid (1 h) but the subscription is gone
    assert await ns_client.subscriptions.list() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-12-09T21:27:11+00:00", datetime(2024, 12, 9, 21, 27, 11, tzinfo=UTC)),
        ("2023-10-09 17:16:36", datetime(2023, 10, 9, 17, 16, 36, tzinfo=UTC)),
        ("2025-01-02T10:04:05-05:00", datetime(2025, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("2025-01-02T15:04:05Z", datetime(2025, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("0000-00-00 00:00:00", None),
        ("", None),
        ("yesterday", None),
        (None, None),
        # Valid ISO text at the calendar's edges: unknown, not an OverflowError (which made the
        # listener answer 500 and lose the good messages of the same delivery).
        ("0001-01-01T00:00:00+01:00", None),
        ("9999-12-31T23:59:59-01:00", None),
        ("0001-01-01T00:00:00Z", None),
        ("9999-12-31 23:59:59", None),
        ("1969-12-31T23:59:59Z", None),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), None),
        (datetime(2025, 1, 2, 15, 4, 5), datetime(2025, 1, 2, 15, 4, 5, tzinfo=UTC)),
    ],
)
def test_parse_ns_datetime(text: str | datetime | None, expected: datetime | None) -> None:
    assert parse_ns_datetime(text) == expected


def test_format_ns_datetime_is_utc() -> None:
    est = timezone(timedelta(hours=-5))
    assert format_ns_datetime(datetime(2025, 1, 2, 10, 0, tzinfo=est)) == "2025-01-02 15:00:00"
    with pytest.raises(ValueError):
        format_ns_datetime(datetime(2025, 1, 2))


async def test_api_command_core(ns_sim: str, ns_state: NetsapiensState) -> None:
    """`daemon api netsapiens ...` minus config loading (run() gets the upstream table)."""
    from argparse import Namespace

    from daemon.commands.api_netsapiens import run

    cfg = ns_settings(ns_sim)
    token = await run(cfg, Namespace(ns_command="token"))
    assert token["domain"] == "demo" and "access_token" not in token
    sent = await run(
        cfg,
        Namespace(
            ns_command="send-sms",
            domain="~",
            user="~",
            text="hi",
            to_number="15551230000",
            from_number="15559870000",
            session=None,
        ),
    )
    sid = sent["messagesession-id"]
    msgs = await run(
        cfg, Namespace(ns_command="messages", domain="~", user=None, session=sid, limit=10)
    )
    assert [m["text"] for m in msgs] == ["hi"]
    assert await run(cfg, Namespace(ns_command="subscriptions")) == []
    with pytest.raises(ValueError):
        await run(
            cfg,
            Namespace(
                ns_command="send-sms",
                domain="~",
                user="~",
                text="x",
                to_number="1",
                from_number="2",
                session="bad",
            ),
        )


def test_api_command_registered() -> None:
    from daemon.cli import build_parser

    args = build_parser().parse_args(
        ["api", "netsapiens", "send-sms", "--from", "15559870000", "--to", "15551230000", "hi"]
    )
    assert (args.ns_command, args.from_number, args.to_number, args.text) == (
        "send-sms",
        "15559870000",
        "15551230000",
        "hi",
    )
