"""Every secret the test suite uses, in one place, and every spelling of each one an output
could carry (issue 18, leaks).

The values are taken from where they are defined — the simulators' demo credentials (the
sandbox config's literals) and the test modules' `SECRET` constants — except a few that exist
only inside config text or an env dict a test writes; those are listed here literally. A
secret is paired with its user (or client id) when it travels as HTTP Basic, so the base64 of
`user:secret` is looked for too.

`runtime` collects secrets made while the suite runs: every access and refresh token the
NetSapiens simulator issues (`tests/conftest.py` registers them).
"""

from __future__ import annotations

import base64
import json
import re
from functools import cache
from urllib.parse import quote, quote_plus

from daemon.sandbox.billomat_sim import BillomatState
from daemon.sandbox.blesta_sim import BlestaState
from daemon.sandbox.halo_sim import HaloState
from daemon.sandbox.netsapiens_state import NetsapiensState
from daemon.sandbox.orchestra import WEBHOOK_SECRET
from daemon.sandbox.reseller_sim import ResellerState

MIN_LENGTH = 8  # shorter values ("abc", "h") are not told apart from ordinary text

# Values that appear only inside a config text or an env mapping a test builds.
_LITERAL: list[tuple[str, str]] = [
    ("", "blesta-key-value"),  # tests/test_config.py EXAMPLE_ENV
    ("", "reseller-pass-value"),
    ("", "billomat-key-value"),
    ("", "billomat-app-secret"),
    ("", "halo-secret-value"),
    ("", "ns-client-secret"),
    ("", "ns-password-value"),
    ("", "webhook-secret-0123456789"),
    ("sync", "blesta-secret-key"),  # tests/test_config.py ENV
    ("ns-client", "literal-ns-secret-value"),  # tests/rules/test_cli_rules.py
    ("api@example.com", "literal-ns-password"),
    ("halo-client", "literal-halo-secret"),
]


@cache
def fixed() -> tuple[tuple[str, str], ...]:
    """(user, secret) for every secret known before the suite runs."""
    from tests.clients.blesta_fixtures import RESELLER_PASSWORD, RESELLER_USER
    from tests.events.conftest import SECRET as EVENTS_SECRET
    from tests.hostile.conftest import SECRET as HOSTILE_SECRET
    from tests.netsapiens_fixtures import SECRET as NS_HOOK_SECRET
    from tests.security.test_echo_leaks import SECRETS as ECHO_SECRETS
    from tests.test_logs import SECRET as LOGS_SECRET
    from tests.webhooks.listener_fixtures import OLD_SECRET
    from tests.webhooks.listener_fixtures import SECRET as LISTENER_SECRET
    from tests.webhooks.test_keeper import NEW_SECRET

    blesta, reseller = BlestaState(), ResellerState()
    billomat, halo, ns = BillomatState(demo_size=0), HaloState(demo_size=0), NetsapiensState()
    pairs = [
        *blesta.users.items(),
        *reseller.users.items(),
        *(("", key) for key in billomat.api_keys),
        *billomat.apps.items(),
        (halo.client_id, halo.client_secret),
        (ns.client_id, ns.client_secret),
        (ns.username, ns.password),
        ("", WEBHOOK_SECRET),
        ("", EVENTS_SECRET),
        ("", LISTENER_SECRET),
        ("", OLD_SECRET),
        ("", NEW_SECRET),
        ("", NS_HOOK_SECRET),
        ("sync", HOSTILE_SECRET),
        ("", LOGS_SECRET),
        (RESELLER_USER, RESELLER_PASSWORD),
        *ECHO_SECRETS.values(),
        *_LITERAL,
    ]
    return tuple(dict.fromkeys(p for p in pairs if len(p[1]) >= MIN_LENGTH))


runtime: list[str] = []  # tokens issued while the suite runs


def webhook_secrets() -> frozenset[str]:
    """The secrets that are part of a subscription's post URL (which the database stores
    masked: `subscriptions.post_url`, docs/database.md); scanned like every other secret."""
    from tests.events.conftest import SECRET as EVENTS_SECRET
    from tests.netsapiens_fixtures import SECRET as NS_HOOK_SECRET
    from tests.security.test_echo_leaks import SECRETS as ECHO_SECRETS
    from tests.webhooks.listener_fixtures import OLD_SECRET
    from tests.webhooks.listener_fixtures import SECRET as LISTENER_SECRET
    from tests.webhooks.test_keeper import NEW_SECRET

    return frozenset(
        {WEBHOOK_SECRET, EVENTS_SECRET, LISTENER_SECRET, OLD_SECRET, NEW_SECRET, NS_HOOK_SECRET,
         ECHO_SECRETS["NS_WEBHOOK_SECRET"][1], "webhook-secret-0123456789"}
    )  # fmt: skip


def spellings(user: str, secret: str) -> set[str]:
    """The secret as it would appear in text: plain, JSON-escaped (once or twice, ASCII or
    not), URL-encoded (`%20` or `+`, either hex case), base64, and the base64 HTTP Basic
    credential of `user:secret`."""
    escaped = json.dumps(secret)[1:-1]
    forms = {
        secret,
        escaped,
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(escaped)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote_plus(secret, safe="")),
        base64.b64encode(secret.encode()).decode().rstrip("="),
    }
    if user:
        forms.add(base64.b64encode(f"{user}:{secret}".encode()).decode().rstrip("="))
    return forms


def needles(exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """spelling → the secret it spells (secrets in `exclude` left out)."""
    out: dict[str, str] = {}
    for user, secret in fixed():
        if secret not in exclude:
            out.update(dict.fromkeys(spellings(user, secret), secret))
    for token in runtime:
        out.update(dict.fromkeys(spellings("", token), token))
    return out


def find(text: str, table: dict[str, str]) -> list[tuple[str, str, int]]:
    """(secret, spelling, offset) of every spelling in `text`, once per spelling."""
    return [(secret, s, i) for s, secret in table.items() if (i := text.find(s)) >= 0]
