"""Rendering: undefined values, the sandbox, size bounds, and errors that become dead reasons."""

from __future__ import annotations

import pytest

from daemon.rules.engine import NO_NUMBER
from daemon.templating import SMS_MAX_CHARS, make_environment, when_expression
from tests.rules.util import NOW, contact, event, rule, ruleset, sms, ticket

RENDERS = [
    ("Hi {{ client.first_name }}", True, "Hi Ada"),
    ("Hi {{ client.first_name | default('there') }}", False, "Hi there"),
    ("Hi {{ client.first_name | default('there') }}", True, "Hi Ada"),
    ("Hi {{ client.nickname | default('there') }}", True, "Hi there"),
    ("Hi {{ client.first_name or 'there' }}", False, "Hi there"),
    ("Hi {{ client.profile.name.first | default('you') }}", False, "Hi you"),  # chains
    ("Hi {{ contact.name }}", True, "Hi Ada Lovelace"),
    ("[{{ client.empty }}]", True, "[]"),  # None prints as nothing
    ("{{ event.from }} → {{ event.to }}", False, "+15551230000 → +15559870000"),
    ("{{ event.raw['from-number'] }}", False, "15551230000"),
    ("{{ now.strftime('%H:%M %Z') }}", False, "10:00 EST"),
    ("{% if business_hours %}open{% else %}closed{% endif %}", False, "open"),
    ("{{ '%.2f' | format(client.balance | float) }}", True, "12.50"),
    ("<b>{{ '<&>' }}</b>", False, "<b><&></b>"),  # no HTML escaping
    ("  padded \n", False, "padded"),  # SMS text is trimmed
    ("{{ range(3) | join(',') }}", False, "0,1,2"),
]


@pytest.mark.parametrize(("source", "with_contact", "expected"), RENDERS)
def test_sms_text_renders(source: str, with_contact: bool, expected: str) -> None:
    who = contact(empty=None) if with_contact else None
    plan = ruleset(sms("a", text=source)).evaluate(event(), contact=who, now=NOW)
    (action,) = plan.actions
    assert action.error is None, action.error
    assert action.sms is not None and action.sms.text == expected


ERRORS = [
    # (template, contact?, the dead action's reason)
    ("{{ client.balance }}", False, "text: undefined value: 'client' is undefined"),
    ("{{ client.nothing }}", True, "text: undefined value: 'dict object' has no attribute"),
    ("{{ client.balance | upper }}", False, "text: undefined value: 'client' is undefined"),
    ("{{ client.balance + 1 }}", False, "text: undefined value"),
    ("{{ 1 / 0 }}", False, "text: ZeroDivisionError: division by zero"),
    ("{{ 'a' + 1 }}", False, "text: TypeError"),
    ("{{ event.body | int(strict) }}", False, "text: undefined value: 'strict' is undefined"),
    ("{{ ' ' }}", False, "text: empty after rendering (nothing to send)"),
    ("{{ 'x' * 1601 }}", False, "text: more than 1600 characters after rendering"),
    ("{% for i in range(2000) %}x{% endfor %}", False, "text: more than 1600 characters"),
]


@pytest.mark.parametrize(("source", "with_contact", "reason"), ERRORS)
def test_template_errors_become_dead_reasons(source: str, with_contact: bool, reason: str) -> None:
    rules = ruleset(sms("bad", text=source), rule("next"))
    plan = rules.evaluate(event(), contact=contact() if with_contact else None, now=NOW)
    (action,) = plan.actions  # the failing rule still "acted": the next one is not tried
    assert plan.matched == ["bad"]
    assert action.error is not None and action.error.startswith(reason), action.error
    assert action.sms is None and action.kind == "sms_reply"


ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ event.__class__.__init__.__globals__ }}",
    "{{ range.__init__.__globals__['os'] }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ now.__class__.__subclasses__() }}",
    "{{ client.items.__self__ }}",
    "{{ client.__getitem__('first_name') }}",
    "{{ (client | attr('__class__')) }}",
    "{{ client.update(first_name='x') }}",
    "{{ event.raw.pop('text') }}",
    "{{ ''.format.__globals__ }}",
    "{{ '{0.__class__}'.format(client) }}",
    "{{ 'x' * 100000 }}",
    "{{ 10 ** 100000 }}",
    "{{ [1] * 100000 }}",
    "{% for x in range(10 ** 9) %}{% endfor %}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_refused(source: str) -> None:
    plan = ruleset(sms("a", text=source)).evaluate(event(), contact=contact(), now=NOW)
    (action,) = plan.actions
    assert action.sms is None
    assert action.error is not None and action.error.startswith("text: "), action.error
    refusals = ("text: not allowed: ", "text: undefined value: ", "text: OverflowError: Range")
    assert action.error.startswith(refusals), action.error
    assert "uid=" not in action.error and "<module" not in action.error


