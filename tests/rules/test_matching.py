"""Which rules act on an event: `on`, `match`, `when`, `enabled`, `continue`, file order."""

from __future__ import annotations

import time
from typing import Any

import pytest

from daemon.config.dispatch import BusinessHours
from daemon.config.models import Rule
from daemon.rules.patterns import MATCH_TIMEOUT
from daemon.rules.plan import action_key
from tests.rules.util import NOW, contact, event, rule, ruleset, sms

CASES: list[tuple[str, list[Rule], dict[str, Any], list[str]]] = [
    ("exact kind", [rule("a")], {}, ["a"]),
    ("other kind", [rule("a", on="message.sent")], {}, []),
    ("glob", [rule("a", on="message.*")], {}, ["a"]),
    ("glob other family", [rule("a", on="call.*")], {}, []),
    ("glob all", [rule("a", on="*")], {"kind": "call.missed"}, ["a"]),
    ("netsapiens model", [rule("a", on="netsapiens.*")], {"kind": "netsapiens.agent"}, ["a"]),
    ("match search", [rule("a", match={"body": "lance"})], {}, ["a"]),
    ("match anchored", [rule("a", match={"body": "^lance"})], {}, []),
    ("match flags", [rule("a", match={"body": "(?i)^BALANCE"})], {}, ["a"]),
    ("list any of", [rule("a", match={"body": ["^stop$", "^bal"]})], {}, ["a"]),
    ("list none of", [rule("a", match={"body": ["^stop$", "^end$"]})], {}, []),
    ("all keys", [rule("a", match={"body": "bal", "from": r"^\+1555"})], {}, ["a"]),
    ("one key fails", [rule("a", match={"body": "bal", "from": r"^\+44"})], {}, []),
    ("None never matches", [rule("a", match={"body": ".*"})], {"body": None}, []),
    ("None never matches a list", [rule("a", match={"to": ["", ".*"]})], {"to_number": None}, []),
    ("empty string matches .*", [rule("a", match={"body": "^$"})], {"body": ""}, ["a"]),
    ("duration as text", [rule("a", match={"duration": "^0$"})], {"duration": 0}, ["a"]),
    ("duration 42", [rule("a", match={"duration": r"^\d{2}$"})], {"duration": 42}, ["a"]),
    ("occurred_at iso", [rule("a", match={"occurred_at": "^2025-01-06T14"})], {}, ["a"]),
    ("direction", [rule("a", match={"direction": "^outbound$"})], {}, []),
    ("first match wins", [rule("a"), rule("b")], {}, ["a"]),
    ("disabled skipped", [rule("a", enabled=False), rule("b")], {}, ["b"]),
    ("continue", [rule("a", **{"continue": True}), rule("b"), rule("c")], {}, ["a", "b"]),
    (
        "continue past a non-match",
        [rule("a", **{"continue": True}), rule("b", on="call.*"), rule("c")],
        {},
        ["a", "c"],
    ),
    ("skip to second", [rule("a", match={"body": "^stop"}), rule("b")], {}, ["b"]),
    ("when true", [rule("a", when="event.body == 'balance?'")], {}, ["a"]),
    ("when false", [rule("a", when="{{ event.body == 'x' }}"), rule("b")], {}, ["b"]),
    ("when braces trimmed", [rule("a", when="{{- event.user == '101' -}}")], {}, ["a"]),
    ("when undefined is false", [rule("a", when="client.vip")], {}, []),
    ("when not business hours", [rule("a", when="not business_hours")], {}, []),
    ("when contact is defined", [rule("a", when="contact is defined")], {}, []),
    ("no rules", [], {}, []),
]


