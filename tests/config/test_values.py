"""Scalar values of the configuration: every number finite and bounded, every spelling checked.

Each case here once crashed `check-config` with a traceback (exit 1) or passed it and failed
later; now each is a ValueError that names the value and the rule.
"""

from __future__ import annotations

import pytest

from daemon.config import MAX_DURATION, format_byte_size, parse_byte_size, parse_duration
from daemon.config.values import (
    check_cron,
    check_http_url,
    check_listen,
    mask_userinfo,
    parse_rate_limit,
)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (float("nan"), "finite"),
        ("nan", "expected seconds"),
        ("inf", "expected seconds"),
        ("1e400", "expected seconds"),
        ("99999999999w", "at most 3650d"),
        ("3651d", "at most 3650d"),
        (10**30, "at most 3650d"),
        (-(10**30), "negative"),
        (-0.5, "negative"),
        ("9" * 5000 + "s", "finite"),
        ("١٢s", "expected seconds"),  # Arabic-Indic digits match \d, not [0-9]
        ([], "expected seconds"),
    ],
)
def test_durations_are_finite_and_bounded(value: object, words: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)
    assert words in str(info.value)


def test_ten_years_is_the_longest_duration() -> None:
    assert parse_duration("3650d") == MAX_DURATION
    assert parse_duration(MAX_DURATION) == MAX_DURATION


def test_a_long_value_is_quoted_short() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("x" * 10_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1048576, 1048576),
        ("1048576", 1048576),
        ("512KB", 512_000),
        ("512kb", 512_000),
        ("64MB", 64_000_000),
        ("64MiB", 64 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("1.5 MiB", 1536 * 1024),
        ("100B", 100),
    ],
)
def test_byte_sizes(text: object, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("bad", ["big", "64XB", "-5MB", "MB", "", True, 1.5, None, "1e9MB"])
def test_byte_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_byte_size(bad)


def test_format_byte_size_is_exact() -> None:
    assert format_byte_size(64 * 1024 * 1024) == "64MiB"
    assert format_byte_size(64_000_000) == "64MB"
    assert format_byte_size(1536) == "1536B"
    assert format_byte_size(1000) == "1KB"
    assert format_byte_size(1023) == "1023B"


@pytest.mark.parametrize("bad", ["²/5m", "0/5m", "10000001/s", "1" * 40 + "/s", "5/inf", "5/nan"])
def test_rate_limit_counts_and_periods_are_bounded(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid rate limit"):
        parse_rate_limit(bad)


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError) as info:
        check_http_url("http://user:password@host.example.com/api")
    message = str(info.value)
    assert "password" not in message.replace("user/key, password", "")
    assert "credentials in the URL" in message and "host.example.com" in message
    with pytest.raises(ValueError, match="credentials"):
        check_http_url("https://token@host.example.com")


@pytest.mark.parametrize(
    "bad", ["http://[::1", "http://host:99999/", "http://host:port/", "http://ho st/"]
)
def test_malformed_urls_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid URL"):
        check_http_url(bad)


@pytest.mark.parametrize(
    "url",
    [
        "https://admin:Pa55/SECRETpart@billing.example.com/api",
        "https://admin:TopS3cret?tail@billing.example.com/api",
        "https://admin:8080/SECRETpart@billing.example.com/api",  # parses as host "admin"
        "https://admin:x#SECRETpart@billing.example.com/api",
        "https://admin:SECRET@part@billing.example.com/api",  # an @ in the password too
    ],
)
def test_a_password_pasted_unencoded_is_refused_and_never_shown(url: str) -> None:
    """Found by probing: a `/`, `?` or `#` in the password ended the masked part (the URL was
    echoed whole), a parse error quoted it, or the URL was even accepted."""
    with pytest.raises(ValueError, match="credentials in the URL") as info:
        check_http_url(url)
    assert "SECRET" not in str(info.value) and "TopS3cret" not in str(info.value)


def test_mask_userinfo() -> None:
    assert mask_userinfo("https://u:p@h/x") == "https://[REDACTED]@h/x"
    assert mask_userinfo("https://u:p/q@h/x") == "https://[REDACTED]@h/x"
    assert mask_userinfo("https://h/x") == "https://h/x"
    assert mask_userinfo("not a url") == "not a url"


@pytest.mark.parametrize("bad", ["0.0.0.0:²", "h:123456", "h:-1", ":80"])
def test_listen_port_is_ascii_and_in_range(bad: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        check_listen(bad)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("0 0 31 2 *", "never fires"),
        ("0 0 30 2 *", "never fires"),
        ("* * * * * *", "five fields"),
        ("0 0 1 1 * 2099", "five fields"),
        ("@reboot", "five fields"),
        ("61 * * * *", "minute 61 is out of range"),
        # Found by probing: croniter's own extensions and a reversed range were accepted.
        ("R R * * *", "minute 'r' is not a number"),
        ("H * * * *", "is not a number"),
        ("1-0 * * * *", "range '1-0' runs backwards"),
        ("0 0 * * fri-mon", "runs backwards"),
        ("*/0 * * * *", "step 0"),
        ("0 0 L * *", "day-of-month 'l' is not a number"),
        ("0 0 * * 5#2", "is not a number, a name"),
        ("0 0 * * *\n", "five fields"),
        ("0\t0 * * *", "five fields"),
        ("0 0 * \u0661 *", "is not a number"),
    ],
)
def test_cron_has_five_fields_and_fires(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match="cron") as info:
        check_cron(bad)
    assert words in str(info.value)


def test_leap_day_cron_fires() -> None:
    assert check_cron("0 0 29 2 *") == "0 0 29 2 *"


@pytest.mark.parametrize(
    "good",
    ["*/15 * * * *", "0 9-17 * * mon-fri", "30 2 1,15 jan,jul *", "0 0 * * 0", "0 0 * * 7",
     "5  4 * * SUN", "0 12 * 1-12/3 *", "0-59/10 * * * *"],
)  # fmt: skip
def test_plain_cron_is_accepted(good: str) -> None:
    assert check_cron(good) == good
