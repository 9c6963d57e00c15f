"""The sandbox the service tests run against: its simulators and config, with a short
`shutdown_timeout` so a test's stop is quick, the listener on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from daemon.sandbox.orchestra import Sandbox, run_sandbox
from tests.localnet import free_port


@asynccontextmanager
async def service_sandbox(
    tmp_path: Path, edit: Callable[[str], str] | None = None
) -> AsyncIterator[tuple[Sandbox, int]]:
    """(the sandbox, the listener's port); `edit` may rewrite the config text further."""
    port = free_port()
    async with run_sandbox(tmp_path, now=datetime.now(UTC), listen=f"127.0.0.1:{port}") as sb:
        text = sb.config_path.read_text()
        text = text.replace("[daemon]\n", '[daemon]\nshutdown_timeout = "2s"\n', 1)
        sb.config_path.write_text(edit(text) if edit is not None else text)
        yield sb, port
