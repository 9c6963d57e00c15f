"""What the simulated Billomat serves: its resource table and deterministic demo records.

The table is the simulator's own, written from upstream-apis.md §3 (resources as billomapy and
the API docs name them, compound names hyphenated, item keys singular) — never imported from our
client, so a mistake in the client's table fails a test instead of being mirrored by the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class BillomatResource:
    """One list resource: its root key, its item key, and how it is filtered.

    `dated`: the documented `from`/`to` filters (YYYY-MM-DD) bound its `date`, inclusive.
    """

    name: str
    item: str
    dated: bool = False


RESOURCES: dict[str, BillomatResource] = {
    r.name: r
    for r in (
        BillomatResource("clients", "client"),
        BillomatResource("client-property-values", "client-property-value"),
        BillomatResource("contacts", "contact"),
        BillomatResource("suppliers", "supplier"),
        BillomatResource("articles", "article"),
        BillomatResource("units", "unit"),
        BillomatResource("invoices", "invoice", dated=True),
        BillomatResource("invoice-items", "invoice-item"),
        BillomatResource("invoice-payments", "invoice-payment"),
        BillomatResource("recurrings", "recurring"),
        BillomatResource("incomings", "incoming", dated=True),
        BillomatResource("offers", "offer", dated=True),
        BillomatResource("credit-notes", "credit-note", dated=True),
        BillomatResource("confirmations", "confirmation", dated=True),
        BillomatResource("reminders", "reminder", dated=True),
        BillomatResource("delivery-notes", "delivery-note", dated=True),
        BillomatResource("letters", "letter", dated=True),
        BillomatResource("templates", "template"),
    )
}

# Query parameters that are not record filters (paging, sorting, format, auth, ranges).
CONTROL_PARAMS = frozenset(
    {"page", "per_page", "order_by", "format", "api_key", "from", "to", "group_by"}
)
HASH_FIELDS = ("client_id", "invoice_id", "contact_id", "supplier_id", "article_id")
INVOICE_STATUSES = ("DRAFT", "OPEN", "PAID", "OVERDUE")


def demo_date(i: int) -> str:
    return f"2025-{(i % 12) + 1:02d}-{(i % 28) + 1:02d}"


def demo_record(resource: str, i: int) -> Record:
    """A deterministic record `i` (1-based); scalars as strings, as Billomat sends them."""
    client_id = str((i % 9) + 1)
    if resource == "clients":
        return {
            "id": str(i),
            "client_number": f"KD{i:05d}",
            "name": f"Kunde {i} GmbH",
            "email": f"kunde{i}@example.de",
            "phone": f"+49 30 5550{i:04d}",
            "country_code": "DE",
        }
    if resource == "contacts":
        return {"id": str(i), "client_id": client_id, "first_name": f"Kim{i}", "phone": ""}
    if resource == "invoices":
        return {
            "id": str(i),
            "client_id": client_id,
            "invoice_number": f"RE{i:05d}",
            "status": INVOICE_STATUSES[i % 4],
            "date": demo_date(i),
            "total_gross": f"{100 + i}.00",
        }
    if resource in ("invoice-items", "invoice-payments"):
        return {"id": str(i), "invoice_id": str((i % 20) + 1), "title": f"Item {i}"}
    record = {"id": str(i), "client_id": client_id, "name": f"{resource} {i}"}
    if RESOURCES[resource].dated:
        record["date"] = demo_date(i)
    return record