@pytest.mark.parametrize(
    ("rules", "changes", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_which_rules_act(rules: list[Rule], changes: dict[str, Any], expected: list[str]) -> None:
    plan = ruleset(*rules).evaluate(event(**changes), contact=None, now=NOW)
    assert plan.matched == expected
    assert [a.rule for a in plan.actions] == expected
    assert all(a.error is None for a in plan.actions)


@pytest.mark.parametrize(
    ("when", "with_contact", "acts"),
    [
        ("client is defined", True, True),
        ("client is defined", False, False),
        ("client.vip", True, False),
        ("not client.vip", False, True),
        ("client.balance | float > 10", True, True),
        ("now.hour == 10", True, True),  # 15:00 UTC in New York
        ("now.strftime('%A') == 'Monday'", True, True),
        ("contact.table.startswith('blesta_')", True, True),
        ("event.raw['from-number'] == '15551230000'", False, True),
        ("business_hours", False, True),  # no [daemon.business_hours]: always open
    ],
)
def test_when(when: str, with_contact: bool, acts: bool) -> None:
    plan = ruleset(rule("a", when=when)).evaluate(
        event(), contact=contact() if with_contact else None, now=NOW
    )
    assert plan.matched == (["a"] if acts else [])


def test_business_hours_reach_when() -> None:
    hours = BusinessHours(mon="09:00-17:00")
    rules = ruleset(rule("closed", when="not business_hours"), rule("open"), hours=hours)
    assert rules.evaluate(event(), contact=None, now=NOW).matched == ["open"]  # Mon 10:00
    evening = NOW.replace(hour=23)  # 18:00 in New York
    assert rules.evaluate(event(), contact=None, now=evening).matched == ["closed"]


def test_action_fields() -> None:
    plan = ruleset(sms("a", **{"continue": True}), rule("b")).evaluate(
        event(), contact=None, now=NOW
    )
    a, b = plan.actions
    assert (a.kind, a.auto_reply, b.kind, b.auto_reply) == ("sms_reply", True, "ignore", False)
    assert a.key == action_key("netsapiens:message:a1", "a") == "netsapiens:message:a1:a"
    assert a.phone == "+15551230000"
    assert a.conversation == "sess-1"
    assert not plan.ignored and b.sms is None and b.ticket is None


@pytest.mark.parametrize(
    ("changes", "conversation"),
    [
        ({}, "sess-1"),
        ({"session_id": None}, "+15559870000|+15551230000"),
        ({"session_id": None, "to_number": None}, None),
    ],
)
def test_conversation(changes: dict[str, Any], conversation: str | None) -> None:
    plan = ruleset(rule("a")).evaluate(event(**changes), contact=None, now=NOW)
    assert plan.actions[0].conversation == conversation


def test_an_ignore_rule_alone_leaves_the_event_ignored() -> None:
    plan = ruleset(rule("stop", match={"body": "(?i)^stop$"}), sms("reply")).evaluate(
        event(body="STOP"), contact=None, now=NOW
    )
    assert plan.matched == ["stop"] and plan.ignored
    assert [a.kind for a in plan.actions] == ["ignore"]


def test_explain_says_why() -> None:
    rules = ruleset(
        rule("off", enabled=False),
        rule("calls", on="call.*"),
        rule("stop", match={"body": "^stop$"}),
        rule("nobody", match={"to": "x"}),
        rule("late", when="not business_hours"),
        sms("reply"),
        rule("after"),
    )
    plan, traces = rules.explain(event(to_number=None), contact=None, now=NOW)
    assert plan.matched == ["reply"]
    assert [(t.rule, t.outcome) for t in traces] == [
        ("off", "disabled"),
        ("calls", "kind"),
        ("stop", "match"),
        ("nobody", "match"),
        ("late", "when"),
        ("reply", "acted"),
        ("after", "not reached"),
    ]
    assert traces[2].detail == "body 'balance?' does not match"
    assert traces[3].detail == "to is empty"


def test_cooldown_is_exposed_not_applied() -> None:
    rules = ruleset(sms("a", cooldown="10m"), rule("b"))
    assert rules.cooldown("a") == 600.0 and rules.cooldown("b") is None
    for _ in range(3):  # the engine keeps no state: the dispatcher applies cooldowns
        assert ruleset(sms("a", cooldown="10m")).evaluate(event(), contact=None, now=NOW).matched
    assert [r.name for r in rules] == ["a", "b"] and len(rules) == 2


def test_the_context_is_not_mutated_between_rules() -> None:
    # The immutable sandbox: a template cannot change the record the next rule reads.
    rules = ruleset(
        sms("a", text="{{ client.update({'first_name': 'Eve'}) }}", **{"continue": True}),
        sms("b", text="Hi {{ client.first_name }}"),
    )
    who = contact()
    plan = rules.evaluate(event(), contact=who, now=NOW)
    assert plan.actions[0].error is not None and "not allowed" in plan.actions[0].error
    assert plan.actions[1].sms is not None and plan.actions[1].sms.text == "Hi Ada"
    assert who.data["first_name"] == "Ada"


def test_a_pattern_that_backtracks_is_stopped_and_its_action_is_dead() -> None:
    """Found by probing: with `re`, a pattern that backtracks ran for more than 30 s on a short
    SMS, on the event loop. The search now stops at MATCH_TIMEOUT, that rule's action carries
    the reason (the dispatcher records it dead), and `continue` goes on to the next rule."""
    rules = ruleset(
        sms("greedy", match={"body": r"^(a|aa)+$"}, **{"continue": True}),
        sms("after"),
    )
    started = time.perf_counter()
    plan, traces = rules.explain(event(body="a" * 60 + "!"), contact=None, now=NOW)
    assert time.perf_counter() - started < 5 * MATCH_TIMEOUT + 1
    greedy, after = plan.actions
    assert greedy.error is not None and "took over" in greedy.error and "backtracks" in greedy.error
    assert after.error is None and plan.matched == ["greedy", "after"]
    assert [(t.rule, t.outcome) for t in traces] == [("greedy", "error"), ("after", "acted")]
    # The same pattern on a text it does not backtrack on matches as `re` would.
    plan = rules.evaluate(event(body="aaaa"), contact=None, now=NOW)
    assert plan.actions[0].error is None and plan.matched == ["greedy", "after"]
