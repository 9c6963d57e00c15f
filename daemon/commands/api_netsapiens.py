"""`daemon api netsapiens ...`: raw NetSapiens calls for scripts and debugging, JSON out.

    daemon api netsapiens token
    daemon api netsapiens send-sms --from 15559870000 --to 15551230000 "Hello" [--session ID]
    daemon api netsapiens messages [--session ID] [--user U] [--domain D] [--limit N]
    daemon api netsapiens subscriptions

The upstream is the first `kind = "netsapiens"` table in the config, or `--upstream NAME`.
Upstream errors propagate so `cli.py` prints the error JSON and exits 1; a bad session id or
other usage error exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from daemon.clock import SystemClock
from daemon.commands.common import bounded_int, emit_json, load_upstream

ORDER = 50
EXIT_OK = 0
EXIT_USAGE = 2


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "netsapiens",
        parents=[common],
        help="NetSapiens: token | send-sms | messages | subscriptions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upstream = argparse.ArgumentParser(add_help=False)
    upstream.add_argument("--upstream", metavar="NAME", help="which upstream table")
    ops = p.add_subparsers(dest="ns_command", metavar="COMMAND")
    ops.required = True
    ops.add_parser("token", parents=[common, upstream], help="who the API token belongs to")
    send = ops.add_parser("send-sms", parents=[common, upstream], help="send one SMS")
    send.add_argument("--from", dest="from_number", required=True, metavar="N")
    send.add_argument("--to", dest="to_number", required=True, metavar="N")
    send.add_argument("--session", metavar="ID", help="send into this message session")
    send.add_argument("--domain", default="~")
    send.add_argument("--user", default="~")
    send.add_argument("text", metavar="TEXT")
    msgs = ops.add_parser(
        "messages", parents=[common, upstream], help="message sessions, or one session's messages"
    )
    msgs.add_argument("--session", metavar="ID")
    msgs.add_argument("--domain", default="~")
    msgs.add_argument("--user", default=None)
    msgs.add_argument(
        "--limit", type=bounded_int(1), default=100, metavar="N", help="page size (default 100)"
    )
    ops.add_parser("subscriptions", parents=[common, upstream], help="list event subscriptions")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    cfg = load_upstream(args.config, "netsapiens", getattr(args, "upstream", None))
    try:
        emit_json(asyncio.run(run(cfg, args)))
    except ValueError as exc:
        print(f"daemon api netsapiens: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


async def run(cfg: Any, args: argparse.Namespace) -> Any:
    from daemon.clients.netsapiens import NetsapiensClient

    async with NetsapiensClient.from_settings(cfg, clock=SystemClock()) as client:
        command = args.ns_command
        if command == "token":
            return await client.token_info()
        if command == "send-sms":
            return await client.send_message(
                args.domain,
                args.user,
                type="sms",
                message=args.text,
                destination=args.to_number,
                from_number=args.from_number,
                session_id=args.session,
            )
        if command == "messages":
            user = args.user if args.user is not None or args.session is None else "~"
            return await client.get_messages(args.domain, user, args.session, args.limit)
        if command == "subscriptions":
            return await client.subscriptions.list()
        raise ValueError(f"unknown command {command!r}")
