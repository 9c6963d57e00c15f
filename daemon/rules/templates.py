"""A rule's templates, compiled once, rendered per event with bounded output.

Compiled in the environment of `daemon.templating` (the same one the config load checks them
in). Every failure while rendering or evaluating — an undefined value rendered, a sandbox
refusal, a `TypeError` or `ZeroDivisionError` in an expression, output over its bound —
becomes `RenderError`, whose message is the reason recorded on the dead action:

    text: undefined value: 'client' is undefined
    ticket.summary: not allowed: access to attribute '__class__' of 'str' object is unsafe.
    when: ZeroDivisionError: division by zero
    text: 1734 characters after rendering; at most 1600
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError

from daemon.errors import RuleError
from daemon.templating import FIELD_MAX_CHARS, compile_template, compile_when


class RenderError(RuleError):
    """A template or `when` failed for one event; the message is the recorded reason."""


def reason(where: str, exc: BaseException) -> str:
    """`where: what went wrong`, in words an operator can act on."""
    if isinstance(exc, SecurityError):
        kind = "not allowed"
    elif isinstance(exc, jinja2.UndefinedError):
        kind = "undefined value"
    elif isinstance(exc, RecursionError):
        return f"{where}: nested too deeply"
    else:
        kind = type(exc).__name__
    text = str(exc).strip() or kind
    return f"{where}: {kind}: {text}" if text != kind else f"{where}: {kind}"


@dataclass(frozen=True)
class Text:
    """One string template (`text`, a ticket field) and the most characters it may render to."""

    where: str  # `text`, `ticket.summary`: names it in error reasons
    template: jinja2.Template
    limit: int

    def render(self, ctx: Mapping[str, Any]) -> str:
        parts: list[str] = []
        size = 0
        try:
            # Streamed, so a loop that would print megabytes stops at the bound.
            for chunk in self.template.generate(ctx):
                size += len(chunk)
                if size > self.limit:
                    raise RenderError(
                        f"{self.where}: more than {self.limit} characters after rendering"
                    )
                parts.append(chunk)
        except RenderError:
            raise
        except Exception as exc:  # whatever a template can raise: this action fails, not us
            raise RenderError(reason(self.where, exc)) from exc
        return "".join(parts)


@dataclass(frozen=True)
class When:
    """A rule's `when`: one expression; its truth decides whether the rule acts."""

    expression: TemplateExpression

    def __call__(self, ctx: Mapping[str, Any]) -> bool:
        try:
            return bool(self.expression(**ctx))
        except Exception as exc:  # as for Text.render: this rule fails, not the dispatcher
            raise RenderError(reason("when", exc)) from exc


# A compiled `ticket` table: strings became `Text`; numbers, booleans and nested tables stay.
Tree = Text | dict[str, "Tree"] | list["Tree"] | str | int | float | bool | None


def compile_text(env: jinja2.Environment, where: str, source: str, limit: int) -> Text:
    return Text(where, compile_template(env, source), limit)


def compile_when_expression(env: jinja2.Environment, source: str) -> When:
    return When(compile_when(env, source))


def compile_tree(env: jinja2.Environment, where: str, node: Any) -> Tree:
    """Every string at any depth of a `ticket` table becomes a template."""
    if isinstance(node, str):
        return compile_text(env, where, node, FIELD_MAX_CHARS)
    if isinstance(node, Mapping):
        return {str(k): compile_tree(env, f"{where}.{k}", v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [compile_tree(env, f"{where}[{i}]", v) for i, v in enumerate(node)]
    if node is None or isinstance(node, bool | int | float):
        return node
    raise TypeError(f"{where}: {type(node).__name__} values cannot be sent (use a string)")


def render_tree(node: Tree, ctx: Mapping[str, Any]) -> Any:
    """The rendered copy of a compiled tree (non-string values kept as they are)."""
    if isinstance(node, Text):
        return node.render(ctx)
    if isinstance(node, dict):
        return {k: render_tree(v, ctx) for k, v in node.items()}
    if isinstance(node, list):
        return [render_tree(v, ctx) for v in node]
    return node
