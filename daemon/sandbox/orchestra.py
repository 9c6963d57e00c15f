"""The embedded sandbox: every simulator on loopback, demo data, and a config pointing at them.

`daemon sandbox` and the end-to-end tests use this, so "it works in the sandbox" means the same
real clients, store and sync engine ran against servers that behave like the upstreams. The
written config holds only the simulators' demo credentials (including a registered Billomat app,
so the higher quota applies), and is created with mode 0600 like any config with literal secrets
must be. The config spells everything as the real APIs do (Reseller resources are method names:
`search`, `getcredit`).

`demo_size` scales every simulator's demo data: Blesta clients (each with contacts, invoices,
services and transactions), Reseller licences, Billomat and Halo records per resource, and
NetSapiens CDRs (with a conversation per 20); listings are indexed, so 100k records page as fast
as the default handful. With a demo size the config leaves out hosted Halo's 300-per-5-minutes
client budget (commented), which would stretch a 100k-ticket sync over half an hour.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.sandbox.billomat_sim import BillomatState, serve_billomat
from daemon.sandbox.blesta_sim import BlestaState
from daemon.sandbox.blesta_sim import make_app as make_blesta_app
from daemon.sandbox.halo_sim import HaloState, serve_halo
from daemon.sandbox.netsapiens_sim import NetsapiensState, serve_netsapiens
from daemon.sandbox.reseller_sim import BASE_PATH as RESELLER_PATH
from daemon.sandbox.reseller_sim import ResellerState
from daemon.sandbox.reseller_sim import make_app as make_reseller_app
from daemon.sandbox.server import serve_app

WEBHOOK_SECRET = "sandbox-webhook-secret-0123456789"  # noqa: S105 - demo only
OWN_NUMBER = "+15559870000"
# records per simulator when no demo size is given: enough to page, quick to start
DEFAULT_SIZES = {"blesta": 60, "reseller": 40, "billomat": 60, "halo": 120, "netsapiens": 40}


def demo_states(demo_size: int | None = None) -> dict[str, Any]:
    """Every simulator's state with deterministic demo data (`demo_size` records each)."""

    def size(name: str) -> int:
        return DEFAULT_SIZES[name] if demo_size is None else demo_size

    return {
        "blesta": BlestaState.demo(clients=size("blesta"), seed=1),
        "reseller": ResellerState.demo(licenses=size("reseller"), seed=1),
        "billomat": BillomatState(demo_size=size("billomat")),
        "halo": HaloState(demo_size=size("halo")),
        "netsapiens": NetsapiensState.demo(size("netsapiens"), seed=1),
    }


@dataclass
class Sandbox:
    """A running sandbox: where its config is, and each simulator's URL and live state."""

    directory: Path
    config_path: Path
    urls: dict[str, str] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)

    @property
    def netsapiens(self) -> NetsapiensState:
        """The PBX simulator's state: what tests and the tour drive (`inbound_sms`...)."""
        state: NetsapiensState = self.states["netsapiens"]
        return state

    @property
    def halo(self) -> HaloState:
        state: HaloState = self.states["halo"]
        return state


def _port(base: int, offset: int) -> int:
    return base + offset if base else 0


@asynccontextmanager
async def run_sandbox(
    directory: Path,
    *,
    port: int = 0,
    now: datetime,
    listen: str = "127.0.0.1:8780",
    demo_size: int | None = None,
) -> AsyncIterator[Sandbox]:
    """Start all five simulators (ports `port`..`port+4`, or free ones when 0) with
    `demo_size` records each (see the module docstring) and write `directory/sandbox.toml`;
    everything stops when the block exits."""
    states = demo_states(demo_size)
    sandbox = Sandbox(directory, directory / "sandbox.toml", states=states)
    async with AsyncExitStack() as stack:
        blesta_root = await stack.enter_async_context(
            serve_app(make_blesta_app(states["blesta"]), port=_port(port, 0))
        )
        reseller_root = await stack.enter_async_context(
            serve_app(make_reseller_app(states["reseller"]), port=_port(port, 1))
        )
        sandbox.urls = {
            "blesta": blesta_root + "/api",
            "reseller": reseller_root + RESELLER_PATH,
            "billomat": await stack.enter_async_context(
                serve_billomat(states["billomat"], port=_port(port, 2))
            ),
            "halo": await stack.enter_async_context(
                serve_halo(states["halo"], port=_port(port, 3))
            ),
            "netsapiens": await stack.enter_async_context(
                serve_netsapiens(states["netsapiens"], port=_port(port, 4))
            ),
        }
        write_config(sandbox, now=now, listen=listen, demo_size=demo_size)
        yield sandbox


