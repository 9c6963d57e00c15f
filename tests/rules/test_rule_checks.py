"""`[[rules]]` at load: event kinds, match keys, regexes and templates, each at its key."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, parse_settings
from daemon.errors import ConfigError
from daemon.rules.engine import RuleSet
from tests.rules.util import rule, sms


def load(*rules: dict[str, Any], extra: str = "") -> Settings:
    data: dict[str, Any] = tomllib.loads(extra) if extra else {}
    data["rules"] = [{"name": f"r{i}", "action": "ignore", **r} for i, r in enumerate(rules)]
    return parse_settings(data, env={}, credentials_dir=None, base_dir=Path("/nonexistent"))


def problems(*rules: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(*rules)
    return {p.path: p.message for p in info.value.problems}


ON = {"on": "message.received"}
NS = "[upstreams.netsapiens]\napi_url='https://p'\nclient_id='c'\nclient_secret='s'\n"
NS += "username='u'\npassword='p'\n"

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"on": "mesage.received"}, "rules[0].on", "unknown event kind 'mesage.received'"),
    ({"on": "sms.*"}, "rules[0].on", "expected one of message.received, message.sent"),
    ({"on": "netsapiens."}, "rules[0].on", "netsapiens.<model>"),
    ({**ON, "match": {"bdy": "x"}}, "rules[0].match.bdy", "unknown event field 'bdy'"),
    ({**ON, "match": {"raw": "x"}}, "rules[0].match.raw", "expected one of kind, source, from"),
    ({**ON, "match": {"body": []}}, "rules[0].match.body", "an empty list never matches"),
    ({**ON, "match": {"body": "("}}, "rules[0].match.body", "invalid regular expression '('"),
    ({**ON, "match": {"to": ["ok", "["]}}, "rules[0].match.to[1]", "invalid regular expression"),
    ({**ON, "match": {"body": "a{99999999999}"}}, "rules[0].match.body", "invalid regular"),
    ({**ON, "when": "{{ a }} {{ b }}"}, "rules[0].when", "`when` is one Jinja expression"),
    ({**ON, "when": "{% if x %}y{% endif %}"}, "rules[0].when", "invalid template"),
    ({**ON, "when": "{{ }}"}, "rules[0].when", "`when` is empty"),
    ({**ON, "when": "x | nosuchfilter"}, "rules[0].when", "No filter named 'nosuchfilter'"),
    (
        {**ON, "action": "sms_reply", "text": "{{ x | nosuchfilter }}"},
        "rules[0].text",
        "invalid template: No filter named 'nosuchfilter'",
    ),
    ({**ON, "action": "sms_reply", "text": "{{ x"}, "rules[0].text", "invalid template"),
    # Found by probing: inside a condition Jinja leaves filter and test names to the render,
    # so these loaded and every action they rendered was dead.
    (
        {
            **ON,
            "action": "sms_reply",
            "text": "{% if client %}{{ client.a | capitalise }}{% endif %}",
        },
        "rules[0].text",
        "No filter named 'capitalise'",
    ),
    (
        {**ON, "action": "sms_reply", "text": "{{ event.body | lowr if business_hours else 'x' }}"},
        "rules[0].text",
        "No filter named 'lowr'",
    ),
    (
        {**ON, "action": "sms_reply", "text": "{% if event.body is stringg %}x{% endif %}"},
        "rules[0].text",
        "No test named 'stringg'",
    ),
    (
        {**ON, "when": "event.body | lowr == 'x' if business_hours else false"},
        "rules[0].when",
        "No filter named 'lowr'",
    ),
    # JSON has no NaN or Infinity: the ticket would go as invalid JSON (found by probing).
    (
        {**ON, "action": "halo_ticket", "ticket": {"summary": "x", "priority_id": float("nan")}},
        "rules[0].ticket.priority_id",
        "JSON has only finite numbers",
    ),
    (
        {**ON, "action": "halo_ticket", "ticket": {"summary": "x", "n": [float("-inf")]}},
        "rules[0].ticket.n[0]",
        "JSON has only finite numbers",
    ),
    (
        {**ON, "action": "halo_ticket", "ticket": {"a": [{"b": "{% if %}"}]}},
        "rules[0].ticket.a[0].b",
        "invalid template",
    ),
    (
        {**ON, "action": "halo_ticket", "ticket": {"due": date(2025, 1, 1)}},
        "rules[0].ticket.due",
        "a TOML date cannot be sent; write it as a string",
    ),
    ({**ON, "text": "hi"}, "rules[0].text", "only used by action = 'sms_reply', not 'ignore'"),
    (
        {**ON, "ticket": {"summary": "s"}},
        "rules[0].ticket",
        "only used by action = 'halo_ticket', not 'ignore'",
    ),
]


@pytest.mark.parametrize(("fields", "path", "words"), BAD)
def test_mistakes_name_their_key(fields: dict[str, Any], path: str, words: str) -> None:
    found = problems(fields)
    assert path in found, found
    assert words in found[path]


GOOD: list[dict[str, Any]] = [
    {"on": "message.received"},
    {"on": "message.*"},
    {"on": "*"},
    {"on": "call.[mc]*"},
    {"on": "netsapiens.agent"},
    {**ON, "match": {k: "x" for k in ("kind", "from", "to", "body", "duration", "occurred_at")}},
    {**ON, "when": "not business_hours"},
    {**ON, "when": "{{ not business_hours }}"},
    {**ON, "when": "{{- client is defined and client.balance | float > 0 -}}"},
    {**ON, "when": "now.hour >= 18 or now.weekday() >= 5"},
]


@pytest.mark.parametrize("fields", GOOD)
def test_accepted(fields: dict[str, Any]) -> None:
    settings = load(fields)
    RuleSet.compile(settings.rules, timezone="UTC", business_hours=None)


def test_the_example_rules_compile() -> None:
    text = (Path(__file__).resolve().parents[2] / "config" / "daemon.example.toml").read_text()
    rules = tomllib.loads(text)["rules"]
    settings = load(*rules, extra=NS + "[upstreams.halo]\ntenant_url='https://h'\nclient_id='c'"
                    "\nclient_secret='s'\n")  # fmt: skip
    assert len(RuleSet.compile(settings.rules, timezone="UTC", business_hours=None)) == len(rules)


def test_compile_reports_every_bad_rule_by_key() -> None:
    with pytest.raises(ConfigError) as info:
        RuleSet.compile(
            [
                rule("a", match={"body": "("}),
                sms("b", text="{{ x | nope }}"),
                rule("c", when="{{ a }}{{ b }}"),
                rule("a"),
            ],
            timezone="UTC",
            business_hours=None,
        )
    assert [p.path for p in info.value.problems] == [
        "rules[0].match.body",
        "rules[1].text",
        "rules[2].when",
        "rules[3].name",
    ]


def test_compile_refuses_an_unknown_zone() -> None:
    with pytest.raises(ConfigError, match=r"daemon\.timezone"):
        RuleSet.compile([], timezone="Mars/Olympus", business_hours=None)
