"""What the simulated Halo serves: its resource table and deterministic demo records.

The table is the simulator's own, written from upstream-apis.md §4 and the paths seen in public
clients (halo-ps), not imported from our client, so a mistake in the client's table shows up
as a failing test instead of being mirrored by the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
CLOSED_STATUS = 9
BARE_ARRAY_SIZE = 12  # agents, statuses, teams...: short lookup lists


@dataclass(frozen=True)
class SimResource:
    """How the simulator serves one Halo path (`list_key=None`: a bare array).

    `per_ticket`: the list is per ticket; without `ticket_id` it is empty (upstream-apis §4).
    """

    path: str
    list_key: str | None
    ignores_paging: bool = False
    per_ticket: bool = False


SIM_RESOURCES: dict[str, SimResource] = {
    r.path.lower(): r
    for r in (
        SimResource("Tickets", "tickets"),
        SimResource("Actions", "actions", per_ticket=True),
        SimResource("Client", "clients"),
        SimResource("Users", "users"),
        SimResource("Agent", None),
        SimResource("Asset", "assets"),
        SimResource("Site", "sites"),
        SimResource("Invoice", "invoices"),
        SimResource("ClientContract", "contracts"),
        SimResource("Opportunities", "tickets"),
        SimResource("Projects", "tickets"),
        SimResource("Appointment", "appointments"),
        SimResource("Item", "items"),
        SimResource("KBArticle", "articles"),
        SimResource("Supplier", "suppliers"),
        SimResource("Attachment", "attachments"),
        SimResource("Status", None),
        SimResource("Team", None),
        SimResource("Category", "categories"),
        SimResource("Priority", None),
        SimResource("SLA", None),
        SimResource("TicketType", "tickettypes"),
        SimResource("TopLevel", None),
        SimResource("Expense", "expenses"),
        SimResource("Timesheet", "timesheets"),
        SimResource("Release", "releases"),
        SimResource("Report", "reports"),
        SimResource("Webhook", None),
        SimResource("Workday", "workdays"),
        SimResource("SoftwareLicence", "licences"),
        SimResource("CRMNote", "actions", ignores_paging=True),
        SimResource("Quotation", "quotes"),
    )
}

# equality filters a list request may carry (upstream-apis §4), and those worth a hash index
EQUALITY_FILTERS = ("client_id", "user_id", "agent_id", "status_id", "ticket_id", "site_id")
HASH_FIELDS = ("client_id", "user_id", "ticket_id", "site_id")
SEARCH_FIELDS = ("name", "summary", "details", "note")

_FIRST = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon"]
_LAST = ["Stone", "Rivers", "Moss", "Hart", "Lake", "Ford", "Wells", "Reed"]


def demo_record(path: str, i: int) -> Record:
    """A deterministic record number `i` (1-based) for a resource."""
    name = f"{_FIRST[i % len(_FIRST)]} {_LAST[i % len(_LAST)]}"
    client_id = (i % 7) + 1
    p = path.lower()
    if p in ("tickets", "opportunities", "projects"):
        return {
            "id": i,
            "summary": f"Demo {p[:-1]} {i}: printer on floor {i % 5}",
            "details": f"Reported by {name}",
            "client_id": client_id,
            "user_id": i % 20 + 1,
            "agent_id": i % 4 + 1,
            "status_id": CLOSED_STATUS if i % 4 == 0 else (i % 3) + 1,
            "tickettype_id": 1,
            "dateoccurred": f"2025-01-{(i % 28) + 1:02d}T09:00:00",
        }
    if p == "client":
        return {"id": i, "name": f"Client {i} Ltd", "inactive": i % 10 == 0, "toplevel_id": 1}
    if p == "users":
        return {
            "id": i,
            "name": name,
            "client_id": client_id,
            "site_id": client_id,
            "emailaddress": f"user{i}@example.com",
            "phonenumber": f"+1555010{i % 10000:04d}",
        }
    if p == "agent":
        return {"id": i, "name": f"Agent {name}", "email": f"agent{i}@example.com"}
    if p == "status":
        return {"id": i, "name": f"Status {i}", "type": 2 if i == CLOSED_STATUS else 1}
    if p == "team":
        return {"id": i, "name": f"Team {i}"}
    if p == "actions":  # two actions on each of the first tickets, as a ticket's history
        return {"id": i, "ticket_id": (i + 1) // 2, "client_id": client_id, "note": f"Note {i}"}
    if p == "crmnote":
        return {"id": i, "ticket_id": (i % 10) + 1, "client_id": client_id, "note": f"Note {i}"}
    return {"id": i, "name": f"{path} {i}", "client_id": client_id}
