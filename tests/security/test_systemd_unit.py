"""The unit keeps what the service writes private: the database and its WAL hold client PII and
subscription URLs (whose last segment is the webhook secret)."""

from __future__ import annotations

from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "integration-daemon.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_files_are_created_private() -> None:
    unit = directives()
    assert unit["UMask"] == ["0077"]
    assert unit["StateDirectoryMode"] == ["0700"]
