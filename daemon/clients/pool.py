"""The service's open clients, by upstream name, and how a reload replaces them.

A reload compares each `[upstreams.<name>]` table with the one the running client was built
from: an unchanged upstream keeps its client (and its tokens, budget and connections); a changed
one gets a new client at once, and the old one is closed only after the requests it is carrying
have finished (bounded by `grace`), so nothing in flight is cut. Removed upstreams are closed the
same way. Parts look clients up by name when they need one, so they pick the new one up.

A reload does it in two steps, so that a client that cannot be built refuses the reload with
nothing changed: `prepare` builds and opens every new client (closing them again and raising if
any fails) without touching the pool; `commit` then swaps them in and cannot fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import structlog

from daemon.clients.factory import build_client
from daemon.clock import Clock
from daemon.config import Settings, UpstreamSettings
from daemon.errors import DaemonError

if TYPE_CHECKING:
    from daemon.clients.factory import AnyClient

    Configure = Callable[[str, AnyClient], None]

log = structlog.get_logger(__name__)


@dataclass
class PoolChange:
    """What `ClientPool.prepare` built for a new config: opened clients not yet in use, and the
    upstreams the config no longer has."""

    settings: Settings
    opened: dict[str, AnyClient] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The upstreams that change (new or rebuilt clients, and removed ones)."""
        return [*self.removed, *self.opened]


class ClientPool:
    def __init__(
        self,
        *,
        clock: Clock,
        configure: Configure | None = None,
        forget: Callable[[str], None] | None = None,
        grace: float = 30.0,
    ):
        self.clock = clock
        self.grace = grace
        self._configure = configure  # e.g. attach metrics hooks to a new client
        self._forget = forget  # e.g. drop a removed upstream's metrics
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

    async def replace(
        self, settings: Settings, tg: anyio.abc.TaskGroup, *, open_new: bool = False
    ) -> list[str]:
        """Rebuild the clients whose upstream settings changed (and drop removed ones); the old
        ones are retired in `tg`. Returns the names that changed."""
        return self.commit(await self.prepare(settings, open_new=open_new), tg)

    async def prepare(self, settings: Settings, *, open_new: bool = False) -> PoolChange:
        """Build and open a client for each upstream whose table changed — and, with
        `open_new`, for each upstream not open yet (a service opens them all) — without
        touching the pool. A client that cannot be built raises `DaemonError` naming its
        upstream, after the ones already opened are closed again."""
        change = PoolChange(
            settings, removed=[n for n in self.clients if n not in settings.upstreams]
        )
        try:
            for name, upstream in settings.upstreams.items():
                if name in self.clients and self._built_from.get(name) == upstream:
                    continue
                if name not in self.clients and name not in self._built_from and not open_new:
                    continue  # an upstream nothing opened before: opened when a part needs it
                try:
                    client = build_client(upstream, clock=self.clock)
                    await client.__aenter__()
                except Exception as exc:
                    raise DaemonError(
                        f"upstream {name!r}: cannot build its client: {type(exc).__name__}: {exc}"
                    ) from exc
                change.opened[name] = client
        except BaseException:
            await self.discard(change)
            raise
        return change

    def clients_after(self, change: PoolChange) -> dict[str, AnyClient]:
        """The clients by name as they will be once `change` is committed."""
        merged = {n: c for n, c in self.clients.items() if n not in change.removed}
        merged.update(change.opened)
        return merged

    def commit(self, change: PoolChange, tg: anyio.abc.TaskGroup) -> list[str]:
        """Swap the prepared clients in; the ones they replace (and removed upstreams' clients)
        are retired in `tg`, closed once idle. Returns the names that changed."""
        for name in change.removed:
            old = self.clients.pop(name, None)
            self._built_from.pop(name, None)
            if self._forget is not None:
                self._forget(name)
            if old is not None:
                self._retire(old, tg)
        for name, client in change.opened.items():
            if self._configure is not None:
                self._configure(name, client)
            old = self.clients.get(name)
            self.clients[name] = client
            self._built_from[name] = change.settings.upstreams[name]
            if old is not None:
                self._retire(old, tg)
        changed = change.names
        if changed:
            log.info("service.clients_replaced", upstreams=changed)
        return changed

    async def discard(self, change: PoolChange) -> None:
        """Close the clients `prepare` opened (a reload refused after them)."""
        with anyio.CancelScope(shield=True):
            for client in change.opened.values():
                await client.close()
        change.opened.clear()

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
