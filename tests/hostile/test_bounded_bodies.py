"""Issue 14 §3: memory per response is bounded, while reading and after decompression."""

from __future__ import annotations

import functools
import gzip
import tracemalloc
import zlib

import pytest
from aiohttp import web

from daemon.clients.http import HttpOptions, UpstreamSession
from daemon.clock import FakeClock
from daemon.errors import MalformedResponse, ResponseTooLarge, ServerError
from daemon.sandbox.server import serve_app
from tests.hostile.conftest import Harness
from tests.hostile.servers import Script

MB = 1024 * 1024
CHUNK = b"x" * MB  # built before any measurement: the server is in this process too


@functools.cache
def bomb_body() -> bytes:
    """~50 MB of JSON in well under 300 KB of gzip."""
    return gzip.compress(b"[" + b"0," * (25 * MB) + b"0]", compresslevel=6)


def _app(*, chunked: bool = False) -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        # Streamed a megabyte at a time (with or without a Content-Length), so the server side
        # of this in-process test holds little and the measurement is the client's.
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = 200 * MB
        await resp.prepare(request)
        try:
            for _ in range(200):  # 200 MB if nobody stops reading
                await resp.write(CHUNK)
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(
            body=bomb_body(),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def deflated(request: web.Request) -> web.Response:
        return web.Response(
            body=zlib.compress(b'{"ok": true}'),
            headers={"Content-Type": "application/json", "Content-Encoding": "deflate"},
        )

    async def brotli(request: web.Request) -> web.Response:
        return web.Response(
            body=b"\x00\x01", headers={"Content-Type": "application/json", "Content-Encoding": "br"}
        )

    async def error_page(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>" + "y" * (5 * MB), content_type="text/html")

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/bomb", bomb)
    app.router.add_get("/deflated", deflated)
    app.router.add_get("/br", brotli)
    app.router.add_get("/error", error_page)
    return app


def _session(url: str, limit: int = MB) -> UpstreamSession:
    options = HttpOptions(timeout=10, max_retries=0, max_response_bytes=limit)
    return UpstreamSession("hostile", url, options, clock=FakeClock(autojump=True))


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_fails_without_being_held(chunked: bool) -> None:
    async with serve_app(_app(chunked=chunked)) as url, _session(url) as s:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge, match="max_response_bytes"):
                await s.request("GET", "/big")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 6 * MB  # not the 20 MB (or 200 MB) the server offered


async def test_a_gzip_bomb_stops_at_the_limit() -> None:
    assert len(bomb_body()) < 300 * 1024
    async with serve_app(_app()) as url, _session(url) as s:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge):
                await s.request("GET", "/bomb")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 6 * MB  # not the 50 MB it inflates to


async def test_compressed_bodies_within_the_limit_are_read() -> None:
    async with serve_app(_app()) as url, _session(url) as s:
        assert (await s.request("GET", "/deflated")).json() == {"ok": True}
        with pytest.raises(MalformedResponse, match="Content-Encoding 'br'"):
            await s.request("GET", "/br")


async def test_the_error_excerpt_is_cut_before_decoding() -> None:
    async with serve_app(_app()) as url, _session(url, limit=64 * MB) as s:
        with pytest.raises(ServerError) as info:
            await s.request("GET", "/error")
    assert len(info.value.excerpt) <= 300


async def test_a_too_large_page_fails_the_job_not_the_process(harness: Harness) -> None:
    script = Script(bodies={1: {"response": [{"id": "1", "blob": "x" * (4 * MB)}]}})
    result = await harness.run("blesta", script, upstream_extra={"max_response_bytes": "1MB"})
    assert result.status == "failed" and result.error_type == "ResponseTooLarge"
