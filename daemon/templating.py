"""The one Jinja environment rule templates are compiled in, for the config and the rules.

A bottom-layer module (it imports nothing of ours): `daemon.config` compiles every template of
`[[rules]]` here at load, so a typo or an unknown filter fails `check-config`, and
`daemon.rules` compiles and renders the same sources in the same environment at run time. One
definition, so what the load accepts is exactly what the rules can render.

The environment is Jinja2's sandbox in its immutable form: no attributes starting with `_`
(no `''.__class__.__mro__` walks), no unsafe callables, and no method that would change a list
or dict of the context (a template cannot alter the client record another rule reads next).
Output is text for SMS and tickets, not HTML, so there is no autoescaping. Two things differ
from stock Jinja, and both are there so that bad data never goes out as a half-rendered SMS:

- `RenderUndefined`: a missing value may be chained (`client.first_name` with no client) and
  given a fallback (`| default('there')`, `or 'there'`), but *rendering* it is an error. `Hi
  {{ client.first_name }}` with no client fails the action instead of texting "Hi ".
- `None` renders as the empty string (not the word "None"); a field that is there but empty
  is data, not a mistake.

Repetition and powers that would build huge values (`'x' * 10**9`, `10 ** 10**9`) raise
`SecurityError`; `range` is already capped by the sandbox.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Bounds on what one rendering may produce (`daemon.rules.templates` enforces them).
SMS_MAX_CHARS = 1600  # ten concatenated GSM segments; carriers refuse or split beyond this
FIELD_MAX_CHARS = 64 * 1024  # one ticket field (summary, details, a note)
# A value built by `*` (a string or list repeated) or `**` (an integer power) beyond this fails.
MAX_BUILT_LENGTH = FIELD_MAX_CHARS
MAX_POWER_BITS = 4096

__all__ = [
    "FIELD_MAX_CHARS",
    "SMS_MAX_CHARS",
    "RenderUndefined",
    "TemplateProblem",
    "compile_template",
    "compile_when",
    "make_environment",
    "when_expression",
]


class TemplateProblem(ValueError):
    """A template that cannot be compiled; the message says why, for a config error line."""


class RenderUndefined(jinja2.ChainableUndefined):
    """Undefined that chains and yields to `default`, and fails when rendered."""

    __slots__ = ()

    def __str__(self) -> str:
        self._fail_with_undefined_error()


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


class RuleEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus bounds on `*` and `**`."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _sized(seq)
                if size is not None and isinstance(times, int) and size * times > MAX_BUILT_LENGTH:
                    raise SecurityError(
                        f"repetition would build {size * times} items (at most {MAX_BUILT_LENGTH})"
                    )
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and right * abs(left).bit_length() > MAX_POWER_BITS:
                raise SecurityError(f"power too large (over {MAX_POWER_BITS} bits)")
        return super().call_binop(context, operator, left, right)


def make_environment() -> jinja2.Environment:
    """A fresh environment for rule templates (one per compiled rule set)."""
    env = RuleEnvironment(
        autoescape=False,
        undefined=RenderUndefined,
        finalize=_finalize,
    )
    # Helpers that only generate text or objects nobody needs in an SMS or a ticket.
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    return env


def _problem(exc: BaseException) -> TemplateProblem:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        line = f" (line {exc.lineno})" if exc.lineno else ""
        return TemplateProblem(f"invalid template: {exc.message}{line}")
    if isinstance(exc, RecursionError | MemoryError):
        return TemplateProblem("invalid template: nested too deeply")
    return TemplateProblem(f"invalid template: {type(exc).__name__}: {exc}")


def compile_template(env: jinja2.Environment, source: str) -> jinja2.Template:
    """Parse and compile `source`; `TemplateProblem` names the first problem."""
    try:
        _check_names(env, source)
        return env.from_string(source)
    except (jinja2.TemplateError, RecursionError, MemoryError, SyntaxError, ValueError) as exc:
        raise _problem(exc) from None


def _check_names(env: jinja2.Environment, source: str) -> None:
    """Every filter and test `source` names exists. Jinja checks them when it compiles — except
    inside a condition (`{% if %}`, `x if c else y`), where it leaves them to the render: such
    a template loaded, and every action it rendered was dead (found by probing)."""
    from jinja2 import nodes

    tree = env.parse(source)
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = env.filters if isinstance(node, nodes.Filter) else env.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            raise jinja2.TemplateAssertionError(
                f"No {kind} named {node.name!r}.", node.lineno, None, None
            )


def when_expression(source: str) -> str:
    """The expression inside a `when`: `"not business_hours"` as written, and
    `"{{ not business_hours }}"` without its braces (with or without whitespace control)."""
    text = source.strip()
    if text.startswith("{{") and text.endswith("}}") and len(text) >= 4:
        inner = text[2:-2]
        inner = inner[1:] if inner[:1] in "-+" and inner else inner
        inner = inner[:-1] if inner[-1:] in "-+" and inner else inner
        return inner.strip()
    return text


def compile_when(env: jinja2.Environment, source: str) -> TemplateExpression:
    """Compile a rule's `when`: exactly one Jinja expression."""
    expression = when_expression(source)
    if not expression:
        raise TemplateProblem(
            'invalid template: `when` is empty; write one expression, e.g. "not business_hours"'
        )
    try:
        _check_names(env, "{{ " + expression + " }}")
        return env.compile_expression(expression, undefined_to_none=False)
    except (jinja2.TemplateError, RecursionError, MemoryError, SyntaxError, ValueError) as exc:
        problem = _problem(exc)
        raise TemplateProblem(
            f"{problem}; `when` is one Jinja expression, e.g. "
            '"not business_hours" or "{{ event.body is not none }}"'
        ) from None
