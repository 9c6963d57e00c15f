"""integration-daemon: keeps billing, invoicing, ticketing and PBX data in one SQLite file."""

__version__ = "0.1.0"
