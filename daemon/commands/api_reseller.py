"""`daemon api reseller METHOD [key=value ...]`: one Blesta Reseller call, JSON on stdout.

Methods: getcredit, getpackages, getpackagepricing package_id=N, addlicense pricing_id=N
[test_mode=true], cancellicense|suspendlicense|unsuspendlicense license=KEY [test_mode=true],
update license=KEY (allow reissue), search [search=TERM] (every page). Keys may also be given
as the API spells them (`vars[license]=KEY`).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from daemon.clock import SystemClock
from daemon.commands.api_blesta import parse_kv_args, split_params
from daemon.commands.common import emit_json, load_upstream
from daemon.errors import ConfigError

ORDER = 11
METHODS = (
    "getcredit",
    "getpackages",
    "getpackagepricing",
    "addlicense",
    "cancellicense",
    "suspendlicense",
    "unsuspendlicense",
    "update",
    "search",
)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "reseller",
        parents=[common],
        help="Blesta Reseller API call",
        description="Call one Blesta Reseller method and print its response as JSON.",
    )
    p.add_argument("method", type=str.lower, choices=METHODS)
    p.add_argument("params", nargs=argparse.REMAINDER, metavar="KEY=VALUE")
    add_options(p)
    p.set_defaults(handler=handle)


def add_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    flag: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--upstream", metavar="NAME", help="upstream table name", **flag)
    if suppress:
        p.add_argument("--config", default=argparse.SUPPRESS)


def _flatten_vars(params: dict[str, Any]) -> dict[str, Any]:
    merged = dict(params)
    inner = merged.pop("vars", None)
    if isinstance(inner, dict):
        merged.update(inner)
    return merged


def _need(params: dict[str, Any], key: str) -> str:
    if key not in params:
        raise ConfigError(f"this method needs {key}=...")
    return str(params[key])


def handle(args: argparse.Namespace) -> int:
    from daemon.clients.blesta_reseller import ResellerClient

    params = _flatten_vars(parse_kv_args(split_params(args, add_options)))
    upstream = load_upstream(args.config, "blesta_reseller", args.upstream)
    client = ResellerClient.from_settings(upstream, clock=SystemClock())
    emit_json(asyncio.run(_call(client, args.method, params)))
    return 0


async def _call(client: Any, method: str, p: dict[str, Any]) -> Any:
    test_mode = str(p.get("test_mode", "false")).lower() in ("1", "true", "yes")
    async with client:
        if method == "getcredit":
            return await client.getcredit()
        if method == "getpackages":
            return await client.getpackages()
        if method == "getpackagepricing":
            return await client.getpackagepricing(_need(p, "package_id"))
        if method == "addlicense":
            return await client.addlicense(_need(p, "pricing_id"), test_mode=test_mode)
        if method == "update":
            return await client.update_reissue(_need(p, "license"))
        if method == "search":
            return await client.search_all(str(p.get("search", p.get("term", ""))))
        return await getattr(client, method)(_need(p, "license"), test_mode=test_mode)
