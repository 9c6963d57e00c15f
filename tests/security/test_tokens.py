"""OAuth tokens reach the one redactor the moment they are issued, not only the session's
excerpt filter: a token in a log line, an error or CLI output is masked like a config secret."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.clients.auth import TokenAuth
from daemon.clock import FakeClock
from daemon.logs import REDACTED, configure_logging, log, redact_text
from tests.logstate import logging_restored

ACCESS, REFRESH = "access-token-1f2e3d4c", "refresh-token-9a8b7c6d"


@dataclass
class Session:
    """What TokenAuth uses of an UpstreamSession."""

    name: str = "halo"
    clock: FakeClock = field(default_factory=lambda: FakeClock(datetime(2025, 1, 1, tzinfo=UTC)))
    secrets: list[str] = field(default_factory=list)

    def add_secret(self, value: str) -> None:
        self.secrets.append(value)


class Issuer(TokenAuth):
    async def obtain(self, session: Any) -> Mapping[str, Any]:
        return {"access_token": ACCESS, "refresh_token": REFRESH, "expires_in": 3600}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with logging_restored():
        yield


async def test_issued_tokens_are_masked_everywhere() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    session = Session()
    headers = await Issuer().headers(session)  # type: ignore[arg-type]
    assert headers == {"Authorization": f"Bearer {ACCESS}"}
    assert session.secrets == [ACCESS, REFRESH]
    log.warning("http.giving_up", excerpt=f"echo: Bearer {ACCESS} refresh={REFRESH}")
    assert ACCESS not in out.getvalue() and REFRESH not in out.getvalue()
    assert redact_text(f'{{"refresh_token": "{REFRESH}"}}') == f'{{"refresh_token": "{REDACTED}"}}'
