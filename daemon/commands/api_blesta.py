"""`daemon api blesta MODEL METHOD [key=value ...]`: one raw Blesta call, JSON on stdout.

Arguments are `key=value` with PHP bracket keys (`filters[status]=active`,
`vars[lines][0][amount]=5`, `ids[]=1 ids[]=2`); a repeated plain key becomes a list. They are
sent where Blesta reads them for the verb (query for GET/DELETE, form body for POST/PUT).
`--all` walks every page of a list method (page size learned from the server). On an upstream
error the error JSON goes to stderr and the exit code is 1 (cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from daemon.clock import SystemClock
from daemon.commands.common import emit_json, load_upstream
from daemon.errors import ConfigError

ORDER = 10


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "blesta",
        parents=[common],
        help="raw Blesta API call",
        description="Call {api}/MODEL/METHOD.json on the configured Blesta and print the "
        "`response` value as JSON.",
    )
    p.add_argument(
        "model",
        type=_name(_MODEL, "a model"),
        help="snake_case model, e.g. clients, report_manager (plugin.model for a plugin's)",
    )
    p.add_argument("method", type=_name(_METHOD, "a method"), help="camelCase method, e.g. getList")
    p.add_argument(
        "params",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="arguments (bracket keys ok); options may follow them",
    )
    add_options(p)
    p.set_defaults(handler=handle)


# A model and a method are path segments of {api}/MODEL/METHOD.json. Only names: a full URL
# (or `..`) in their place sent the request, and Blesta's credentials, elsewhere.
_MODEL = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")
_METHOD = re.compile(r"[A-Za-z0-9_]+")


def _name(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f"not {what} name: {text[:40]!r}")
        return text

    return parse


def add_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The options, also re-read from after the KEY=VALUE list (argparse cannot intermix)."""
    flag: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument(
        "--verb",
        "--method-verb",
        dest="verb",
        choices=["GET", "POST", "PUT", "DELETE"],
        type=str.upper,
        default=argparse.SUPPRESS if suppress else "GET",
        help="HTTP verb (default GET)",
    )
    p.add_argument("--all", action="store_true", help="fetch every page of a list method", **flag)
    p.add_argument(
        "--show-request", action="store_true", help="print the request sent (to stderr)", **flag
    )
    p.add_argument("--upstream", metavar="NAME", help="upstream name (default: first)", **flag)
    if suppress:
        p.add_argument("--config", default=argparse.SUPPRESS)


def split_params(args: argparse.Namespace, add: Callable[..., None] = add_options) -> list[str]:
    """Options given after KEY=VALUE land in `params`; move them onto `args`."""
    tail = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add(tail, suppress=True)
    try:
        extra, rest = tail.parse_known_args(args.params)
    except argparse.ArgumentError as exc:
        raise ConfigError(f"bad option: {exc}") from None
    for key, value in vars(extra).items():
        setattr(args, key, value)
    for item in rest:
        if "=" not in item or item.startswith("-"):
            raise ConfigError(f"unexpected argument {item!r} (expected KEY=VALUE)")
    return rest


def parse_kv_args(items: Sequence[str]) -> dict[str, Any]:
    """`["status=active", "filters[x]=1", "a=1", "a=2"]` → nested args for `encode_php_params`."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {item!r} is not KEY=VALUE")
        head, bracket, rest = key.partition("[")
        parts = [head] + (rest.rstrip("]").split("][") if bracket else [])
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # `key[]`: append
                part = str(len(node))
            if last:
                if part in node and not isinstance(node[part], dict):
                    prev = node[part]
                    node[part] = [*prev, value] if isinstance(prev, list) else [prev, value]
                else:
                    node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"argument {key!r} conflicts with an earlier plain value")
                node = child
    return out


def handle(args: argparse.Namespace) -> int:
    from daemon.clients.blesta import BlestaClient

    params = parse_kv_args(split_params(args))
    upstream = load_upstream(args.config, "blesta", args.upstream)
    client = BlestaClient.from_settings(upstream, clock=SystemClock())
    if args.show_request:
        from daemon.clients.blesta import encode_php_params

        where = "query" if args.verb in ("GET", "DELETE") or args.all else "form"
        request = {
            "verb": "GET" if args.all else args.verb,
            "url": str(client.session.url(f"{args.model}/{args.method}.json")),
            where: encode_php_params(params),
        }
        print(json.dumps({"request": request}, indent=2), file=sys.stderr)
    emit_json(asyncio.run(_call(client, args, params)))
    return 0


async def _call(client: Any, args: argparse.Namespace, params: dict[str, Any]) -> Any:
    async with client:
        if args.all:
            return await client.get_all(args.model, args.method, params)
        resp = await client.call(args.verb, args.model, args.method, params)
        return resp.csv_data if resp.is_csv else resp.data
