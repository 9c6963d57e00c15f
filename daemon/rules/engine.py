"""Rules: which of the `[[rules]]` act on an event, and the requests they would send. Pure.

`RuleSet.compile` turns the validated `Rule`s into compiled regexes and templates once, so a
config reload swaps one object; `RuleSet.evaluate(event, contact=..., now=...)` returns the
`Plan` the dispatcher stores with the event before anything is sent. No I/O, no clock, no
database: the caller looks the contact up and says what time it is. Cooldowns and the loop
guard need the database, so the dispatcher applies them to the plan (`RuleSet.cooldown`).

Semantics, in file order:

- a disabled rule is skipped; `on` is an event kind or a glob (`eventkinds.kind_matches`);
- `match`: every key must match the event field with a search (`daemon.rules.patterns`: `re`'s
  syntax, with a time limit; a list: any of its patterns); a field that is None never matches;
  numbers (`duration`) are matched as text;
- `when`: one Jinja expression, truthy to act;
- the first rule that gets this far acts, and evaluation stops unless it says `continue`.
  Every rule that acts is in `Plan.matched` and yields one `PlannedAction`.
- A `when` that fails (an error, not false) counts as acting: a dead action records the reason
  and, as for a match, the rules after it are tried only if it says `continue`. So a broken
  `when` never silently hands the event to a later catch-all rule.
- A template that fails, a rendered text over its bound, or an SMS with nobody to send to gives
  an action with `error` set: the dispatcher records it `dead` at once, with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2

from daemon.config.dispatch import BusinessHours
from daemon.config.models import Rule
from daemon.errors import ConfigError, ConfigProblem
from daemon.eventkinds import kind_matches
from daemon.rules.context import build_context
from daemon.rules.patterns import Pattern, PatternError, PatternTooSlow, compile_pattern, found
from daemon.rules.plan import Plan, PlannedAction, SmsRequest, TicketRequest, action_key
from daemon.rules.templates import (
    RenderError,
    Text,
    Tree,
    When,
    compile_text,
    compile_tree,
    compile_when_expression,
    render_tree,
)
from daemon.store.contacts import Contact
from daemon.templating import SMS_MAX_CHARS, TemplateProblem, make_environment
from daemon.webhooks.event import Event

# Why a rule did or did not act on one event (`daemon rules test` prints these).
Outcome = Literal["acted", "error", "disabled", "kind", "match", "when", "not reached"]
NO_NUMBER = "no number to reply to"


@dataclass(frozen=True)
class Trace:
    rule: str
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    patterns: tuple[tuple[str, tuple[Pattern, ...]], ...]
    when: When | None
    text: Text | None
    ticket: Tree | None

    @property
    def name(self) -> str:
        return self.rule.name


def _raw_text(raw: Mapping[str, Any], *keys: str) -> str | None:
    """The first present, non-empty scalar among `keys`, as the PBX spelled it."""
    for key in keys:
        value = raw.get(key)
        if value is None or isinstance(value, dict | list | bool):
            continue
        text = str(value).strip()
        if text:
            return text
    return None


def conversation(event: Event) -> str | None:
    """The PBX's message session, else `<our number>|<their number>` (E.164)."""
    if event.session_id:
        return event.session_id
    if event.to_number and event.from_number:
        return f"{event.to_number}|{event.from_number}"
    return None


def halo_client_id(contact: Contact | None) -> Any:
    """The Halo client id behind a contact synced from a Halo table (`halo_*`): the record's
    `client_id` (a Halo user or contact) or else its `id` (a Halo client); None otherwise."""
    if contact is None or not contact.table.startswith("halo_"):
        return None
    data = contact.data
    for key in ("client_id", "id"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict | list | bool) and value != "":
            return value
    return None


def _field_text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _failed_match(compiled: CompiledRule, fields: Mapping[str, Any]) -> str | None:
    """Why `match` fails for these event fields, or None when every key matches."""
    for key, patterns in compiled.patterns:
        value = _field_text(fields.get(key))
        if value is None:
            return f"{key} is empty"
        if not any(found(p, value) for p in patterns):
            shown = value if len(value) <= 60 else value[:59] + "…"
            return f"{key} {shown!r} does not match"
    return None


