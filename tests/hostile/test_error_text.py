"""What a failed run says is bounded, and never part of a secret, whatever the upstream sent."""

from __future__ import annotations

from aiohttp import web

from daemon.errors import redact_excerpt
from daemon.logs import secret_forms
from tests.hostile.conftest import SECRET, Harness
from tests.hostile.servers import Script, clients


def echoing_blesta(pad: int) -> web.Application:
    """A proxy's error page that pretty-prints (much whitespace) and echoes the request."""

    async def handle(request: web.Request) -> web.Response:
        text = " " * pad + SECRET + " was refused"
        return web.Response(status=502, text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/api/{model}/{method}.json", handle)
    return app


async def test_a_secret_split_by_the_excerpt_cut_leaves_no_part_behind(harness: Harness) -> None:
    # The excerpt reads the first 4096 bytes: the secret straddles that cut by one character,
    # and collapsing the whitespace would bring its head to the front of the message.
    result = await harness.run("blesta", None, app=echoing_blesta(4096 - len(SECRET) + 1))  # type: ignore[arg-type]
    assert result.status == "failed"
    row = await harness.store.fetchone("SELECT error FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert row is not None
    assert SECRET[:8] not in row["error"], row["error"]


def test_a_cut_drops_the_start_of_any_spelling_of_a_secret() -> None:
    for form in secret_forms(SECRET):
        for keep in (1, len(form) // 2, len(form) - 1):
            text = "upstream said: " + form[:keep]
            shown = redact_excerpt(text, [SECRET], cut=True)
            assert form[:keep] not in shown or keep == 1, (form, shown)
            assert shown.startswith("upstream said:")
    # Not cut: the text is whole, nothing is dropped.
    assert redact_excerpt("ends with " + SECRET[:5], [SECRET]).endswith(SECRET[:5])


async def test_an_enormous_id_does_not_make_an_enormous_error(harness: Harness) -> None:
    big = "A" * 2_000_000
    script = Script(
        rows=clients(1), raw={1: '{"response": [{"id": "' + big + '", "amount": NaN}]}'}
    )
    result = await harness.run("blesta", script)
    assert result.status == "failed" and result.error_type == "UnstorableRecord"
    assert result.error is not None and len(result.error) < 2_100
    row = await harness.store.fetchone(
        "SELECT length(error) AS n FROM sync_runs ORDER BY id DESC LIMIT 1"
    )
    assert row is not None and row["n"] < 2_100
