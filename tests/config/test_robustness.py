"""Whatever the file holds, loading it ends in Settings or a ConfigError (exit 2) — never a
traceback. The named cases each crashed `check-config` once; the properties look for the next.
"""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import Settings, load_settings, parse_settings
from daemon.errors import ConfigError
from tests.test_config import BASE, ENV, hook, rule

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=ENV if env is None else env)
    return {p.path: p.message for p in info.value.problems}


def with_job(**fields: str) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in fields.items())
    return BASE + f'\n[[sync]]\nname = "x"\nupstream = "blesta"\nresource = "c"\n{lines}'


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        (with_job(every="inf"), "sync[1].every", "finite"),
        (with_job(every="nan"), "sync[1].every", "finite"),
        (with_job(every='"99999999999w"'), "sync[1].every", "at most 3650d"),
        (with_job(every='"500ms"'), "sync[1].every", "at least 1s"),
        (with_job(every='"1m"', max_duration="inf"), "sync[1].max_duration", "finite"),
        (with_job(every='"1m"', max_duration="0"), "sync[1].max_duration", "positive"),
        (with_job(every='"1m"', jitter="-1"), "sync[1].jitter", "negative"),
        (with_job(every='"1m"', max_pages="0"), "sync[1].max_pages", "greater than"),
        (with_job(every='"1m"', max_pages="1e400"), "sync[1].max_pages", "valid integer"),
        # A count is a TOML integer: lax validation read `true` as 1 and "8" as 8.
        (with_job(every='"1m"', max_pages="true"), "sync[1].max_pages", "valid integer"),
        (BASE.replace('user = "sync"', 'user = "sync"\nmax_concurrency = true'),
         "upstreams.blesta.max_concurrency", "valid integer"),
        (BASE.replace('user = "sync"', 'user = "sync"\nmax_concurrency = "8"'),
         "upstreams.blesta.max_concurrency", "valid integer"),
        ("[daemon.dispatch]\nmax_attempts = 3.0\n" + BASE, "daemon.dispatch.max_attempts",
         "valid integer"),
        (with_job(every='"1m"', max_pages=str(10**30)), "sync[1].max_pages", "less than"),
        (with_job(every='"1m"', page_size=str(10**30)), "sync[1].page_size", "less than"),
        (
            with_job(every='"1m"', max_tombstone_fraction="nan"),
            "sync[1].max_tombstone_fraction",
            "finite",
        ),
        (
            with_job(every='"1m"', max_tombstone_fraction="1.5"),
            "sync[1].max_tombstone_fraction",
            "less than",
        ),
        (with_job(cron='"0 0 31 2 *"'), "sync[1].cron", "never fires"),
        ("[daemon]\nretention = nan\n" + BASE, "daemon.retention", "finite"),
        ("[daemon]\nretention = 90\n" + BASE, "daemon.retention", "at least 1h"),
        ("[daemon]\nshutdown_timeout = inf\n" + BASE, "daemon.shutdown_timeout", "finite"),
        ("[daemon]\nshutdown_timeout = '2h'\n" + BASE, "daemon.shutdown_timeout", "at most 1h"),
        ("[daemon]\ntimezone = 'America'\n" + BASE, "daemon.timezone", "unknown time zone"),
        ("[daemon]\ndatabase = '~nosuchuser99/x.db'\n" + BASE, "daemon.database", "home"),
        ('[daemon]\ndatabase = "a\\u0000b"\n' + BASE, "daemon.database", "NUL"),
        ("[http]\nmax_body_bytes = '2GiB'\n" + BASE, "http.max_body_bytes", "1GiB"),
        ("[http]\nmax_body_bytes = -1\n" + BASE, "http.max_body_bytes", "between"),
        (BASE.replace('user = "sync"', 'user = "sync"\ntimeout = nan'), "upstreams.blesta.timeout",
         "finite"),
        (BASE.replace('user = "sync"', 'user = "sync"\ntimeout = "2h"'),
         "upstreams.blesta.timeout", "at most 1h"),
        (BASE.replace('user = "sync"', 'user = "sync"\nmax_retry_wait = inf'),
         "upstreams.blesta.max_retry_wait", "finite"),
        (BASE.replace('user = "sync"', 'user = "sync"\nmax_retry_wait = "2d"'),
         "upstreams.blesta.max_retry_wait", "at most 1d"),
        (BASE.replace('user = "sync"', 'user = "sync"\nmax_response_bytes = "10B"'),
         "upstreams.blesta.max_response_bytes", "between 1KiB and 1GiB"),
        (BASE.replace('user = "sync"', 'user = "sync"\nmax_response_bytes = "64 lots"'),
         "upstreams.blesta.max_response_bytes", "invalid size"),
        (BASE.replace('user = "sync"', 'user = "sync"\nrate_limit = "5/inf"'),
         "upstreams.blesta.rate_limit", "invalid rate limit"),
        (BASE.replace("https://billing.example.com/api", "http://sync:pw@billing.example.com"),
         "upstreams.blesta.url", "credentials in the URL"),
        # Each of these passed check-config and then failed at run time (found in review).
        (with_job(every='"2s"', jitter='"3650d"'), "sync[1].jitter", "at most 1d"),
        (with_job(every='"2s"', jitter='"3s"'), "sync[1].jitter", "at most the interval"),
        (BASE + hook(renew_before="1d"), "webhooks.netsapiens.renew_before", "at most 12h"),
        (BASE + hook(secret="abcdefgh/ijklmnopqrst"), "webhooks.netsapiens.secret",
         "part of a URL"),
        (BASE + hook(secret="abcdefgh?ijklmnop%41"), "webhooks.netsapiens.secret",
         "part of a URL"),
        (BASE + hook(previous_secret="old#secret-0123456789"),
         "webhooks.netsapiens.previous_secret", "part of a URL"),
        ("[daemon.dispatch]\nlease = '1ms'\n" + BASE, "daemon.dispatch.lease", "at least 30s"),
        ("[daemon.dispatch]\nbackoff = '2h'\nbackoff_cap = '1h'\n" + BASE,
         "daemon.dispatch.backoff", "at most `backoff_cap`"),
        # A switch is a TOML boolean: lax validation read "no", "off" and 0 as false.
        ("[daemon]\nallow_insecure_config = 'yes'\n" + BASE, "daemon.allow_insecure_config",
         "valid boolean"),
        (BASE + hook(backfill="no"), "webhooks.netsapiens.backfill", "valid boolean"),
        (BASE + hook(backfill=0), "webhooks.netsapiens.backfill", "valid boolean"),
        (BASE + hook() + rule(enabled="false"), "rules[0].enabled", "valid boolean"),
        (BASE + hook() + rule(**{"continue": 1}), "rules[0].continue", "valid boolean"),
    ],
)  # fmt: skip
def test_bad_values_are_exit_2(tmp_path: Path, text: str, path: str, words: str) -> None:
    found = problems_of(tmp_path, text)
    assert path in found, found
    assert words in found[path]