def _q(value: str) -> str:
    """A TOML basic string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    sandbox: Sandbox, *, now: datetime, listen: str, demo_size: int | None = None
) -> None:
    s, u = sandbox.states, sandbox.urls
    app_id = sorted(s["billomat"].apps)[0]  # the demo app: Billomat's registered-app quota
    # Halo hosted's budget; with a large demo it would stretch a sync over half an hour
    halo_budget = 'rate_limit = "300/5m"'
    if demo_size is not None:
        halo_budget = f"# {halo_budget}   # hosted Halo's budget: off for --demo-size"
    start_month = f"{now.year - (1 if now.month <= 2 else 0)}-{(now.month - 3) % 12 + 1:02d}"
    text = f"""# Written by `daemon sandbox`: each upstream is a loopback simulator with demo data.
# The credentials below are the simulators' demo credentials, not real secrets.

[daemon]
database = {_q(str(sandbox.directory / "state.db"))}
log_level = "info"
timezone = "UTC"
default_region = "US"

[http]
listen = {_q(listen)}

[upstreams.blesta]
url = {_q(u["blesta"])}
user = "sync"
key = {_q(s["blesta"].users["sync"])}
max_concurrency = 8

[upstreams.reseller]
kind = "blesta_reseller"
url = {_q(u["reseller"])}
user = "reseller"
password = {_q(s["reseller"].users["reseller"])}

[upstreams.billomat]
billomat_id = {_q(s["billomat"].billomat_id)}
url = {_q(u["billomat"])}
api_key = {_q(sorted(s["billomat"].api_keys)[0])}
app_id = {_q(app_id)}
app_secret = {_q(s["billomat"].apps[app_id])}

[upstreams.halo]
tenant_url = {_q(u["halo"])}
client_id = {_q(s["halo"].client_id)}
client_secret = {_q(s["halo"].client_secret)}
{halo_budget}

[upstreams.netsapiens]
api_url = {_q(u["netsapiens"])}
client_id = {_q(s["netsapiens"].client_id)}
client_secret = {_q(s["netsapiens"].client_secret)}
username = {_q(s["netsapiens"].username)}
password = {_q(s["netsapiens"].password)}

[webhooks.netsapiens]
secret = {_q(WEBHOOK_SECRET)}
public_url = {_q(f"http://{listen}/webhooks/netsapiens")}
subscribe = ["message", "cdr"]
own_numbers = [{_q(OWN_NUMBER)}]

[[sync]]
name = "blesta-clients"
upstream = "blesta"
resource = "clients"
every = "15m"
phone_fields = ["phone"]

[[sync]]
name = "blesta-invoices"
upstream = "blesta"
resource = "invoices"
params = {{ status = "all" }}
every = "1h"

[[sync]]
name = "blesta-revenue"
upstream = "blesta"
report = "package_revenue"
months = {_q(start_month + "..current")}
every = "1d"

[[sync]]
name = "reseller-licenses"
upstream = "reseller"
resource = "search"
every = "1h"

[[sync]]
name = "reseller-credit"
upstream = "reseller"
resource = "getcredit"
every = "1h"

[[sync]]
name = "billomat-clients"
upstream = "billomat"
resource = "clients"
every = "30m"
phone_fields = ["phone", "mobile"]

[[sync]]
name = "billomat-invoices"
upstream = "billomat"
resource = "invoices"
every = "30m"

[[sync]]
name = "halo-tickets"
upstream = "halo"
resource = "tickets"
every = "5m"

[[sync]]
name = "halo-clients"
upstream = "halo"
resource = "clients"
every = "1h"

# Demo rules: a known client who says hello gets an SMS reply built from their Blesta record;
# every other message becomes a Halo ticket, and later ones from the same number notes on it.
[[rules]]
name = "hello"
on = "message.received"
match = {{ body = '(?i)^\\s*(hi|hello|hey)\\b' }}
when = "client is defined"
action = "sms_reply"
text = "Hi {{{{ client.first_name }}}}, demo desk here: your account is {{{{ client.status }}}}."
cooldown = "1m"

[[rules]]
name = "sms-to-ticket"
on = "message.received"
action = "halo_ticket"
thread = true
ticket.summary = "SMS from {{{{ client.first_name | default(event.from) }}}}"
ticket.details = "{{{{ event.body }}}}"
ticket.tickettype_id = 1
"""
    path = sandbox.config_path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
