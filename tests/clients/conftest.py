"""Fixtures for tests/clients. pytest auto-loads only conftest.py, so each group of client tests
keeps its fixtures in its own module and they are re-exported here."""

from tests.clients.blesta_fixtures import *  # noqa: F403
from tests.clients.halo_billomat_fixtures import *  # noqa: F403
