"""`Store`: the one object the rest of the daemon talks to for persistence.

Composed from per-table repositories that share one `Database` core (connections, writer
task), so each module stays small while callers see a single, typed API.
"""

from __future__ import annotations

from daemon.store.actions import ActionsRepo
from daemon.store.contacts import ContactsRepo
from daemon.store.guard import GuardRepo
from daemon.store.inbox import InboxRepo
from daemon.store.maintenance import MaintenanceRepo
from daemon.store.records import RecordsRepo
from daemon.store.runs import RunsRepo
from daemon.store.subscriptions import SubscriptionsRepo


class Store(
    RecordsRepo,
    RunsRepo,
    ContactsRepo,
    InboxRepo,
    ActionsRepo,
    GuardRepo,
    SubscriptionsRepo,
    MaintenanceRepo,
):
    """Open with `async with Store.open(path, clock=clock) as store:`.

    Writes go through one writer task (see `daemon.store.db`); reads use a second connection
    and see committed data only.
    """
