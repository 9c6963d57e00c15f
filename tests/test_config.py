"""daemon.config: the example file loads; every kind of mistake is reported at its key path."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from daemon.config import (
    BillomatUpstream,
    RateLimit,
    Settings,
    format_duration,
    load_settings,
    parse_duration,
    parse_rate_limit,
    parse_settings,
    resolve_config_path,
    schedule_description,
)
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "daemon.example.toml"
EXAMPLE_ENV = {
    "BLESTA_API_KEY": "blesta-key-value",
    "BLESTA_RESELLER_PASSWORD": "reseller-pass-value",
    "BILLOMAT_API_KEY": "billomat-key-value",
    "BILLOMAT_APP_SECRET": "billomat-app-secret",
    "HALO_CLIENT_SECRET": "halo-secret-value",
    "NS_CLIENT_SECRET": "ns-client-secret",
    "NS_PASSWORD": "ns-password-value",
    "NS_WEBHOOK_SECRET": "webhook-secret-0123456789",
}
BASE = """
[upstreams.blesta]
url = "https://billing.example.com/api"
user = "sync"
key = "${BLESTA_KEY}"

[upstreams.halo]
tenant_url = "https://halo.example.com"
client_id = "c"
client_secret = "${HALO_SECRET}"

[upstreams.netsapiens]
api_url = "https://pbx.example.com"
client_id = "c"
client_secret = "${NS_SECRET}"
username = "u"
password = "${NS_SECRET}"

