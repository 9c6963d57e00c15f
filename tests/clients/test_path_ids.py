"""An id is one path segment: `../clients/3` names no other resource (a review deleted a
Billomat client through `invoices delete ../clients/3`, and read a Halo client through
`tickets get ../Client/2`)."""

from __future__ import annotations

import pytest

from daemon.clients.halo import HaloClient
from daemon.clients.segments import segment
from daemon.clock import FakeClock
from daemon.errors import NotFoundError
from tests.clients.halo_billomat_fixtures import halo_settings
from tests.clients.test_billomat import client_for


def test_segment_encodes_everything_reserved() -> None:
    assert segment("../clients/3") == "..%2Fclients%2F3"
    assert segment("a b?c#d%41") == "a%20b%3Fc%23d%2541"
    assert segment(42) == "42"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError, match="not a record id"):
            segment(bad)


async def test_a_billomat_id_cannot_reach_another_resource(billomat_sim: str) -> None:
    async with client_for(billomat_sim) as client:
        before = await client.clients.get(3)
        with pytest.raises(NotFoundError):
            await client.invoices.delete("../clients/3")
        with pytest.raises(NotFoundError):
            await client.invoices.get("../clients/3")
        assert await client.clients.get(3) == before  # still there


async def test_a_halo_id_cannot_reach_another_resource(halo_sim: str) -> None:
    async with HaloClient.from_settings(
        halo_settings(halo_sim), clock=FakeClock(autojump=True)
    ) as client:
        with pytest.raises(NotFoundError):
            await client.tickets.get("../Client/2")