class RuleSet:
    """The compiled `[[rules]]` of one config; immutable, safe to share between tasks."""

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        *,
        zone: ZoneInfo,
        business_hours: BusinessHours | None,
    ) -> None:
        self._rules = tuple(rules)
        self._by_name = {r.name: r for r in self._rules}
        self.zone = zone
        self.business_hours = business_hours

    @classmethod
    def compile(
        cls,
        rules: Sequence[Rule],
        *,
        timezone: str,
        business_hours: BusinessHours | None,
    ) -> RuleSet:
        """Compile every regex and template; `ConfigError` lists each that fails, by key.

        The config load has checked the same things (`check_rule_syntax`), so this fails only
        for rules built in code."""
        env = make_environment()
        problems: list[ConfigProblem] = []
        compiled: list[CompiledRule] = []
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            path = f"rules[{i}]"
            if rule.name in seen:
                problems.append(ConfigProblem(f"{path}.name", f"duplicate name {rule.name!r}"))
            seen.add(rule.name)
            try:
                compiled.append(_compile_rule(env, rule))
            except _RuleProblem as exc:
                problems.append(ConfigProblem(f"{path}.{exc.where}", exc.message))
        if problems:
            raise ConfigError(problems)
        try:
            zone = ZoneInfo(timezone)
        except (LookupError, ValueError, OSError) as exc:
            raise ConfigError([ConfigProblem("daemon.timezone", str(exc))]) from None
        return cls(compiled, zone=zone, business_hours=business_hours)

    # -- what the dispatcher and `daemon status` ask about ---------------------------------

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[Rule]:
        return (r.rule for r in self._rules)

    def rule(self, name: str) -> Rule:
        return self._by_name[name].rule

    def cooldown(self, name: str) -> float | None:
        """The rule's `cooldown` in seconds (per sender and rule), or None."""
        return self._by_name[name].rule.cooldown

    def context(self, event: Event, *, contact: Contact | None, now: datetime) -> dict[str, Any]:
        """The template context for `event` (what `when` and every template see)."""
        return build_context(
            event, contact=contact, now=now, zone=self.zone, hours=self.business_hours
        )

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, event: Event, *, contact: Contact | None, now: datetime) -> Plan:
        """The plan for `event`: the rules that act, each with its rendered request."""
        return self.explain(event, contact=contact, now=now)[0]

    def explain(
        self, event: Event, *, contact: Contact | None, now: datetime
    ) -> tuple[Plan, list[Trace]]:
        """`evaluate`, plus why each rule did or did not act (for `daemon rules test`)."""
        ctx = self.context(event, contact=contact, now=now)
        fields: Mapping[str, Any] = ctx["event"]
        actions: list[PlannedAction] = []
        matched: list[str] = []
        traces: list[Trace] = []
        stopped = False
        for compiled in self._rules:
            name = compiled.name
            if stopped:
                traces.append(Trace(name, "not reached", "an earlier rule acted"))
                continue
            rule = compiled.rule
            if not rule.enabled:
                traces.append(Trace(name, "disabled"))
                continue
            if not kind_matches(rule.on, event.kind):
                traces.append(Trace(name, "kind", f"on = {rule.on!r}, event is {event.kind!r}"))
                continue
            try:
                why = _failed_match(compiled, fields)
            except PatternTooSlow as exc:  # a rule error: that action is dead, with the reason
                matched.append(name)
                actions.append(_action(compiled, event, error=f"match: {exc}"))
                traces.append(Trace(name, "error", f"match: {exc}"))
                stopped = not rule.continue_
                continue
            if why is not None:
                traces.append(Trace(name, "match", why))
                continue
            if compiled.when is not None:
                try:
                    ok = compiled.when(ctx)
                except RenderError as exc:
                    matched.append(name)
                    actions.append(_action(compiled, event, error=str(exc)))
                    traces.append(Trace(name, "error", str(exc)))
                    stopped = not rule.continue_
                    continue
                if not ok:
                    traces.append(Trace(name, "when", f"when {rule.when!r} is false"))
                    continue
            matched.append(name)
            action = _act(compiled, event, contact, ctx)
            actions.append(action)
            if action.error is not None:
                traces.append(Trace(name, "error", action.error))
            else:
                traces.append(Trace(name, "acted", rule.action))
            stopped = not rule.continue_
        return Plan(actions=actions, matched=matched), traces