def test_sms_bound_is_exact() -> None:
    ok = ruleset(sms("a", text=f"{{{{ 'x' * {SMS_MAX_CHARS} }}}}"))
    (action,) = ok.evaluate(event(), contact=None, now=NOW).actions
    assert action.sms is not None and len(action.sms.text) == SMS_MAX_CHARS


def test_ticket_field_bound() -> None:
    big = ruleset(ticket("t", {"summary": "s", "details": "{{ 'x' * 60000 }}{{ 'y' * 6000 }}"}))
    (action,) = big.evaluate(event(), contact=None, now=NOW).actions
    assert action.error == "ticket.details: more than 65536 characters after rendering"


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("1 / 0", "when: ZeroDivisionError: division by zero"),
        ("client.balance > 1", "when: undefined value: 'client' is undefined"),
        ("''.__class__.__mro__", None),  # refused attribute: undefined, so false, not an escape
        ("event.raw.clear()", "when: not allowed"),
    ],
)
def test_when_errors(when: str, reason: str | None) -> None:
    rules = ruleset(sms("a", when=when), rule("b"))
    plan = rules.evaluate(event(), contact=None, now=NOW)
    if reason is None:
        assert plan.matched == ["b"]
        return
    (action,) = plan.actions  # a failing `when` counts as acting: "b" is not tried
    assert plan.matched == ["a"] and action.kind == "sms_reply"
    assert action.error is not None and action.error.startswith(reason), action.error


def test_a_failing_when_with_continue_lets_the_next_rule_act() -> None:
    rules = ruleset(sms("a", when="1 / 0", **{"continue": True}), rule("b"))
    plan = rules.evaluate(event(), contact=None, now=NOW)
    assert plan.matched == ["a", "b"]
    assert plan.actions[0].error and plan.actions[1].error is None


def test_one_failing_action_does_not_spoil_the_others() -> None:
    rules = ruleset(
        sms("broken", text="{{ client.balance }}", **{"continue": True}),
        ticket("ticket", {"summary": "SMS from {{ event.from }}"}),
    )
    plan = rules.evaluate(event(), contact=None, now=NOW)
    broken, ok = plan.actions
    assert broken.error and ok.error is None and ok.ticket is not None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"from_number": None, "raw": {}}, f"{NO_NUMBER}: the event has no sender phone number"),
        ({"to_number": None, "raw": {"from-number": "1555"}}, f"{NO_NUMBER} from"),
    ],
)
def test_nobody_to_reply_to(changes: dict[str, object], reason: str) -> None:
    (action,) = ruleset(sms("a")).evaluate(event(**changes), contact=None, now=NOW).actions
    assert action.error is not None and action.error.startswith(reason)


@pytest.mark.parametrize(
    ("source", "expression"),
    [
        ("not business_hours", "not business_hours"),
        ("{{ not business_hours }}", "not business_hours"),
        ("  {{-not business_hours-}} ", "not business_hours"),
        ("{{+ x +}}", "x"),
        ("x == '{{'", "x == '{{'"),
    ],
)
def test_when_expression(source: str, expression: str) -> None:
    assert when_expression(source) == expression


def test_environment() -> None:
    env = make_environment()
    assert env.autoescape is False
    assert {"range", "dict", "namespace"} <= set(env.globals)
    assert not {"lipsum", "cycler", "joiner"} & set(env.globals)
