"""The webhook listener end to end: real app on loopback, real Store on a tmp SQLite file."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from daemon.errors import StoreError
from daemon.store import InsertedEvent, NewEvent, Store
from daemon.webhooks.app import reload_listener
from daemon.webhooks.event import body_hash
from daemon.webhooks.inbox import InboxWriter
from daemon.webhooks.remote import networks
from daemon.webhooks.secrets import WebhookSecrets
from tests.netsapiens_fixtures import T0
from tests.webhooks.listener_fixtures import (
    MESSAGE,
    OLD_SECRET,
    SECRET,
    Hook,
    batch,
    hook,
    http,
    message,
    running_hook,
)

__all__ = ["hook", "http"]  # fixtures
pytestmark = pytest.mark.timeout(30)


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes | Any, **kw: Any
) -> tuple[int, str]:
    async with http.post(url, data=body, **kw) as resp:
        return resp.status, await resp.text()


async def test_accepts_commits_and_wakes_the_dispatcher(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    status, text = await post(http, hook.path(), batch(MESSAGE, message("m-0002")))
    assert status == 200
    assert json.loads(text) == {"accepted": 2, "duplicates": 0, "rejected": 0}
    rows = sorted(await hook.store.list_events(), key=lambda r: r.id)
    assert [r.dedupe_key for r in rows] == [
        "netsapiens:message:m-0001",
        "netsapiens:message:m-0002",
    ]
    assert hook.woken == [[r.id for r in rows]]
    handed = hook.inbox.handed[0]
    assert (handed.via, handed.sender, handed.received_at) == ("webhook", "+15551230000", T0)
    assert handed.body_hash == body_hash("balance?")
    assert handed.occurred_at == T0 - timedelta(minutes=1)
    assert rows[0].kind == "message.received"
    # and that is what the inbox holds
    stored = await hook.store.get_event(rows[0].id)
    assert stored is not None
    assert (stored.via, stored.sender, stored.body_hash) == (
        "webhook",
        "+15551230000",
        body_hash("balance?"),
    )
    assert stored.occurred_at == T0 - timedelta(minutes=1) and stored.received_at == T0


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "foo/bar; x=1"],
)
async def test_any_content_type_whose_body_is_json(
    hook: Hook, http: aiohttp.ClientSession, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, _ = await post(http, hook.path(), batch(MESSAGE), headers=headers)
    assert status == 200 and await hook.count() == 1


async def test_one_object_and_gzip_bodies(hook: Hook, http: aiohttp.ClientSession) -> None:
    assert (await post(http, hook.path(), json.dumps(MESSAGE).encode()))[0] == 200
    zipped = gzip.compress(batch(message("m-zip")))
    status, _ = await post(http, hook.path(), zipped, headers={"Content-Encoding": "gzip"})
    assert status == 200 and await hook.count() == 2
    status, _ = await post(http, hook.path(), b"not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400 and await hook.count() == 2


async def test_redelivery_is_acknowledged_and_not_processed_again(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    body = batch(MESSAGE)
    assert (await post(http, hook.path(), body))[0] == 200
    status, text = await post(http, hook.path(), body)
    assert status == 200
    assert json.loads(text) == {"accepted": 0, "duplicates": 1, "rejected": 0}
    assert len(hook.woken) == 1 and await hook.count() == 1
    # a new event beside a redelivered one wakes the dispatcher with the new id only
    status, text = await post(http, hook.path(), batch(MESSAGE, message("m-new")))
    assert json.loads(text) == {"accepted": 1, "duplicates": 1, "rejected": 0}
    new = [r.id for r in await hook.store.list_events() if r.dedupe_key.endswith("m-new")]
    assert hook.woken[-1] == new


async def test_mixed_batch_stores_the_good_and_counts_the_bad(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    body = batch(MESSAGE, "oops", {"id": "x"}, message("m-0003", direction="sideways"), [1])
    with capture_logs() as logs:
        status, text = await post(http, hook.path(), body)
    assert status == 200
    assert json.loads(text) == {"accepted": 1, "duplicates": 0, "rejected": 4}
    assert [r.dedupe_key for r in await hook.store.list_events()] == ["netsapiens:message:m-0001"]
    (line,) = [e for e in logs if e["event"] == "webhook.accepted"]
    assert line["rejected"] == 4 and line["events"] == 1 and line["model"] == "message"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not json"),
        (b"", "not json"),
        (b"\xff\xfe\x00", "not json"),
        (b"[NaN]", "not finite"),
        (b'[{"a": 1e999}]', "not finite"),
        (b"[" * 3000 + b"]" * 3000, "too deep"),
        (b"[" + b"0," * 200_000 + b"0]", "too many elements"),
        (b"42", "not an array"),
        (b'"text"', "not an array"),
        (batch("a", 1, None, {"id": "no direction"}), "no valid event"),
    ],
)
async def test_unusable_bodies_are_400_and_store_nothing(
    hook: Hook, http: aiohttp.ClientSession, body: bytes, reason: str
) -> None:
    with capture_logs() as logs:
        status, text = await post(http, hook.path(), body)
    assert status == 400
    assert text.startswith("400: Bad Request")
    assert body[:12].decode("utf-8", "replace") not in text or not body
    assert await hook.count() == 0 and hook.woken == []
    (line,) = [e for e in logs if e["event"] == "webhook.rejected"]
    assert line["reason"] == reason and line["status"] == 400


async def test_an_empty_batch_is_fine(hook: Hook, http: aiohttp.ClientSession) -> None:
    status, text = await post(http, hook.path(), b"[]")
    assert status == 200 and json.loads(text)["accepted"] == 0 and hook.woken == []


async def test_wrong_secret_unknown_model_and_unknown_path_look_the_same(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    answers = []
    for url in (
        hook.path(secret="wrong-secret-0123456789"),
        hook.path(secret=SECRET[:-1]),
        hook.path(model="nonsense"),
        hook.path(model="Message"),
        f"{hook.url}/webhooks/netsapiens/message",
        f"{hook.url}/webhooks/netsapiens/message/{SECRET}/extra",
    ):
        async with http.post(url, data=batch(MESSAGE)) as resp:
            answers.append((resp.status, resp.content_type, await resp.read()))
    assert set(answers) == {(404, "text/plain", b"404: Not Found")}
    assert await hook.count() == 0


async def test_every_netsapiens_model_is_accepted(hook: Hook, http: aiohttp.ClientSession) -> None:
    body = batch({"id": "p1", "presence": "online"})
    status, text = await post(http, hook.path(model="presence"), body)
    assert status == 200 and json.loads(text)["accepted"] == 1
    (row,) = await hook.store.list_events()
    assert row.kind == "netsapiens.presence"


async def test_other_methods_get_405(hook: Hook, http: aiohttp.ClientSession) -> None:
    for method in ("GET", "PUT", "DELETE"):
        async with http.request(method, hook.path()) as resp:
            assert resp.status == 405


async def test_body_over_the_limit_is_413_by_length_and_while_streaming(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_hook(tmp_path, max_body_bytes=4096) as h:
        big = batch(*(message(f"m-{i}") for i in range(40)))
        assert len(big) > 4096
        status, _ = await post(http, h.path(), big)
        assert status == 413

        async def chunks() -> Any:  # no Content-Length: counted while reading
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        status, _ = await post(http, h.path(), chunks())
        assert status == 413
        # decompression counts: a small gzip of a large body is still too large
        zipped = gzip.compress(b"[" + b" " * 100_000 + b"]")
        assert len(zipped) < 4096
        status, _ = await post(http, h.path(), zipped, headers={"Content-Encoding": "gzip"})
        assert status == 413
        assert await h.count() == 0
        assert (await post(http, h.path(), batch(MESSAGE)))[0] == 200  # still serving


async def test_allow_from_and_trusted_proxies(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running_hook(tmp_path, allow_from=networks(["192.0.2.0/24"])) as h:
        with capture_logs() as logs:
            status, _ = await post(http, h.path(), batch(MESSAGE))
        assert status == 403
        assert logs[-1]["reason"] == "source not allowed" and logs[-1]["remote"] == "127.0.0.1"
        # the peer is not a trusted proxy, so X-Forwarded-For is not believed
        headers = {"X-Forwarded-For": "192.0.2.9"}
        assert (await post(http, h.path(), batch(MESSAGE), headers=headers))[0] == 403
    async with running_hook(
        tmp_path / "b",
        allow_from=networks(["192.0.2.0/24"]),
        trusted_proxies=networks(["127.0.0.1", "10.0.0.0/8"]),
    ) as h:
        for xff, expected in [
            ("192.0.2.9", 200),
            ("203.0.113.5, 192.0.2.9, 10.1.1.1", 200),  # right-most untrusted counts
            ("192.0.2.9, 203.0.113.5", 403),  # the client cannot forge its way in
            ("192.0.2.9, garbage", 403),
        ]:
            body = batch(message(f"m-{xff}"))
            got, _ = await post(http, h.path(), body, headers={"X-Forwarded-For": xff})
            assert got == expected, xff
        assert (await post(http, h.path(), batch(message("m-direct"))))[0] == 403


async def test_a_store_failure_is_503_and_nothing_is_acknowledged(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_hook(tmp_path) as h:
        await h.store.close()
        with capture_logs() as logs:
            status, text = await post(http, h.path(), batch(MESSAGE))
        assert status == 503 and "retry" in text
        assert h.woken == []
        assert {"webhook.failed", "webhook.rejected"} <= {e["event"] for e in logs}


@pytest.mark.parametrize("how", ["deleted", "restored over"])
async def test_a_database_file_gone_underneath_is_503_not_a_lost_200(
    tmp_path: Path, http: aiohttp.ClientSession, how: str
) -> None:
    """Found by probing: with the file deleted, SQLite kept committing to the open handle and
    the listener answered 200 for events no later start would see."""
    async with running_hook(tmp_path) as h:
        assert (await post(http, h.path(), batch(MESSAGE)))[0] == 200
        path = h.store.path
        if how == "deleted":
            path.unlink()
        else:
            path.rename(path.with_name("aside.db"))
            path.write_bytes(b"")
        with capture_logs() as logs:
            status, text = await post(http, h.path(), batch(message("m-after")))
        assert status == 503 and "retry" in text
        assert not h.store.healthy
        (failed,) = [e for e in logs if e["event"] == "store.writer_failed"]
        assert "gone or was replaced" in failed["error"]
        with pytest.raises(StoreError, match="gone or was replaced"):
            await h.store.wait_writer()


class GatedInbox:
    """Holds every insert until the test opens the gate."""

    def __init__(self, store: Store):
        self.store = store
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def insert_events(self, events: Sequence[NewEvent]) -> Sequence[InsertedEvent]:
        self.entered.set()
        await self.gate.wait()
        return await self.store.insert_events(events)


async def test_the_2xx_comes_only_after_the_commit(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    gated: list[GatedInbox] = []

    def make(store: Store) -> InboxWriter:
        gated.append(GatedInbox(store))
        return gated[0]

    async with running_hook(tmp_path, inbox=make) as h:
        request = asyncio.create_task(post(http, h.path(), batch(MESSAGE)))
        async with asyncio.timeout(5):
            await gated[0].entered.wait()
        await asyncio.sleep(0.05)  # give a wrongly early answer the chance to arrive
        assert not request.done() and h.woken == []
        gated[0].gate.set()
        status, _ = await asyncio.wait_for(request, 5)
        assert status == 200
        (row,) = await h.store.list_events()  # committed by the time the answer arrived
        assert h.woken == [[row.id]]


async def test_secret_is_compared_in_constant_time(
    hook: Hook, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    assert (await post(http, hook.path(secret="x" * 26), batch(MESSAGE)))[0] == 404
    assert (await post(http, hook.path(), batch(MESSAGE)))[0] == 200
    # every check compares with every accepted secret (a stand-in when there is no previous)
    assert len(calls) == 4
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)


async def test_previous_secret_is_accepted_until_its_grace_ends(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    secrets = WebhookSecrets.rotating(SECRET, OLD_SECRET, loaded_at=T0, grace=timedelta(hours=1))
    async with running_hook(tmp_path, secrets=secrets) as h:
        assert (await post(http, h.path(secret=OLD_SECRET), batch(message("a"))))[0] == 200
        assert (await post(http, h.path(), batch(message("b"))))[0] == 200
        h.clock.advance(3599)
        assert (await post(http, h.path(secret=OLD_SECRET), batch(message("c"))))[0] == 200
        h.clock.advance(1)
        assert (await post(http, h.path(secret=OLD_SECRET), batch(message("d"))))[0] == 404
        assert (await post(http, h.path(), batch(message("e"))))[0] == 200
        assert await h.count() == 4


async def test_a_failing_wakeup_does_not_fail_the_delivery(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    def broken(ids: Sequence[int]) -> None:
        raise RuntimeError("dispatcher gone")

    async with running_hook(tmp_path, on_events=broken) as h:
        with capture_logs() as logs:
            status, _ = await post(http, h.path(), batch(MESSAGE))
        assert status == 200 and await h.count() == 1
        assert "webhook.wake_failed" in {e["event"] for e in logs}


async def test_outcomes_are_reported_for_metrics(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    outcomes: list[str] = []
    async with running_hook(tmp_path, on_outcome=outcomes.append) as h:
        await post(http, h.path(), batch(MESSAGE))
        await post(http, h.path(secret="nope"), batch(MESSAGE))
        await post(http, h.path(model="nope"), batch(MESSAGE))
        await post(http, h.path(), b"{")
    assert outcomes == ["accepted", "bad secret", "unknown model", "not json"]


async def test_a_slow_body_is_408_and_the_connection_closed(tmp_path: Path) -> None:
    async with running_hook(tmp_path, read_timeout=0.2) as h:
        host, port = h.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        path = f"/webhooks/netsapiens/message/{SECRET}"
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readline()
            rest = await reader.read()  # the server closes after answering
        writer.close()
        await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in rest
        assert await h.count() == 0


async def test_garbage_on_the_socket_leaves_the_listener_up(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    host, port = hook.url.removeprefix("http://").split(":")
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/9.9\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(junk)
        await writer.drain()
        async with asyncio.timeout(5):
            await reader.read()
        writer.close()
        await writer.wait_closed()
    assert (await post(http, hook.path(), batch(MESSAGE)))[0] == 200


async def _expecting(
    hook: Hook, path: str, length: int
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send only the headers of a POST with `Expect: 100-continue`; the first status line."""
    host, port = hook.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    async with asyncio.timeout(5):
        status = await reader.readline()
    return status, reader, writer


