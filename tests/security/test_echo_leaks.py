"""Secrets never leave in any encoding, through the real command line.

A hostile upstream answers every request with 500 and the request echoed back — headers
(`Authorization: Basic <base64 of user:key>`), form bodies (the URL-encoded `client_secret`),
JSON bodies (the JSON-escaped password), echoed as text or wrapped in JSON. Each `daemon api`
command, `check-config` and `status --json` then runs in a subprocess, and neither its stdout
nor its stderr (where its log goes) may hold any secret in any spelling.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from daemon.clock import FakeClock
from daemon.sandbox.server import serve_app
from daemon.store import Store
from tests.reliability.secrets import spellings

ROOT = Path(__file__).resolve().parents[2]
# Every secret changes under JSON, URL and base64 encoding; each pairs with a user or id.
SECRETS = {
    "BLESTA_KEY": ("sync-user", 'bl/+=é"\\ key&%7!'),
    "RESELLER_PASSWORD": ("reseller-user", 'rs/+=ü"\\ pass&%9?'),
    "HALO_SECRET": ("halo-client-id", 'ha/+=ß"\\ secret&%3#'),
    "NS_CLIENT_SECRET": ("ns-client-id", 'nc/+=ø"\\ secret&%5$'),
    "NS_PASSWORD": ("api@example.com", 'np/+=å"\\ password&%1*'),
    "NS_WEBHOOK_SECRET": ("", "webhook-secret-0123456789abcdef"),
}


def assert_no_secret(*texts: str) -> None:
    for name, (user, secret) in SECRETS.items():
        for form in spellings(user, secret):
            for text in texts:
                assert form not in text, f"{name} leaked as {form!r}:\n{text}"


STYLE = web.AppKey("style", str)


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
    if request.app[STYLE] == "json":
        echo = {"error": "boom", "message": f"boom: {body}", "headers": dict(request.headers),
                "body": body, "url": str(request.url)}  # fmt: skip
        return web.json_response(echo, status=500)
    text = f"Internal error\n{request.method} {request.path_qs}\n{headers}\n\n{body}"
    return web.Response(text=text, status=500)


@pytest.fixture
async def echo_server() -> AsyncIterator[dict[str, str]]:
    """Both echo styles at once: `{"text": url, "json": url}`."""
    urls: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        for style in ("text", "json"):
            app = web.Application()
            app[STYLE] = style
            app.router.add_route("*", "/{tail:.*}", _echo)
            urls[style] = await stack.enter_async_context(serve_app(app))
        yield urls


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "daemon.toml"
    common = 'timeout = "5s"\nmax_retries = 0\n'
    path.write_text(
        f"""
[daemon]
database = "{tmp_path / "state.db"}"

[upstreams.blesta]
url = "{url}/api"
user = "{SECRETS["BLESTA_KEY"][0]}"
key = "${{BLESTA_KEY}}"
{common}
[upstreams.reseller]
kind = "blesta_reseller"
url = "{url}/reseller"
user = "{SECRETS["RESELLER_PASSWORD"][0]}"
password = "${{RESELLER_PASSWORD}}"
{common}
[upstreams.halo]
tenant_url = "{url}"
client_id = "{SECRETS["HALO_SECRET"][0]}"
client_secret = "${{HALO_SECRET}}"
{common}
[upstreams.netsapiens]
api_url = "{url}"
client_id = "{SECRETS["NS_CLIENT_SECRET"][0]}"
client_secret = "${{NS_CLIENT_SECRET}}"
username = "{SECRETS["NS_PASSWORD"][0]}"
password = "${{NS_PASSWORD}}"
{common}
[webhooks.netsapiens]
secret = "${{NS_WEBHOOK_SECRET}}"
public_url = "https://hooks.example.com/webhooks/netsapiens"
"""
    )
    return path


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DAEMON_CONFIG"}
    env.update({name: secret for name, (_user, secret) in SECRETS.items()})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


COMMANDS = [
    ("text", "api", "blesta", "clients", "getList"),
    ("text", "api", "blesta", "clients", "add", "--verb", "POST", "vars[first_name]=Ann"),
    ("text", "api", "reseller", "getcredit"),
    ("text", "api", "halo", "tickets", "list"),
    ("text", "api", "netsapiens", "token"),
    ("text", "subscriptions", "list"),
    # The request wrapped in a JSON answer: JSON bodies come back escaped twice.
    ("json", "api", "blesta", "clients", "getList"),
    ("json", "api", "halo", "tickets", "list"),
    ("json", "api", "netsapiens", "token"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:4]))
async def test_an_echoing_upstream_leaks_nothing(
    tmp_path: Path, echo_server: dict[str, str], command: tuple[str, ...]
) -> None:
    style, *args = command
    config = write_config(tmp_path, echo_server[style])
    code, out, err = await run_cli("--config", str(config), *args)
    assert code == 1, (out, err)
    assert "500" in err and "Traceback" not in err
    assert_no_secret(out, err)


async def test_check_config_leaks_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://upstream.example.com")
    for extra in ((), ("--json",)):
        code, out, err = await run_cli("--config", str(config), "check-config", *extra)
        assert code == 0, err
        assert_no_secret(out, err)


async def test_status_masks_subscription_urls(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://upstream.example.com")
    hook = SECRETS["NS_WEBHOOK_SECRET"][1]
    old = "an-older-webhook-secret-0000"  # recorded before a rotation: not known to the config
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    async with Store.open(tmp_path / "state.db", clock=clock) as store:
        base = "https://hooks.example.com/webhooks/netsapiens"
        await store.upsert_subscription("s1", "message", f"{base}/message/{hook}", None, "active")
        await store.upsert_subscription("s2", "cdr", f"{base}/cdr/{old}", None, "active")
    code, out, err = await run_cli("--config", str(config), "status", "--json")
    assert code == 0, err
    urls = sorted(s["post_url"] for s in json.loads(out)["subscriptions"])
    assert urls == [f"{base}/cdr/[REDACTED]", f"{base}/message/[REDACTED]"]
    assert_no_secret(out, err)
    assert old not in out + err
    code, out, err = await run_cli("--config", str(config), "status")
    assert_no_secret(out, err)
    assert old not in out + err
