"""Database: schema + migrations, record tables, sync runs, contacts, inbox, actions.

SQL lives only in this package; everything else gets `Store` methods and dataclasses.
The layout for users is documented in docs/database.md.
"""

from daemon.store.actions import ACTION_STATUSES, ActionRow, HaloThread, NewAction
from daemon.store.contacts import Contact, ContactEntry
from daemon.store.inbox import EVENT_STATUSES, EventRow
from daemon.store.ingest import InsertedEvent, NewEvent
from daemon.store.records import TombstoneResult, UpsertResult
from daemon.store.runs import RUN_STATUSES, UNSET, RunRow, SyncState
from daemon.store.schema import SCHEMA_VERSION
from daemon.store.store import Store
from daemon.store.subscriptions import SubscriptionRow
from daemon.store.util import to_db, validate_table_name
from daemon.store.writer import StoreStats

__all__ = [
    "ACTION_STATUSES",
    "EVENT_STATUSES",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "UNSET",
    "ActionRow",
    "Contact",
    "ContactEntry",
    "EventRow",
    "HaloThread",
    "InsertedEvent",
    "NewAction",
    "NewEvent",
    "RunRow",
    "Store",
    "StoreStats",
    "SubscriptionRow",
    "SyncState",
    "TombstoneResult",
    "UpsertResult",
    "to_db",
    "validate_table_name",
]