class _RuleProblem(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def _compile_rule(env: jinja2.Environment, rule: Rule) -> CompiledRule:
    patterns: list[tuple[str, tuple[Pattern, ...]]] = []
    for key, value in rule.match.items():
        sources = [value] if isinstance(value, str) else list(value)
        try:
            patterns.append((key, tuple(compile_pattern(s) for s in sources)))
        except (PatternError, OverflowError, RecursionError) as exc:
            raise _RuleProblem(f"match.{key}", f"invalid regular expression: {exc}") from None
    try:
        when = compile_when_expression(env, rule.when) if rule.when is not None else None
    except TemplateProblem as exc:
        raise _RuleProblem("when", str(exc)) from None
    try:
        text = compile_text(env, "text", rule.text, SMS_MAX_CHARS) if rule.text else None
    except TemplateProblem as exc:
        raise _RuleProblem("text", str(exc)) from None
    try:
        ticket = compile_tree(env, "ticket", rule.ticket) if rule.ticket else None
    except TemplateProblem as exc:
        raise _RuleProblem("ticket", str(exc)) from None
    except TypeError as exc:
        raise _RuleProblem("ticket", str(exc)) from None
    return CompiledRule(rule, tuple(patterns), when, text, ticket)


def _action(compiled: CompiledRule, event: Event, **request: Any) -> PlannedAction:
    rule = compiled.rule
    return PlannedAction(
        rule=rule.name,
        kind=rule.action,
        key=action_key(event.dedupe_key, rule.name),
        phone=event.from_number,
        conversation=conversation(event),
        auto_reply=rule.action == "sms_reply",
        **request,
    )


def _act(
    compiled: CompiledRule, event: Event, contact: Contact | None, ctx: Mapping[str, Any]
) -> PlannedAction:
    try:
        if compiled.rule.action == "sms_reply":
            return _action(compiled, event, sms=sms_request(compiled, event, ctx))
        if compiled.rule.action == "halo_ticket":
            return _action(compiled, event, ticket=ticket_request(compiled, event, contact, ctx))
    except RenderError as exc:
        return _action(compiled, event, error=str(exc))
    return _action(compiled, event)  # ignore: recorded, nothing sent


def sms_request(compiled: CompiledRule, event: Event, ctx: Mapping[str, Any]) -> SmsRequest:
    """The reply: from the number that received the message, to its sender, in the PBX's own
    spelling of both (the raw payload's), in the same message session."""
    ours = _raw_text(event.raw, "dialed", "terminating-number") or event.to_number
    theirs = _raw_text(event.raw, "from-number") or event.from_number
    if event.from_number is None or theirs is None:
        raise RenderError(f"{NO_NUMBER}: the event has no sender phone number")
    if ours is None:
        raise RenderError(f"{NO_NUMBER} from: the event has no receiving number")
    assert compiled.text is not None  # the Rule model requires `text` for sms_reply
    text = compiled.text.render(ctx).strip()
    if not text:
        raise RenderError("text: empty after rendering (nothing to send)")
    return SmsRequest(
        from_number=ours,
        to_number=theirs,
        text=text,
        session_id=event.session_id,
        domain=event.domain,
        user=event.user,
    )


def ticket_request(
    compiled: CompiledRule, event: Event, contact: Contact | None, ctx: Mapping[str, Any]
) -> TicketRequest:
    """The ticket from the rendered `ticket` table. `note` (when present) is taken out of the
    ticket body: it is the text added to an open ticket when threading; else `details`, else
    the event's body. `client_id` comes from a Halo contact when the rule does not set it."""
    rendered = render_tree(compiled.ticket, ctx)
    body: dict[str, Any] = dict(rendered) if isinstance(rendered, dict) else {}
    if "note" in body:
        note = _field_text(body.pop("note")) or ""
    elif isinstance(body.get("details"), str):
        note = body["details"]
    else:
        note = event.body or ""
    if "client_id" not in body:
        client_id = halo_client_id(contact)
        if client_id is not None:
            body["client_id"] = client_id
    return TicketRequest(
        ticket=body,
        thread=compiled.rule.thread,
        max_notes=compiled.rule.max_notes,
        note=note,
    )