@pytest.mark.parametrize(
    ("secret", "length", "status"),
    [("w" * 32, 100, b"404"), (SECRET, 50_000_000, b"413")],
)
async def test_expect_100_continue_is_refused_before_the_body_is_invited(
    hook: Hook, secret: str, length: int, status: bytes
) -> None:
    """Found by probing: aiohttp's own handler answered 100 Continue to anyone, inviting an
    unauthenticated or oversized upload before the checks refused it."""
    path = f"/webhooks/netsapiens/message/{secret}"
    with capture_logs() as logs:
        first, reader, writer = await _expecting(hook, path, length)
        async with asyncio.timeout(5):
            rest = await reader.read()  # the connection is closed after the refusal
    writer.close()
    assert first.startswith(b"HTTP/1.1 " + status), first
    assert b"100 Continue" not in first + rest
    assert [e["event"] for e in logs] == ["webhook.rejected"]
    assert await hook.store.list_events() == []


async def test_expect_100_continue_invites_a_good_request_and_stores_it(hook: Hook) -> None:
    body = batch(MESSAGE)
    first, reader, writer = await _expecting(
        hook, f"/webhooks/netsapiens/message/{SECRET}", len(body)
    )
    assert first == b"HTTP/1.1 100 Continue\r\n"
    writer.write(body)
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.readline() == b"\r\n"
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert len(await hook.store.list_events()) == 1


