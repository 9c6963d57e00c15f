"""daemon.logs: one JSON object per line, stdlib records in the same shape, secrets masked."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from daemon.logs import (
    REDACTED,
    add_secrets,
    clear_secrets,
    configure_logging,
    is_secret_key,
    log,
    redact_text,
)

SECRET = "s3cr3t-Value-42"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    clear_secrets()


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
