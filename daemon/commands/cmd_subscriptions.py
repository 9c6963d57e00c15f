"""`daemon subscriptions list|sync|delete ID`: the NetSapiens event subscriptions.

- `list` shows what NetSapiens has (upstream) beside what the daemon recorded (local), post urls
  with their last segment masked because it is the webhook secret;
- `sync` runs one SubscriptionKeeper pass (create, adopt, renew, replace, clean duplicates) now;
- `delete ID` deletes one upstream and from the local table.

Uses `[webhooks.netsapiens]` (public_url, secret, subscribe, domain, renew_before) and its
`upstream` (default: the first netsapiens upstream). Upstream errors exit 1 with the error JSON.
The database is checked before it is opened, as by every command: one that is not an SQLite
file exits 2, one that is unreadable or from a newer daemon exits 1. `list` and `delete` do not
create a missing database (there is nothing local to show or delete); `sync` does.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

from daemon.clock import Clock, SystemClock
from daemon.commands.common import path_id
from daemon.config import NetsapiensUpstream, NetsapiensWebhookSettings, Settings
from daemon.errors import ConfigError, NotFoundError
from daemon.logs import mask_webhook_url

ORDER = 60
EXIT_OK = 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "subscriptions",
        parents=[common],
        help="NetSapiens event subscriptions: list | sync | delete ID",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = p.add_subparsers(dest="sub_command", metavar="COMMAND")
    ops.required = True
    ops.add_parser("list", parents=[common], help="upstream and local subscriptions")
    ops.add_parser("sync", parents=[common], help="run one keeper pass now")
    delete = ops.add_parser("delete", parents=[common], help="delete one subscription")
    delete.add_argument("id", metavar="ID", type=path_id)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from daemon.commands.common import emit_json, load_cli_settings

    settings = load_cli_settings(args.config)
    emit_json(asyncio.run(run(settings, args.sub_command, getattr(args, "id", None))))
    return EXIT_OK


def webhook_settings(settings: Settings) -> NetsapiensWebhookSettings:
    hooks = settings.webhooks.netsapiens
    if hooks is None:
        raise ConfigError("[webhooks.netsapiens] is not configured")
    return hooks


async def run(
    settings: Settings, command: str, sub_id: str | None, *, clock: Clock | None = None
) -> Any:
    """The work of each subcommand, given loaded settings (tests call this directly)."""
    from daemon.clients.factory import first_of_kind
    from daemon.clients.netsapiens import NetsapiensClient
    from daemon.commands.common import check_database
    from daemon.store import Store
    from daemon.webhooks.keeper import SubscriptionKeeper

    clock = clock or SystemClock()
    hooks = webhook_settings(settings)
    database = Path(settings.daemon.database)
    exists = await asyncio.to_thread(check_database, database, must_exist=False)
    secret = hooks.secret.get_secret_value()
    # first_of_kind has checked the kind.
    upstream = cast(
        NetsapiensUpstream,
        settings.upstreams[first_of_kind(settings, "netsapiens", hooks.upstream)],
    )
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            NetsapiensClient.from_settings(upstream, clock=clock)
        )
        store: Store | None = None
        if command == "sync" or exists:
            store = await stack.enter_async_context(Store.open(database, clock=clock))
        if command == "list":
            remote = await client.subscriptions.list()
            local = [] if store is None else await store.list_subscriptions()
            return {
                "upstream": [
                    {**s, "post-url": mask_webhook_url(str(s.get("post-url", "")), [secret])}
                    for s in remote
                ],
                "local": [
                    {
                        "id": r.id,
                        "model": r.model,
                        "post_url": mask_webhook_url(r.post_url, [secret]),
                        "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                        "status": r.status,
                    }
                    for r in local
                ],
            }
        if command == "sync":
            assert store is not None
            keeper = SubscriptionKeeper.from_settings(client, store, hooks, clock=clock)
            report = await keeper.sync_once()
            return report.as_dict()
        if command == "delete":
            assert sub_id is not None
            try:
                await client.subscriptions.delete(sub_id)
                upstream_deleted = True
            except NotFoundError:
                upstream_deleted = False
            local_deleted = False if store is None else await store.delete_subscription(sub_id)
            return {
                "id": sub_id,
                "upstream_deleted": upstream_deleted,
                "local_deleted": local_deleted,
            }
        raise ConfigError(f"unknown subscriptions command {command!r}")