[[sync]]
name = "blesta-clients"
upstream = "blesta"
resource = "clients"
every = "15m"
"""
ENV = {"BLESTA_KEY": "blesta-secret-key", "HALO_SECRET": "halo-secret", "NS_SECRET": "ns-secret"}


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def load(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> Settings:
    path = write(tmp_path, BASE + textwrap.dedent(extra))
    return load_settings(path, env=ENV if env is None else env)


def problems(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, env)
    return {p.path: p.message for p in info.value.problems}


# --- the example file ---------------------------------------------------------------------------


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE, env=EXAMPLE_ENV)
    assert set(settings.upstreams) == {"blesta", "reseller", "billomat", "halo", "netsapiens"}
    assert settings.upstream("reseller").kind == "blesta_reseller"
    assert settings.upstream("blesta").rate_limit == RateLimit(600, 300.0)
    assert settings.daemon.retention == 90 * 86400
    assert settings.webhooks.netsapiens is not None
    assert settings.webhooks.netsapiens.own_numbers == ["+15559870000"]
    assert settings.rules[0].name == "balance"
    assert any(r.continue_ for r in settings.rules)
    assert sorted(settings.secret_values()) == sorted(EXAMPLE_ENV.values())


def test_example_config_needs_its_env() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(EXAMPLE, env={})
    paths = {p.path for p in info.value.problems}
    assert "upstreams.blesta.key" in paths
    assert "webhooks.netsapiens.secret" in paths


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("90d", 7776000),
     ("1h30m", 5400), (45, 45), (1.5, 1.5), ("250ms", 0.25), ("10", 10)],
)  # fmt: skip
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["x", "1x", "-5s", "", "m", True, -1, None, "1h 30"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for text in ("30s", "15m", "1h30m", "90d", "1d2h3m4s"):
        assert format_duration(parse_duration(text)) == text


def test_parse_rate_limit() -> None:
    assert parse_rate_limit("600/5m") == RateLimit(600, 300.0)
    assert parse_rate_limit("10/s") == RateLimit(10, 1.0)
    for bad in ("600", "x/5m", "0/5m", "5/0s", "5/zz"):
        with pytest.raises(ValueError, match="invalid rate limit"):
            parse_rate_limit(bad)


# --- defaults and resolution -------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s.daemon.database == tmp_path / "state.db"
    assert s.http.listen == "127.0.0.1:8780" and s.http.port == 8780
    job = s.sync[0]
    assert job.table == "blesta_clients" and job.method == "getList" and job.mode == "full"
    assert job.jitter == 30.0
    assert schedule_description(job) == "every 15m, jitter 30s"
    blesta = s.upstream("blesta")
    assert (blesta.timeout, blesta.max_retries, blesta.max_concurrency) == (30.0, 4, 8)
    assert s.webhooks.netsapiens is None


def test_state_directory_default_and_relative_database(tmp_path: Path) -> None:
    s = load(tmp_path, env={**ENV, "STATE_DIRECTORY": "/var/lib/x"})
    assert s.daemon.database == Path("/var/lib/x/state.db")
    s = load_settings(write(tmp_path, '[daemon]\ndatabase = "db/state.db"\n'), env={})
    assert s.daemon.database == tmp_path / "db" / "state.db"


def test_jitter_default_is_ten_percent_capped() -> None:
    s = parse_settings(
        {"upstreams": {"halo": {"tenant_url": "https://h", "client_id": "c",
                                "client_secret": "s"}},
         "sync": [{"name": "a", "upstream": "halo", "resource": "t", "every": "1m"},
                  {"name": "b", "upstream": "halo", "resource": "t", "cron": "*/2 * * * *"}]},
        env={}, credentials_dir=None, base_dir=Path("/"),
    )  # fmt: skip
    assert [j.jitter for j in s.sync] == [6.0, 12.0]


def test_billomat_base_url() -> None:
    up = BillomatUpstream(name="b", billomat_id="acme", api_key="k")
    assert up.base_url == "https://acme.billomat.net/api"
    assert up.max_rate_wait == 900


def test_file_and_credential_references(tmp_path: Path) -> None:
    (tmp_path / "halo.secret").write_text("from-a-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ns").write_text("from-credential")
    text = BASE.replace('"${HALO_SECRET}"', '{ file = "halo.secret" }').replace(
        'client_secret = "${NS_SECRET}"', 'client_secret = { credential = "ns" }'
    )
    s = load_settings(write(tmp_path, text), env=ENV, credentials_dir=str(creds))
    assert s.upstream("halo").client_secret.get_secret_value() == "from-a-file"  # type: ignore[union-attr]
    assert "from-credential" in s.secret_values()


def test_credentials_directory_from_env(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("cred-value")
    text = BASE.replace('key = "${BLESTA_KEY}"', 'key = { credential = "k" }')
    s = load_settings(write(tmp_path, text), env={**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "cred-value" in s.secret_values()


def test_resolve_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, BASE)
    assert resolve_config_path(str(path), env={}) == path
    assert resolve_config_path(None, env={"DAEMON_CONFIG": str(path)}) == path
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path(None, env={}) == Path("daemon.toml")
    with pytest.raises(ConfigError, match="--config"):
        resolve_config_path(str(tmp_path / "missing.toml"), env={})
    # Found by probing: an empty --config ("$CFG" unset) fell through to ./daemon.toml.
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="--config is empty"):
            resolve_config_path(empty, env={"DAEMON_CONFIG": str(path)})
    assert resolve_config_path(None, env={"DAEMON_CONFIG": ""}) == Path("daemon.toml")
    os.remove(path)
    if not Path("/etc/integration-daemon/daemon.toml").exists():
        with pytest.raises(ConfigError, match="no configuration file"):
            resolve_config_path(None, env={})


# --- every kind of mistake, at its key path ----------------------------------------------------


def toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return str(value)


def table(header: str, defaults: Mapping[str, object], **fields: object) -> str:
    merged = {**defaults, **fields}
    body = "".join(f"{k} = {toml(v)}\n" for k, v in merged.items() if v is not None)
    return f"{header}\n{body}"


def job(**fields: object) -> str:
    defaults = {"name": "x", "upstream": "blesta", "resource": "c", "every": "1m"}
    return table("[[sync]]", defaults, **fields)


def rule(**fields: object) -> str:
    return table("[[rules]]", {"name": "r", "on": "m", "action": "ignore"}, **fields)


def blesta2(**fields: object) -> str:
    defaults = {"kind": "blesta", "url": "https://x", "user": "u", "key": "${BLESTA_KEY}"}
    return table("[upstreams.blesta2]", defaults, **fields)


def halo2(**fields: object) -> str:
    defaults = {"kind": "halo", "tenant_url": "https://x", "client_id": "c"}
    return table("[upstreams.halo2]", defaults, **fields)


def hook(**fields: object) -> str:
    defaults = {"secret": "0123456789abcdefXYZ", "public_url": "https://x"}
    return table("[webhooks.netsapiens]", defaults, **fields)


RESELLER = table(
    "[upstreams.res]", {"kind": "blesta_reseller", "user": "u", "password": "${NS_SECRET}"}
)
BAD_REGEX = "invalid regular expression"


@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ("[daemon]\nlog_levl = 'info'\n", "daemon.log_levl", "unknown key"),
        ("[bogus]\nx = 1\n", "bogus", "unknown section"),
        ("[http]\nmax_body_bytes = 'big'\n", "http.max_body_bytes", "invalid size 'big'"),
        ("[daemon]\nshutdown_timeout = 'soon'\n", "daemon.shutdown_timeout", "duration 'soon'"),
        ("[daemon]\ntimezone = 'Mars/Base'\n", "daemon.timezone", "unknown time zone"),
        ("[daemon]\ndefault_region = 'XX'\n", "daemon.default_region", "unknown region"),
        ("[http]\nlisten = 'nope'\n", "http.listen", "listen address"),
        ("[http]\ntrusted_proxies = ['10.0.0.0/8', 'zz']\n", "http.trusted_proxies[1]", "zz"),
        (job(every="1x"), "sync[1].every", "invalid duration '1x'"),
        # Found by probing: an unpaged method failed every run on its repeated "page 2".
        (job(method="getAll"), "sync[1].method", "paged list method"),
        (job(every=None, cron="* * *"), "sync[1].cron", "invalid cron"),
        (job(every=None), "sync[1].every", "schedule"),
        (job(cron="* * * * *"), "sync[1].cron", "not both"),
        (job(resource=None), "sync[1].resource", "resource"),
        (job(mode="incremental"), "sync[1].cursor_field", "incremental"),
        (job(mode="sometimes"), "sync[1].mode", "full"),
        (job(resource=None, report="r", months="2024-13..current"), "sync[1].months", "month"),
        (job(months="2024-01..current"), "sync[1].months", "report"),
        (job(upstream="halo", resource=None, report="r"), "sync[1].report", "Blesta"),
        (job(name="blesta-clients", table="t"), "sync[1].name", "duplicate name"),
        (job(table="blesta_clients"), "sync[1].table", "duplicate table"),
        (job(upstream="nowhere"), "sync[1].upstream", "no upstream named 'nowhere'"),
        (job(table="events"), "sync[1].table", "reserved"),
        (job(table="sqlite_master"), "sync[1].table", "SQLite's own"),
        (job(table="a; drop table x"), "sync[1].table", "invalid table name"),
        (job(name="Bad Name"), "sync[1].name", "invalid job name"),
        (job(page_size=0), "sync[1].page_size", "greater than 0"),
        (job(surprise=1), "sync[1].surprise", "unknown key"),
        (RESELLER + job(upstream="res", resource="clients"), "sync[1].resource", "credit"),
        ("[upstreams.mystery]\nurl='https://x'\n", "upstreams.mystery", "unknown upstream kind"),
        ("[upstreams.other]\nkind='sap'\n", "upstreams.other.kind", "kind 'sap'"),
        (blesta2(url="ftp://x"), "upstreams.blesta2.url", "invalid URL"),
        (blesta2(max_retries=11), "upstreams.blesta2.max_retries", "less than or equal to 10"),
        (blesta2(max_concurrency=0), "upstreams.blesta2.max_concurrency", "greater than"),
        (blesta2(rate_limit="lots"), "upstreams.blesta2.rate_limit", "invalid rate limit"),
        (blesta2(timeout="never"), "upstreams.blesta2.timeout", "invalid duration"),
        (blesta2(auth="oauth"), "upstreams.blesta2.auth", "basic"),
        (blesta2(key=None), "upstreams.blesta2.key", "required"),
        (blesta2(user=5), "upstreams.blesta2.user", "valid string"),
        (blesta2(name="n"), "upstreams.blesta2.name", "table's key"),
        (
            table(
                "[upstreams.bm]",
                {"kind": "billomat", "billomat_id": "a", "app_id": "x", "api_key": "${BLESTA_KEY}"},
            ),
            "upstreams.bm.app_secret",
            "both or neither",
        ),
        (halo2(client_secret="${UNSET_VAR}"), "upstreams.halo2.client_secret", "UNSET_VAR"),
        (
            halo2(client_secret={"file": "/nonexistent/secret"}),
            "upstreams.halo2.client_secret",
            "does not exist",
        ),
        (
            halo2(client_secret={"credential": "halo"}),
            "upstreams.halo2.client_secret",
            "CREDENTIALS_DIRECTORY",
        ),
        ("[rules.x]\n", "rules", "array of tables"),
        (rule(match={"body": "("}), "rules[0].match.body", BAD_REGEX),
        (rule(match={"to": ["ok", "["]}), "rules[0].match.to[1]", BAD_REGEX),
        (rule(match={"from": 5}), "rules[0].match.from", "valid string"),
        (
            rule(action="halo_ticket", ticket={"summary": "{% if %}"}),
            "rules[0].ticket.summary",
            "invalid template",
        ),
        (
            rule(action="halo_ticket", ticket={"a": {"b": "{{ }}"}}),
            "rules[0].ticket.a.b",
            "invalid template",
        ),
        (rule(action="sms_reply", text="Hi {{ x"), "rules[0].text", "invalid template"),
        (rule(when="not (business_hours"), "rules[0].when", "invalid template"),
        (rule(when="{{ x }"), "rules[0].when", "invalid template"),
        (rule(action="sms_reply"), "rules[0].text", "required"),
        (rule(action="halo_ticket"), "rules[0].ticket", "required"),
        (rule(action="explode"), "rules[0].action", "sms_reply"),
        (rule(cooldown="later"), "rules[0].cooldown", "invalid duration"),
        (rule(continu=True), "rules[0].continu", "unknown key"),
        (rule() + rule(), "rules[1].name", "duplicate name 'r'"),
        (
            rule(action="sms_reply", text="x", sms_upstream="halo"),
            "rules[0].sms_upstream",
            "expected netsapiens",
        ),
        (
            rule(action="halo_ticket", ticket={"summary": "x"}, halo_upstream="nope"),
            "rules[0].halo_upstream",
            "'nope'",
        ),
        (hook(secret="${NS_SECRET}"), "webhooks.netsapiens.secret", "16 characters"),
        (hook(subscribe=["message", "bogus"]), "webhooks.netsapiens.subscribe[1]", "message"),
        (
            hook(own_numbers=["+15559870000", "xyz"]),
            "webhooks.netsapiens.own_numbers[1]",
            "not a phone number",
        ),
        (hook(upstream="blesta"), "webhooks.netsapiens.upstream", "expected netsapiens"),
        (hook(allow_from=["nope"]), "webhooks.netsapiens.allow_from[0]", "nope"),
        (hook(public_url="hooks.example.com"), "webhooks.netsapiens.public_url", "invalid URL"),
        (hook(secret=None), "webhooks.netsapiens.secret", "required"),
    ],
)
def test_mistakes_name_their_key(tmp_path: Path, extra: str, path: str, words: str) -> None:
    found = problems(tmp_path, extra)
    assert path in found, found
    assert words in found[path]


def test_missing_credential_file(tmp_path: Path) -> None:
    text = BASE.replace('key = "${BLESTA_KEY}"', 'key = { credential = "blesta" }')
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env=ENV, credentials_dir=str(tmp_path))
    (problem,) = info.value.problems
    assert problem.path == "upstreams.blesta.key"
    assert "credential 'blesta'" in problem.message and "does not exist" in problem.message


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TOML syntax error.*line 3"):
        load_settings(write(tmp_path, "[daemon]\nlog_level = 'info'\nlog_format = \n"), env={})


def test_insecure_permissions_with_literal_secret(tmp_path: Path) -> None:
    text = BASE.replace('"${BLESTA_KEY}"', '"literal-key-value"')
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text, mode=0o644), env=ENV)
    (problem,) = info.value.problems
    assert problem.path == "upstreams.blesta.key"
    assert "0644" in problem.message and "literal-key-value" not in str(info.value)
    # Private file, or explicit opt-in: accepted.
    load_settings(write(tmp_path, text, mode=0o600), env=ENV)
    optin = "[daemon]\nallow_insecure_config = true\n" + text
    load_settings(write(tmp_path, optin, mode=0o644), env=ENV)


def test_a_literal_previous_secret_is_a_secret_too(tmp_path: Path) -> None:
    text = BASE + hook(secret="${HOOK_SECRET}", previous_secret="old-literal-0123456789")
    env = {**ENV, "HOOK_SECRET": "hook-secret-0123456789"}
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text, mode=0o644), env=env)
    (problem,) = info.value.problems
    assert problem.path == "webhooks.netsapiens.previous_secret"
    assert "old-literal-0123456789" not in str(info.value)


def test_references_only_may_be_world_readable(tmp_path: Path) -> None:
    load_settings(write(tmp_path, BASE, mode=0o644), env=ENV)


def test_literal_key_in_params_is_not_a_secret(tmp_path: Path) -> None:
    extra = "[[sync]]\nname='x'\nupstream='blesta'\nresource='c'\nevery='1m'\nparams={key='v'}\n"
    load_settings(write(tmp_path, BASE + extra, mode=0o644), env=ENV)


def test_several_errors_reported_at_once(tmp_path: Path) -> None:
    extra = """
    [daemon]
    log_level = "loud"
    [http]
    listen = "nowhere"
    [[sync]]
    name = "x"
    upstream = "blesta"
    resource = "c"
    every = "soon"
    [[rules]]
    name = "r"
    on = "m"
    action = "ignore"
    match = { body = "(" }
    """
    found = problems(tmp_path, extra, env={"HALO_SECRET": "h", "NS_SECRET": "n"})
    assert {
        "daemon.log_level",
        "http.listen",
        "sync[1].every",
        "rules[0].match.body",
        "upstreams.blesta.key",
    } <= set(found)
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra, env={})
    assert str(tmp_path / "daemon.toml") in str(info.value)


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(tmp_path)
    with pytest.raises(Exception, match="frozen"):
        s.daemon.log_level = "debug"  # type: ignore[misc]


def test_environment_values_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    """POSIX hands an environment value's undecodable bytes over as lone surrogates; a secret
    like that passed validation and then crashed the service at its first use (the redactor
    and HTTP Basic cannot encode it). It is a config error naming the key, at load."""
    latin1 = os.fsdecode("caf\xe9-key".encode("latin-1"))  # what os.environ would hold
    found = problems(tmp_path, env={**ENV, "BLESTA_KEY": latin1})
    assert found == {"upstreams.blesta.key": "environment variable BLESTA_KEY is not UTF-8 text"}
    assert latin1 not in repr(found)
