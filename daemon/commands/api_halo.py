"""`daemon api halo ...`: raw HaloPSA calls for scripts and debugging, JSON out.

    daemon api halo tickets list [--all] [open_only=true page_size=20 ...]
    daemon api halo tickets get --id 42 [includedetails=true]
    daemon api halo tickets create --data '{"summary": "...", "tickettype_id": 1}'
    daemon api halo tickets update --id 42 --data '{"summary": "..."}'
    daemon api halo tickets delete --id 42
    daemon api halo request GET /Tickets page_size=5      (also: daemon api halo GET /Tickets)

The upstream is the first `kind = "halo"` table in the config, or `--upstream NAME`. Upstream
errors propagate so `cli.py` prints the error JSON and exits 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from daemon.clients.segments import segment
from daemon.clock import SystemClock
from daemon.commands.common import emit_json, load_upstream

ORDER = 40
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})
EXIT_OK = 0
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments; reported on stderr with exit 2."""


def split_params(items: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`key=value` words as a dict; other words, in order, as positional extras."""
    params: dict[str, str] = {}
    extras: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key:
            params[key] = value
        else:
            extras.append(item)
    return params, extras


def parse_data(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--data is not valid JSON: {exc}") from exc


def number(params: dict[str, str], key: str, default: int) -> int:
    """Pop a numeric paging parameter (`page_size=20`)."""
    value = params.pop(key, None)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{key} must be a number, not {value!r}") from None


def record_id(args: argparse.Namespace, extras: list[str], action: str) -> str:
    rid = args.id or (extras[0] if extras else None)
    if not rid:
        raise UsageError(f"{action} needs --id ID")
    try:
        segment(rid)  # "." and ".." would name another path, not a record
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return str(rid)


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options of every `daemon api <upstream>` command, and the key=value tail.

    argparse matches a `nargs="*"` positional only once, so `tickets update --id 4 a=b`
    would reject `a=b`; the tail is therefore taken verbatim and parsed by `parse_tail`
    with intermixed options (`--config` may come last too)."""
    p.add_argument("--upstream", metavar="NAME", help="which upstream table (default: the first)")
    p.add_argument("--all", action="store_true", help="list: every page, not just one")
    p.add_argument("--data", metavar="JSON", help="create/update: the record as JSON")
    p.add_argument("--id", metavar="ID", help="get/update/delete: the record id")
    p.add_argument(
        "tail", nargs=argparse.REMAINDER, metavar="key=value", help="query parameters / fields"
    )


def parse_tail(args: argparse.Namespace) -> list[str]:
    """Options given among the key=value words, merged into `args`; returns the words."""
    tail = argparse.ArgumentParser(prog="daemon api", add_help=False)
    for option in ("--config", "--upstream", "--data", "--id"):
        tail.add_argument(option)
    tail.add_argument("--all", action="store_true")
    tail.add_argument("words", nargs="*")
    ns = tail.parse_intermixed_args(args.tail)
    for key in ("config", "upstream", "data", "id"):
        if getattr(ns, key) is not None:
            setattr(args, key, getattr(ns, key))
    args.all = bool(args.all or ns.all)
    return list(ns.words)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "halo",
        parents=[common],
        help="HaloPSA: RESOURCE list|get|create|update|delete, or request METHOD PATH",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="RESOURCE", help="tickets, clients, ... or 'request'")
    p.add_argument("action", metavar="ACTION", help="list|get|create|update|delete, or METHOD")
    add_common_arguments(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return dispatch(args, "halo", run)


Runner = Callable[
    [Any, argparse.Namespace, dict[str, str], list[str], Any], Coroutine[Any, Any, Any]
]


def dispatch(args: argparse.Namespace, kind: str, runner: Runner) -> int:
    """Parse the `key=value` tail and `--data`, call `runner` against the configured upstream
    of `kind`, print its JSON. Shared by `daemon api halo` and `daemon api billomat`."""
    try:
        params, extras = split_params(parse_tail(args))
        data = parse_data(args.data)
        cfg = load_upstream(args.config, kind, args.upstream)
        emit_json(asyncio.run(runner(cfg, args, params, extras, data)))
    except UsageError as exc:
        print(f"daemon api {kind}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


async def run(
    cfg: Any, args: argparse.Namespace, params: dict[str, str], extras: list[str], data: Any
) -> Any:
    from daemon.clients.halo import HaloClient

    target, action = args.target, args.action
    raw_method = None
    if target.lower() == "request":
        if not extras:
            raise UsageError("request needs METHOD PATH")
        raw_method, path = action.upper(), extras[0]
    elif target.upper() in HTTP_METHODS:
        raw_method, path = target.upper(), action
    async with HaloClient.from_settings(cfg, clock=SystemClock()) as client:
        if raw_method is not None:
            if raw_method not in HTTP_METHODS:
                raise UsageError(f"unknown HTTP method {raw_method!r}")
            return await client.request(raw_method, path, params=params or None, json=data)
        try:
            res = client.resource(target)
        except KeyError:
            raise UsageError(f"unknown Halo resource {target!r}") from None
        return await resource_action(res, action.lower(), args, params, extras, data)


async def resource_action(
    res: Any,
    action: str,
    args: argparse.Namespace,
    params: dict[str, str],
    extras: list[str],
    data: Any,
) -> Any:
    if action == "list":
        page_size = number(params, "page_size", 50)
        if args.all:
            return [r async for r in res.list_all(page_size, **params)]
        page = await res.list(page_size, number(params, "page_no", 1), **params)
        return {
            "record_count": page.record_count,
            "page_no": page.page_no,
            "page_size": page.page_size,
            "records": page.records,
        }
    if action == "get":
        return await res.get(record_id(args, extras, action), **params)
    if action == "delete":
        rid = record_id(args, extras, action)
        await res.delete(rid)
        return {"deleted": rid}
    body = data if data is not None else dict(params)
    if action == "create":
        if isinstance(body, list):
            return await res.batch_create(body)
        if not isinstance(body, dict) or not body:
            raise UsageError("create needs --data '{...}' (or key=value fields)")
        return await res.create(body)
    if action == "update":
        if not isinstance(body, dict):
            raise UsageError("update needs --data '{...}'")
        if args.id or extras:
            rid = record_id(args, extras, action)
            body = {**body, "id": int(rid) if rid.isdigit() else rid}
        if body.get("id") in (None, ""):
            raise UsageError("update needs --id ID (or an 'id' in --data)")
        return await res.update(body)
    if action == "me" and hasattr(res, "me"):
        return await res.me()
    raise UsageError(f"unknown action {action!r} (list, get, create, update, delete)")