def test_max_response_bytes_takes_a_size(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(BASE.replace('user = "sync"', 'user = "sync"\nmax_response_bytes = "64MB"'))
    assert load_settings(path, env=ENV).upstream("blesta").max_response_bytes == 64_000_000


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_bytes(b'[daemon]\nlog_level = "info"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 on line 3\)"):
        load_settings(path, env={})


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    load_settings(path, env=ENV)


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "{b=" * 400 + "1" + "}" * 400,
        "a = " + "[" * 5000 + "]" * 5000,
        "[[sync]]\nname='x'\nparams = " + "[" * 400 + "]" * 400,
        "[rules.x]\nticket = " + "{a=" * 100 + "1" + "}" * 100,
        "a = " + "9" * 5000,
    ],
    ids=["tables-400", "arrays-5000", "params-400", "ticket-100", "int-5000-digits"],
)
def test_deep_or_huge_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_settings(path, env={})


def test_nesting_is_refused_at_its_key(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "[[sync]]\nname='x'\nparams = " + "[" * 40 + "]" * 40)
    (deep,) = [p for p in found if p.startswith("sync[0].params[0]")]
    assert "nested more than 32 levels deep" in found[deep]


def test_config_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a regular file|Is a directory"):
        load_settings(tmp_path, env={})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_settings(fifo, env={})


def test_oversized_config(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text("# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_settings(path, env={})


def test_reseller_method_names_and_aliases(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        """
        [upstreams.res]
        kind = "blesta_reseller"
        user = "u"
        password = "${NS_SECRET}"
        """
    )
    names = ["getcredit", "getpackages", "getpackagepricing", "search", "credit", "licenses"]
    for i, resource in enumerate(names):
        text += f'[[sync]]\nname = "r{i}"\nupstream = "res"\nresource = "{resource}"\n'
        text += 'every = "1h"\n'
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    load_settings(path, env=ENV)


# --- properties ---------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["daemon", "http", "upstreams", "webhooks", "sync", "rules", "blesta", "halo", "netsapiens",
     "kind", "url", "user", "key", "every", "cron", "table", "name", "upstream", "resource",
     "timeout", "retention", "database", "timezone", "listen", "max_body_bytes", "secret",
     "public_url", "params", "file", "credential", "max_pages", "max_response_bytes", "match",
     "action", "on", "text", "ticket", "months", "report", "rate_limit", "page_size"]
) | st.text(max_size=8)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["${BLESTA_KEY}", "${EMPTY}", "${UNSET}", "1h", "*/5 * * * *",
                       "https://x", "blesta", "halo", "full", "0 0 31 2 *", "64MB", "select",
                       "x\n", "~nosuchuser/x", "/dev/urandom", "."])
    | st.datetimes(timezones=st.just(dt.UTC))
    | st.dates()
    | st.times()
)  # fmt: skip
TOML_VALUES = st.recursive(
    SCALARS.filter(lambda v: v is not None),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)
