"""`daemon api billomat ...`: raw Billomat calls for scripts and debugging, JSON out.

    daemon api billomat clients list [--all] [page=2 per_page=50 order_by="name ASC" ...]
    daemon api billomat clients get --id 7
    daemon api billomat clients create --data '{"name": "Kunde GmbH"}'
    daemon api billomat clients update --id 7 --data '{"name": "..."}'
    daemon api billomat clients delete --id 7
    daemon api billomat invoices complete|cancel|pdf --id 7
    daemon api billomat invoices email --id 7 --data '{"recipients": {"to": "a@b.de"}}'

The upstream is the first `kind = "billomat"` table in the config, or `--upstream NAME`.
Upstream errors propagate so `cli.py` prints the error JSON and exits 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from daemon.clock import SystemClock
from daemon.commands.api_halo import (
    UsageError,
    add_common_arguments,
    dispatch,
    number,
    record_id,
)

ORDER = 41
INVOICE_ACTIONS = ("complete", "cancel", "email", "pdf")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "billomat",
        parents=[common],
        help="Billomat: RESOURCE list|get|create|update|delete (invoices: complete, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("resource", metavar="RESOURCE", help="clients, invoices, credit-notes, ...")
    p.add_argument("action", metavar="ACTION", help="list|get|create|update|delete")
    add_common_arguments(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    return dispatch(args, "billomat", run)


async def run(
    cfg: Any, args: argparse.Namespace, params: dict[str, str], extras: list[str], data: Any
) -> Any:
    from daemon.clients.billomat import BillomatClient, InvoiceResource

    action = args.action.lower()
    async with BillomatClient.from_settings(cfg, clock=SystemClock()) as client:
        try:
            res = client.resource(args.resource)
        except KeyError:
            raise UsageError(f"unknown Billomat resource {args.resource!r}") from None
        if action == "list":
            if args.all:
                return await res.get_all(number(params, "per_page", 1000), **params)
            page = await res.list(
                number(params, "page", 1), number(params, "per_page", 100), **params
            )
            return {
                "page": page.page,
                "per_page": page.per_page,
                "total": page.total,
                "items": page.items,
            }
        if action in INVOICE_ACTIONS and isinstance(res, InvoiceResource):
            rid = record_id(args, extras, action)
            if action == "complete":
                template = params.get("template_id")
                return await res.complete(rid, int(template) if template else None)
            if action == "cancel":
                return await res.cancel(rid)
            if action == "email":
                return await res.email(rid, data if isinstance(data, dict) else dict(params))
            return await res.pdf(rid)
        if action not in ("get", "create", "update", "delete"):
            raise UsageError(f"unknown action {action!r} (list, get, create, update, delete)")
        if action == "create":
            body = data if data is not None else dict(params)
            if not isinstance(body, dict) or not body:
                raise UsageError("create needs --data '{...}' (or key=value fields)")
            return await res.create(body)
        rid = record_id(args, extras, action)
        if action == "get":
            return await res.get(rid)
        if action == "delete":
            await res.delete(rid)
            return {"deleted": rid}
        body = data if data is not None else dict(params)
        if not isinstance(body, dict) or not body:
            raise UsageError("update needs --data '{...}' (or key=value fields)")
        return await res.update(rid, body)
