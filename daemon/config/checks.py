"""Turning validation failures into key-path problems, and the checks that span sections.

Split from `load` so the reading order there stays: find, resolve, validate, cross-check.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from daemon.config.models import (
    RESELLER_ALIASES,
    RESELLER_RESOURCES,
    Rule,
    SyncJob,
    WebhooksSettings,
)
from daemon.config.secrets import join
from daemon.config.upstreams import UpstreamSettings
from daemon.errors import ConfigProblem
from daemon.eventkinds import EVENT_FIELDS, EVENT_KINDS, pattern_is_known

if TYPE_CHECKING:
    import jinja2

M = TypeVar("M", bound=BaseModel)
_UNION_TAG = re.compile(
    r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|"
    r"(function-(after|before|wrap|plain)|lax-or-strict|json-or-python|is-instance|union|"
    r"tagged-union|nullable|constrained-\w+)(\[.*\])?)$"
)


class Collector:
    """Gathers problems; drops those at paths whose reference already failed."""

    def __init__(self, failed: set[str]) -> None:
        self.failed = failed
        self.problems: list[ConfigProblem] = []

    def add(self, path: str, message: str) -> None:
        if path in self.failed:
            return
        if not any(p.path == path and p.message == message for p in self.problems):
            self.problems.append(ConfigProblem(path, message))

    def validate(self, model: type[M], data: Any, path: str, ctx: dict[str, Any]) -> M | None:
        try:
            return model.model_validate(data, context=ctx)
        except ValidationError as exc:
            for err_path, message in _problems(exc, path):
                self.add(err_path, message)
            return None


def _problems(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    """pydantic errors → (dotted key path, readable message)."""
    out: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False, include_input=False):
        path = prefix
        for part in err["loc"]:
            if isinstance(part, str) and _UNION_TAG.match(part):
                continue
            path = join(path, part)
        ctx = err.get("ctx") or {}
        if err["type"] == "config_field":
            path = join(path, ctx["field"])
        message = _message(err["type"], err["msg"])
        out.setdefault(path, [])
        if message not in out[path]:
            out[path].append(message)
    # A union field reports one error per alternative; one line saying "either" reads better.
    return [(p, _either(msgs)) for p, msgs in out.items()]


def _either(messages: list[str]) -> str:
    head, *rest = messages
    return " or ".join([head, *(m.removeprefix("Input should be ") for m in rest)])


def _message(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _kind_of(
    c: Collector,
    upstreams: Mapping[str, UpstreamSettings],
    known: set[str],
    name: str,
    path: str,
    kinds: Iterable[str],
) -> str | None:
    """The kind of upstream `name`, reporting at `path` when it is missing or of a wrong kind."""
    kinds = tuple(kinds)
    if name not in known:
        c.add(path, f"no upstream named {name!r} (defined: {', '.join(sorted(known)) or 'none'})")
        return None
    up = upstreams.get(name)
    if up is None:
        return None  # its own table is invalid and already reported
    if kinds and up.kind not in kinds:
        c.add(path, f"upstream {name!r} is of kind {up.kind!r}; expected {' or '.join(kinds)}")
        return None
    return up.kind


def _first_of(upstreams: Mapping[str, UpstreamSettings], kind: str) -> str | None:
    return next((n for n, u in upstreams.items() if u.kind == kind), None)


def check_upstream_refs(
    c: Collector,
    upstreams: Mapping[str, UpstreamSettings],
    known: set[str],
    webhooks: WebhooksSettings | None,
    jobs: list[SyncJob | None],
    rules: list[Rule | None],
) -> None:
    if webhooks is not None and webhooks.netsapiens is not None:
        _kind_of(
            c,
            upstreams,
            known,
            webhooks.netsapiens.upstream,
            "webhooks.netsapiens.upstream",
            ["netsapiens"],
        )
    for i, job in enumerate(jobs):
        if job is None:
            continue
        p = f"sync[{i}]"
        kind = _kind_of(c, upstreams, known, job.upstream, f"{p}.upstream", [])
        if kind is None:
            continue
        if job.report is not None and kind != "blesta":
            c.add(
                f"{p}.report",
                f"reports are a Blesta feature; upstream {job.upstream!r} is {kind!r}",
            )
        if kind == "blesta" and job.report is None and not job.method.startswith("getList"):
            # The walk pages the method with `page` and counts with getListCount; an unpaged
            # method (getAll) answers the same list for every page, and the run fails every
            # time on the repeat (found by probing).
            c.add(
                f"{p}.method",
                f"a sync job walks a paged list method (getList, getListBy...), not "
                f"{job.method!r}; the daemon reads every page itself",
            )
        if kind == "blesta_reseller" and job.resource not in (
            None,
            *RESELLER_RESOURCES,
            *RESELLER_ALIASES,
        ):
            c.add(
                f"{p}.resource",
                f"unknown reseller resource {job.resource!r}; expected one "
                f"of: {', '.join(RESELLER_RESOURCES)} (or the aliases "
                f"{', '.join(RESELLER_ALIASES)})",
            )
    needs = {
        "sms_reply": ("sms_upstream", "netsapiens"),
        "halo_ticket": ("halo_upstream", "halo"),
    }
    for i, rule in enumerate(rules):
        if rule is None:
            continue
        for field_name, kind in (("sms_upstream", "netsapiens"), ("halo_upstream", "halo")):
            name = getattr(rule, field_name)
            if name is not None:
                _kind_of(c, upstreams, known, name, f"rules[{i}].{field_name}", [kind])
        if rule.action in needs and rule.enabled:
            field_name, kind = needs[rule.action]
            if getattr(rule, field_name) is None and _first_of(upstreams, kind) is None:
                if not any(u not in upstreams for u in known):
                    c.add(
                        f"rules[{i}].action",
                        f"action {rule.action!r} needs a {kind} upstream, and none is configured",
                    )


def check_unique(c: Collector, jobs: list[SyncJob | None], rules: list[Rule | None]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for section, field_name, items in (
        ("sync", "name", jobs),
        ("sync", "table", jobs),
        ("rules", "name", rules),
    ):
        for i, item in enumerate(items):
            if item is None:
                continue
            value = getattr(item, field_name)
            key = (f"{section}.{field_name}", value)
            if key in seen:
                c.add(
                    f"{section}[{i}].{field_name}",
                    f"duplicate {field_name} {value!r} (also {section}[{seen[key]}])",
                )
            else:
                seen[key] = i
    # A report table gets an index `<table>_period`; SQLite keeps index and table names in one
    # namespace, so no other job's table may take that name.
    indexes = {f"{j.table}_period": i for i, j in enumerate(jobs) if j is not None and j.report}
    for i, job in enumerate(jobs):
        if job is not None and job.table in indexes:
            c.add(
                f"sync[{i}].table",
                f"table name {job.table!r} is taken by the period index of "
                f"sync[{indexes[job.table]}]'s report table",
            )


def check_rule_syntax(c: Collector, path: str, rule: Rule) -> None:
    """Check a rule against the event vocabulary and compile every regex and template now, so
    a typo fails the load, not the first event.

    Templates are compiled in the environment the rules render them in
    (`daemon.templating`), so an unknown filter is caught here too, and a `when` must be one
    expression. `on` must be able to match some event kind (`eventkinds.pattern_is_known`)
    and every `match` key must be an event field.
    """
    if not pattern_is_known(rule.on):
        c.add(
            f"{path}.on",
            f"unknown event kind {rule.on!r}: expected one of {', '.join(EVENT_KINDS)}, "
            "a glob over them (message.*) or netsapiens.<model>",
        )
    for key, patterns in rule.match.items():
        _check_match(c, join(path, f"match.{key}"), key, patterns)
    # Templates are compiled only for configs that have rules: jinja2 is a tenth of the
    # import time of a command that only syncs.
    from daemon.templating import TemplateProblem, compile_when, make_environment

    env = make_environment()
    if rule.when is not None:
        try:
            compile_when(env, rule.when)
        except TemplateProblem as exc:
            c.add(f"{path}.when", str(exc))
    if rule.text is not None:
        _compile(c, env, f"{path}.text", rule.text)
        if rule.action != "sms_reply":
            c.add(f"{path}.text", f"only used by action = 'sms_reply', not {rule.action!r}")
    if rule.ticket is not None:
        _walk_templates(c, env, f"{path}.ticket", rule.ticket)
        if rule.action != "halo_ticket":
            c.add(f"{path}.ticket", f"only used by action = 'halo_ticket', not {rule.action!r}")


def _check_match(c: Collector, where: str, key: str, patterns: str | list[str]) -> None:
    # Loaded only for configs with rules, as the templates are.
    from daemon.rules.patterns import PatternError, compile_pattern

    if key not in EVENT_FIELDS:
        c.add(where, f"unknown event field {key!r}: expected one of {', '.join(EVENT_FIELDS)}")
        return
    if isinstance(patterns, list) and not patterns:
        c.add(where, "an empty list never matches: give at least one pattern")
    for j, pattern in enumerate([patterns] if isinstance(patterns, str) else patterns):
        at = where + (f"[{j}]" if not isinstance(patterns, str) else "")
        try:
            compile_pattern(pattern)  # as the rules will run it (daemon.rules.patterns)
        except (PatternError, OverflowError, RecursionError) as exc:
            c.add(at, f"invalid regular expression {pattern!r}: {exc}")


def _walk_templates(c: Collector, env: jinja2.Environment, path: str, node: Any) -> None:
    if isinstance(node, str):
        _compile(c, env, path, node)
    elif isinstance(node, dict):
        for k, v in node.items():
            _walk_templates(c, env, join(path, k), v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk_templates(c, env, join(path, i), v)
    elif isinstance(node, float) and not math.isfinite(node):
        # JSON has no NaN or Infinity: the ticket would go as invalid JSON (found by probing).
        c.add(path, f"{node!r} cannot be sent; JSON has only finite numbers")
    elif node is not None and not isinstance(node, bool | int | float):
        # TOML dates and times: the ticket travels as JSON, which has no such type.
        c.add(path, f"a TOML {type(node).__name__} cannot be sent; write it as a string")


def _compile(c: Collector, env: jinja2.Environment, path: str, source: str) -> None:
    from daemon.templating import TemplateProblem, compile_template

    try:
        compile_template(env, source)
    except TemplateProblem as exc:
        c.add(path, str(exc))


SQLITE_HEADER = b"SQLite format 3\x00"


def database_problem(path: Path) -> str | None:
    """Why `path` cannot be the daemon's SQLite file, or None.

    A missing file is fine (the store creates it and its directory) unless some component of
    its path is an existing non-directory. An existing one must be a regular file that starts
    with SQLite's header: a directory, a device, a FIFO or someone else's file is refused
    before the store opens it. Opened non-blocking, so a FIFO cannot hang the check.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists():
            if parent.parent == parent:
                break
            parent = parent.parent
        if not parent.is_dir():
            return f"cannot be created: {str(parent)!r} is not a directory"
        # Whether the service's user may write there is not judged: check-config often runs
        # as another user (an admin, or before systemd creates StateDirectory=).
        return None
    except (OSError, ValueError) as exc:
        return f"cannot be checked: {getattr(exc, 'strerror', None) or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory; name a file inside it (for example state.db)"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    if st.st_size == 0:
        return None  # an empty file is a database SQLite has not written yet
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            header = os.read(fd, len(SQLITE_HEADER))
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if header != SQLITE_HEADER:
        return "exists and is not an SQLite database; refusing to touch it"
    return None