SECTION = st.dictionaries(KEYS, TOML_VALUES, max_size=6)
DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "daemon": SECTION,
        "http": SECTION,
        "upstreams": st.dictionaries(KEYS, SECTION, max_size=3),
        "webhooks": st.dictionaries(st.just("netsapiens"), SECTION, max_size=1),
        "sync": st.lists(SECTION, max_size=3),
        "rules": st.lists(SECTION, max_size=3),
    },
) | st.dictionaries(KEYS, TOML_VALUES, max_size=4)

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@settings(PROPERTY, max_examples=100)  # big random documents; the targeted property runs more
@given(DOCUMENTS)
def test_parse_settings_returns_settings_or_config_error(data: dict[str, Any]) -> None:
    try:
        result = parse_settings(
            data, env={"BLESTA_KEY": "k" * 12, "EMPTY": ""}, credentials_dir="/nonexistent",
            base_dir=Path("/nonexistent"),
        )  # fmt: skip
    except ConfigError as exc:
        assert exc.problems
        assert "Traceback" not in str(exc)
    else:
        assert isinstance(result, Settings)


def valid_document() -> dict[str, Any]:
    return {
        "upstreams": {
            "blesta": {"url": "https://b.example.com", "user": "u", "key": "k" * 12},
            "netsapiens": {"api_url": "https://p.example.com", "client_id": "c",
                           "client_secret": "s" * 12, "username": "u", "password": "p" * 12},
        },
        "webhooks": {"netsapiens": {"secret": "w" * 20, "public_url": "https://h.example.com"}},
        "sync": [{"name": "j", "upstream": "blesta", "resource": "clients", "every": "1h"}],
        "rules": [{"name": "r", "on": "message.received", "action": "sms_reply", "text": "hi"}],
    }  # fmt: skip


def _mutate(section: str, key: str, value: Any) -> dict[str, Any]:
    doc = valid_document()
    if section in ("sync", "rules"):
        doc[section] = [{**doc[section][0], key: value}]
    elif section in ("blesta", "netsapiens"):
        doc["upstreams"][section] = {**doc["upstreams"][section], key: value}
    elif section == "webhooks":
        doc["webhooks"]["netsapiens"] = {**doc["webhooks"]["netsapiens"], key: value}
    else:
        doc[section] = {key: value}
    return doc


def test_the_mutated_document_is_valid() -> None:
    parse_settings(valid_document(), env={}, credentials_dir=None, base_dir=Path("/nonexistent"))


FIELDS = (
    [("sync", k) for k in ("every", "cron", "jitter", "table", "max_pages", "max_duration",
                           "max_tombstone_fraction", "page_size", "months", "params", "mode",
                           "phone_fields", "report")]
    + [("blesta", k) for k in ("url", "timeout", "max_retries", "max_concurrency", "rate_limit",
                               "max_response_bytes", "max_retry_wait", "key", "user", "kind")]
    + [("netsapiens", k) for k in ("api_url", "client_secret", "password")]
    + [("webhooks", k) for k in ("secret", "public_url", "subscribe", "renew_before",
                                 "allow_from", "own_numbers", "upstream")]
    + [("rules", k) for k in ("on", "match", "when", "text", "ticket", "cooldown", "action",
                              "sms_upstream", "name")]
    + [("daemon", k) for k in ("retention", "shutdown_timeout", "timezone", "database",
                               "default_region", "log_level")]
    + [("http", k) for k in ("listen", "max_body_bytes", "trusted_proxies")]
)  # fmt: skip


@PROPERTY
@given(st.sampled_from(FIELDS), TOML_VALUES)
def test_any_value_in_any_field_is_settings_or_config_error(
    field: tuple[str, str], value: Any
) -> None:
    """A valid file with one field replaced by anything: targets each validator directly."""
    try:
        parse_settings(
            _mutate(*field, value), env={}, credentials_dir=None, base_dir=Path("/nonexistent")
        )
    except ConfigError as exc:
        assert exc.problems


@PROPERTY
@given(st.text(max_size=400) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_file_is_settings_or_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_settings(path, env={})
    except ConfigError:
        pass
