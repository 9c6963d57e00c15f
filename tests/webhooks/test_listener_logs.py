"""What the listener writes to the real log output: never the secret — not even one the redactor
was not told about — and no tracebacks for anything a client can send."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.logs import configure_logging
from tests.logstate import logging_restored
from tests.webhooks.listener_fixtures import MESSAGE, SECRET, Hook, batch, running_hook

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


async def raw(hook: Hook, data: bytes) -> bytes:
    host, port = hook.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def every_kind_of_request(hook: Hook) -> list[int]:
    """One request of each kind, each with the secret somewhere in what it sends."""
    statuses = []
    async with aiohttp.ClientSession() as http:
        for method, url, body, headers in [
            ("POST", hook.path(), batch(MESSAGE), {}),
            ("POST", hook.path(), batch(MESSAGE), {}),  # duplicate
            ("POST", hook.path(), b"{not json", {}),
            ("POST", hook.path(), b"[NaN]", {}),
            ("POST", hook.path(), b"[" * 1000 + b"]" * 1000, {}),
            ("POST", hook.path(), batch("x", 1), {}),
            ("POST", hook.path(), b" " * 5000, {}),  # 413 (limit 4096)
            ("POST", hook.path(), b"zz", {"Content-Encoding": "gzip"}),
            ("POST", hook.path(model="nonsense"), batch(MESSAGE), {}),
            ("POST", hook.path(secret=SECRET[::-1]), batch(MESSAGE), {}),
            ("GET", hook.path(), None, {}),
            ("POST", f"{hook.path()}/extra?token={SECRET}", batch(MESSAGE), {}),
            ("POST", f"{hook.url}/{SECRET}", batch(MESSAGE), {}),
            ("POST", hook.path(model=SECRET), batch(MESSAGE), {}),
            ("POST", hook.path(), batch({**MESSAGE, "id": "m-2"}), {"X-Token": SECRET}),
        ]:
            async with http.request(method, url, data=body, headers=headers) as resp:
                statuses.append(resp.status)
                await resp.read()
    path = f"/webhooks/netsapiens/message/{SECRET}"
    for junk in (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked"
        "\r\n\r\n[]",
        f"POST {path}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n[]",
        f"POST {path} HTTP/1.1\r\nHost: x\r\nBad Header: {SECRET}\r\n\r\n",
    ):
        await raw(hook, junk.encode("latin-1"))
    return statuses


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize("registered", [True, False])
async def test_the_secret_never_reaches_the_log(tmp_path: Path, registered: bool) -> None:
    out = io.StringIO()
    configure_logging("debug", "json", secrets=[SECRET] if registered else [], stream=out)
    async with running_hook(tmp_path, max_body_bytes=4096) as hook:
        statuses = await every_kind_of_request(hook)
    assert statuses[:2] == [200, 200] and 404 in statuses and 413 in statuses
    text = out.getvalue()
    assert SECRET not in text
    assert "[REDACTED]" not in text  # not masked on the way out: it never got in
    records = lines(out)
    routes = {r.get("route") for r in records if r["event"] == "http.access"}
    assert routes == {"/webhooks/netsapiens/{model}/[secret]", "[unmatched]"}
    assert "Traceback" not in text and not any("exception" in r for r in records)
    assert any(r["event"] == "http.bad_request" for r in records)


async def test_canonical_lines_at_info(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    async with running_hook(tmp_path, max_body_bytes=4096) as hook:
        await every_kind_of_request(hook)
    records = lines(out)
    assert "http.access" not in {r["event"] for r in records}  # DEBUG only
    accepted = [r for r in records if r["event"] == "webhook.accepted"]
    assert [(r["events"], r["duplicates"]) for r in accepted[:2]] == [(1, 0), (0, 1)]
    assert set(accepted[0]) >= {"model", "events", "duplicates", "rejected", "duration_ms"}
    rejected = [r for r in records if r["event"] == "webhook.rejected"]
    assert all(r["level"] == "warning" for r in rejected)
    assert {r["reason"] for r in rejected} >= {
        "not json",
        "not finite",
        "too deep",
        "no valid event",
        "too large",
        "unreadable body",
        "unknown model",
        "bad secret",
    }
    assert all(set(r) >= {"reason", "model", "remote", "status"} for r in rejected)
    # an unknown "model" is attacker text: never logged
    assert all(r["model"] in (None, "message") for r in rejected)
