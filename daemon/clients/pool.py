"""The service's open clients, by upstream name, and how a reload replaces them.

A reload compares each `[upstreams.<name>]` table with the one the running client was built
from: an unchanged upstream keeps its client (and its tokens, budget and connections); a changed
one gets a new client at once, and the old one is closed only after the requests it is carrying
have finished (bounded by `grace`), so nothing in flight is cut. Removed upstreams are closed the
same way. Parts look clients up by name when they need one, so they pick the new one up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import structlog

from daemon.clients.factory import build_client
from daemon.clock import Clock
from daemon.config import Settings, UpstreamSettings

if TYPE_CHECKING:
    from daemon.clients.factory import AnyClient

    Configure = Callable[[str, AnyClient], None]

log = structlog.get_logger(__name__)


class ClientPool:
    def __init__(self, *, clock: Clock, configure: Configure | None = None, grace: float = 30.0):
        self.clock = clock
        self.grace = grace
        self._configure = configure  # e.g. attach metrics hooks to a new client
        self.clients: dict[str, AnyClient] = {}
        self._built_from: dict[str, UpstreamSettings] = {}
        self._retiring: set[AnyClient] = set()

    def get(self, name: str) -> AnyClient:
        try:
            return self.clients[name]
        except KeyError:
            raise KeyError(f"no open client for upstream {name!r}") from None

    async def open(self, settings: Settings, names: Iterable[str] | None = None) -> None:
        """Open a client for each upstream (all when `names` is None)."""
        for name in dict.fromkeys(names if names is not None else settings.upstreams):
            await self._open(name, settings.upstreams[name])

    async def _open(self, name: str, upstream: UpstreamSettings) -> None:
        client = build_client(upstream, clock=self.clock)
        await client.__aenter__()
        if self._configure is not None:
            self._configure(name, client)
        self.clients[name] = client
        self._built_from[name] = upstream

    async def replace(self, settings: Settings, tg: anyio.abc.TaskGroup) -> list[str]:
        """Rebuild the clients whose upstream settings changed (and drop removed ones); the old
        ones are retired in `tg`. Returns the names that changed."""
        changed: list[str] = []
        for name in list(self.clients):
            if name not in settings.upstreams:
                self._retire(self.clients.pop(name), tg)
                self._built_from.pop(name, None)
                changed.append(name)
        for name, upstream in settings.upstreams.items():
            if name in self.clients and self._built_from.get(name) == upstream:
                continue
            old = self.clients.get(name)
            if old is None and name not in self._built_from:
                continue  # an upstream nothing opened before: opened when a part needs it
            await self._open(name, upstream)
            if old is not None:
                self._retire(old, tg)
            changed.append(name)
        if changed:
            log.info("service.clients_replaced", upstreams=changed)
        return changed

    def _retire(self, client: AnyClient, tg: anyio.abc.TaskGroup) -> None:
        self._retiring.add(client)
        tg.start_soon(self._close_when_idle, client)

    async def _close_when_idle(self, client: AnyClient) -> None:
        try:
            with anyio.move_on_after(self.grace):
                await client.session.idle()
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
            self._retiring.discard(client)

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for client in [*self.clients.values(), *self._retiring]:
                await client.close()
        self.clients.clear()
        self._retiring.clear()
