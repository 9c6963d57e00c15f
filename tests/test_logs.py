"""daemon.logs: one JSON object per line, stdlib records in the same shape, secrets masked."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import pytest
import structlog

from daemon.logs import (
    MAX_TRANSIENT_SECRETS,
    REDACTED,
    RedactingStream,
    add_basic_pair,
    add_secrets,
    configure_logging,
    is_secret_key,
    log,
    mask_webhook_url,
    redact_strings,
    redact_text,
    redacted_stdio,
)
from tests.logstate import logging_restored

SECRET = "s3cr3t-Value-42"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_shape() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)  # a StringIO is not a TTY: JSON
    structlog.contextvars.bind_contextvars(job="blesta-clients")
    log.info("sync.finished", fetched=3)
    (line,) = lines(out)
    assert line["event"] == "sync.finished"
    assert line["level"] == "info"
    assert line["job"] == "blesta-clients" and line["fetched"] == 3
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def test_level_filters() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    log.info("quiet")
    log.warning("loud")
    logging.getLogger("aiohttp.access").info("GET / 200")
    assert [line["event"] for line in lines(out)] == ["loud"]


def test_stdlib_and_aiohttp_access_share_the_format() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("aiohttp.access").info("%s %s", "GET", "/healthz")
    (line,) = lines(out)
    assert line == {**line, "event": "GET /healthz", "logger": "aiohttp.access", "level": "info"}
    assert "timestamp" in line


def test_configure_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("debug", "json", stream=second)
    log.debug("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["once"]


def test_secret_named_keys_are_redacted_also_nested() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log.info(
        "http.request",
        password="pw",
        Authorization="Bearer abc",
        headers={"X-Api-Key": "k", "Accept": "application/json"},
        body={"client_secret": "cs", "items": [{"access_token": "t"}]},
        dedupe_key="message:1",
    )
    (line,) = lines(out)
    assert line["password"] == REDACTED and line["Authorization"] == REDACTED
    assert line["headers"] == {"X-Api-Key": REDACTED, "Accept": "application/json"}
    assert line["body"] == {"client_secret": REDACTED, "items": [{"access_token": REDACTED}]}
    assert line["dedupe_key"] == "message:1"


def test_registered_secret_values_are_masked_everywhere() -> None:
    out = io.StringIO()
    configure_logging("info", "json", secrets=[SECRET, "abc"], stream=out)
    log.info(f"calling with {SECRET}", url=f"https://x/?k={SECRET}", data={"note": SECRET})
    logging.getLogger("aiohttp.access").info("POST /webhooks/netsapiens/message/%s", SECRET)
    text = out.getvalue()
    assert SECRET not in text
    assert text.count(REDACTED) == 4
    assert redact_text("abc") == "abc"  # too short to register: it would mask half the log


def test_secret_inside_logged_exception_is_masked() -> None:
    out = io.StringIO()
    configure_logging("info", "json", secrets=[SECRET], stream=out)
    try:
        raise RuntimeError(f"login refused for password {SECRET}")
    except RuntimeError:
        log.exception("auth.failed", upstream="halo")
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        logging.getLogger("aiohttp.client").error("boom", exc_info=True)
        log.error("sync.failed", error=exc)
    text = out.getvalue()
    assert SECRET not in text
    records = lines(out)
    assert "RuntimeError: login refused for password [REDACTED]" in records[0]["exception"]
    assert "ValueError: [REDACTED]" in records[1]["exception"]
    assert records[2]["error"] == "ValueError: [REDACTED]"


def test_secret_with_json_escapes_is_masked() -> None:
    out = io.StringIO()
    tricky = 'pa"ss\\wörd'
    configure_logging("info", "json", secrets=[tricky], stream=out)
    log.info("x", obj=object.__new__(type("Opaque", (), {"__repr__": lambda s: tricky})))
    assert "ss\\\\w" not in out.getvalue() and tricky not in out.getvalue()


def test_add_secrets_at_runtime() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    token = "eyJ-runtime-token"
    add_secrets([token])
    log.info("auth.token_refreshed", note=f"got {token}")
    assert token not in out.getvalue()


def test_console_format_is_redacted_too() -> None:
    out = io.StringIO()
    configure_logging("info", "console", secrets=[SECRET], stream=out)
    try:
        raise RuntimeError(SECRET)
    except RuntimeError:
        log.exception("auth.failed", password="pw")
    text = out.getvalue()
    assert "auth.failed" in text and SECRET not in text
    assert f"password={REDACTED}" in text and "password=pw" not in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [("password", True), ("API_KEY", True), ("x-api-key", True), ("client_secret", True),
     ("refresh_token", True), ("authorization", True), ("key", True), ("dedupe_key", False),
     ("event", False), ("tokens_used", False)],
)  # fmt: skip
def test_is_secret_key(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


def test_bad_level_or_format() -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging("loud", "json", stream=io.StringIO())
    with pytest.raises(ValueError, match="format"):
        configure_logging("info", "xml", stream=io.StringIO())


# --- every spelling, every way out --------------------------------------------------------------

TRICKY = 'Kx/+=é"\\ q&%7!'  # changes under JSON, URL and base64 encoding alike


def spellings(user: str, secret: str) -> dict[str, str]:
    """How an echoing upstream can carry a secret back: the forms the redactor must know."""
    pair = base64.b64encode(f"{user}:{secret}".encode()).decode()
    alone = base64.b64encode(secret.encode()).decode()
    return {
        "plain": secret,
        "json": json.dumps(secret)[1:-1],
        "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "quote": quote(secret, safe=""),
        "quote_plus": quote_plus(secret, safe=""),
        "quote-lower": re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(secret, safe="")),
        "form": urlencode({"client_secret": secret}).partition("=")[2],
        "basic-pair": pair,
        "basic-pair-unpadded": pair.rstrip("="),
        "basic-pair-url": quote(pair, safe=""),
        "base64": alone,
    }


@pytest.mark.parametrize("form", sorted(spellings("sync", TRICKY)))
def test_redact_text_masks_every_spelling(form: str) -> None:
    add_secrets([TRICKY])
    add_basic_pair("sync", TRICKY)
    leaked = spellings("sync", TRICKY)[form]
    text = f"echo: Authorization: Basic {leaked}; body=client_secret={leaked}&x=1"
    assert leaked not in redact_text(text)
    assert leaked not in redact_text(text * 500)  # the long-text path


def test_extra_secrets_get_every_spelling_too() -> None:
    for form, leaked in spellings("u", TRICKY).items():
        if not form.startswith("basic-pair"):
            assert leaked not in redact_text(f"[{leaked}]", [TRICKY]), form


def test_basic_pair_is_masked_in_the_log() -> None:
    out = io.StringIO()
    configure_logging("info", "json", basic_pairs=[("sync", "k3y-value")], stream=out)
    header = "Basic " + base64.b64encode(b"sync:k3y-value").decode()
    log.warning("http.giving_up", excerpt=f'{{"headers": {{"Authorization": "{header}"}}}}')
    assert base64.b64encode(b"sync:k3y-value").decode().rstrip("=") not in out.getvalue()
    assert "Basic [REDACTED]" in out.getvalue()


def test_tokens_are_transient_and_bounded() -> None:
    add_secrets(["config-secret-1"])
    first = "token-number-0000"
    add_secrets([first], transient=True)
    assert redact_text(first) == REDACTED
    for i in range(1, MAX_TRANSIENT_SECRETS + 1):
        add_secrets([f"token-number-{i:04d}"], transient=True)
    assert redact_text(first) == first  # long expired: the pattern stays small
    assert redact_text(f"token-number-{MAX_TRANSIENT_SECRETS:04d}") == REDACTED
    assert redact_text("config-secret-1") == REDACTED  # config secrets are never dropped


def test_an_upstreams_current_token_stays_masked_however_others_churn() -> None:
    """Found by probing: another upstream's frequent refreshes pushed a token still in use out
    of the bounded list, and logs and stored errors would have shown it in clear."""
    add_secrets(["ns-token-in-use-0001"], transient=True, owner="netsapiens")
    for i in range(3 * MAX_TRANSIENT_SECRETS):
        add_secrets([f"halo-token-{i:05d}"], transient=True, owner="halo")
    assert redact_text("ns-token-in-use-0001") == REDACTED  # still netsapiens' current one
    assert redact_text("halo-token-00000") == "halo-token-00000"  # long replaced: dropped
    assert redact_text(f"halo-token-{3 * MAX_TRANSIENT_SECRETS - 1:05d}") == REDACTED
    add_secrets(["ns-token-in-use-0002"], transient=True, owner="netsapiens")
    for i in range(MAX_TRANSIENT_SECRETS):
        add_secrets([f"halo-token-b{i:05d}"], transient=True, owner="halo")
    assert redact_text("ns-token-in-use-0001") == "ns-token-in-use-0001"  # replaced: may go
    assert redact_text("ns-token-in-use-0002") == REDACTED


def test_redact_strings_walks_keys_and_values_without_judging_names() -> None:
    add_secrets([TRICKY])
    escaped = json.dumps(TRICKY)[1:-1]
    data = {"key": "data, not a secret", "excerpt": f"echo {escaped}", escaped: [TRICKY, 5]}
    out = redact_strings(data)
    assert out == {
        "key": "data, not a secret",
        "excerpt": f"echo {REDACTED}",
        REDACTED: [REDACTED, 5],
    }


def test_redacting_stream_sees_a_secret_split_across_writes() -> None:
    add_secrets([SECRET])
    sink = io.StringIO()
    stream = RedactingStream(sink)
    stream.write("one " + SECRET[:5])
    stream.write(SECRET[5:] + " two\nthree ")
    assert sink.getvalue() == f"one {REDACTED} two\n"
    stream.write(SECRET)
    stream.flush()
    assert sink.getvalue() == f"one {REDACTED} two\nthree {REDACTED}"


def test_redacted_stdio_covers_print(capsys: pytest.CaptureFixture[str]) -> None:
    add_secrets([SECRET])
    with redacted_stdio():
        print(f"out {SECRET}")
        print(f"err {SECRET}", file=sys.stderr)
    captured = capsys.readouterr()
    assert captured.out == f"out {REDACTED}\n" and captured.err == f"err {REDACTED}\n"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://hooks.example.com/webhooks/netsapiens/message/abcdef0123456789",
         "https://hooks.example.com/webhooks/netsapiens/message/[REDACTED]"),
        ("https://hooks.example.com/webhooks/netsapiens/message/abcdef0123456789/",
         "https://hooks.example.com/webhooks/netsapiens/message/[REDACTED]"),
        ("https://u:p@hooks.example.com/w/m/s?token=t",
         "https://[REDACTED]@hooks.example.com/w/m/[REDACTED]?[REDACTED]"),
        ("", ""),
        ("not a url", "not a url"),
    ],
)  # fmt: skip
def test_mask_webhook_url(url: str, masked: str) -> None:
    assert mask_webhook_url(url) == masked


def test_mask_webhook_url_masks_a_known_secret_anywhere() -> None:
    url = "https://hooks.example.com/SECRET-in-public-url/message/SECRET-in-public-url"
    assert "SECRET" not in mask_webhook_url(url, ["SECRET-in-public-url"])


def test_records_skip_the_look_ups_no_line_renders() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    assert logging._srcfile is None
    assert not (logging.logThreads or logging.logProcesses or logging.logMultiprocessing)
    logging.getLogger("x").info("plain %s", "record")
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["event"] == "plain record"
    assert not {"thread", "threadName", "process", "processName"} & set(line)