async def test_a_reload_swaps_secrets_and_limits_for_the_next_requests(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    app_deps = hook.deps
    new = "reloaded-secret-0123456789"
    assert (await post(http, hook.path(), batch(message("r1"))))[0] == 200
    reload_listener(hook.app, replace(app_deps, secrets=WebhookSecrets(new), max_body_bytes=64))
    assert (await post(http, hook.path(), batch(message("r2"))))[0] == 404
    assert (await post(http, hook.path(secret=new), batch(message("r3"))))[0] == 413
    reload_listener(hook.app, replace(app_deps, secrets=WebhookSecrets(new)))
    assert (await post(http, hook.path(secret=new), batch(message("r4"))))[0] == 200


async def test_lone_surrogates_are_stored_repaired(hook: Hook, http: aiohttp.ClientSession) -> None:
    body = json.dumps([message("id-\ud800", text="hi \udc00", domain="\ud83d")]).encode()
    assert b"\\ud800" in body
    status, text = await post(http, hook.path(), body)
    assert status == 200 and json.loads(text)["accepted"] == 1
    (row,) = await hook.store.list_events()
    assert row.dedupe_key == "netsapiens:message:id-\ufffd"
    assert "\\ud800" not in row.payload and "\ufffd" in row.payload


async def test_a_time_at_the_calendars_edge_is_unknown_not_a_500(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    """Found by probing: valid ISO text that cannot be moved to UTC raised OverflowError out of
    the parser, so the delivery got a 500 and its good messages were not stored either."""
    body = batch(
        message("m-good"),
        message("m-early", timestamp="0001-01-01T00:00:00+01:00"),
        message("m-late", timestamp="9999-12-31T23:59:59-01:00"),
    )
    status, text = await post(http, hook.path(), body)
    assert (status, json.loads(text)) == (200, {"accepted": 3, "duplicates": 0, "rejected": 0})
    stored = {r.dedupe_key.rpartition(":")[2]: r for r in await hook.store.list_events()}
    assert set(stored) == {"m-good", "m-early", "m-late"}
    assert stored["m-good"].occurred_at is not None
    assert stored["m-early"].occurred_at is None and stored["m-late"].occurred_at is None


async def test_an_id_holding_a_nul_is_deduplicated_like_any_other(
    hook: Hook, http: aiohttp.ClientSession
) -> None:
    """Found by the listener fuzz test: SQLite's `json_each` ends text at a NUL, so the look-up
    of a redelivered key holding one came back empty and the redelivery got a 500."""
    body = batch(message("a\u0000b"), message("a\u0000c"))
    assert b"\\u0000" in body
    status, text = await post(http, hook.path(), body)
    assert (status, json.loads(text)["accepted"]) == (200, 2)
    status, text = await post(http, hook.path(), body)
    assert status == 200
    assert json.loads(text) == {"accepted": 0, "duplicates": 2, "rejected": 0}
    keys = {r.dedupe_key for r in await hook.store.list_events()}
    assert keys == {"netsapiens:message:a\x00b", "netsapiens:message:a\x00c"}
