"""Credentials for upstream requests.

Static schemes (HTTP Basic, API-key headers) simply add headers. OAuth schemes are split the
way httpx splits its auth flows: `TokenState` is pure (no I/O, unit-tested with plain numbers),
and `TokenAuth` drives it against the network with single-flight refresh — any number of callers
that find the token stale, or get a 401 with the same token, cause one token request.
"""

from __future__ import annotations

import asyncio
import base64
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from daemon.errors import AuthError, UpstreamError, UpstreamResponseError
from daemon.logs import add_secrets

if TYPE_CHECKING:
    from daemon.clients.http import UpstreamSession

log = structlog.get_logger(__name__)

TOKEN_FIELDS = frozenset({"access_token", "refresh_token", "id_token"})


class StaticHeaders:
    """Fixed credential headers (Blesta API key headers, Billomat keys)."""

    def __init__(self, headers: Mapping[str, str]):
        self._headers = dict(headers)

    async def headers(self, session: UpstreamSession) -> Mapping[str, str]:
        return self._headers

    async def unauthorized(self, session: UpstreamSession, sent: Mapping[str, str]) -> bool:
        return False  # nothing to refresh: a 401 is final


class BasicAuth(StaticHeaders):
    """HTTP Basic (Blesta, Blesta Reseller)."""

    def __init__(self, user: str, password: str):
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        super().__init__({"Authorization": f"Basic {token}"})


@dataclass
class TokenState:
    """What we know about the current OAuth token; pure, so expiry logic is testable alone.

    Times are monotonic seconds. `leeway` refreshes early so a request never leaves with a token
    that expires in flight.
    """

    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None
    leeway: float = 60.0
    refresh_at: float | None = None  # `leeway` before expiry, at most half the lifetime
    lifetime: float | None = None  # seconds the current token was given, as read
    generation: int = 0  # bumps on every new token; tells "already refreshed" from "stale"
    info: Mapping[str, Any] | None = None

    def needs_refresh(self, now: float) -> bool:
        if self.access_token is None:
            return True
        return self.refresh_at is not None and now >= self.refresh_at

    def update(self, payload: Mapping[str, Any], now: float) -> None:
        """Take a token endpoint's answer; raises `ValueError` if it carries no token."""
        token = payload.get("access_token")
        if not isinstance(token, str) or not token:
            raise ValueError("token response has no access_token")
        self.access_token = token
        if isinstance(payload.get("refresh_token"), str) and payload["refresh_token"]:
            self.refresh_token = payload["refresh_token"]
        try:
            expires_in = float(payload.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        if not math.isfinite(expires_in) or expires_in <= 0:
            # Nothing usable said (0, negative, NaN, 1e999): an hour, as when it is missing; a
            # token that ends sooner is answered 401 and replaced then. Infinity crashed the
            # refresh's log line, and 0 made every caller fetch its own token (found by
            # probing).
            expires_in = 3600.0
        self.lifetime = expires_in
        self.expires_at = now + expires_in
        # Early by `leeway`, but never before half the token's life: with a lifetime under the
        # leeway a new token already "needed" refreshing, which broke the single flight — every
        # caller and every request fetched a token (found by probing: `expires_in: 30`).
        self.refresh_at = self.expires_at - min(self.leeway, expires_in / 2)
        self.generation += 1
        # Keep what the endpoint said about the token (user, domain, scope...), never the
        # tokens themselves: `info` is shown by `daemon api ... token` and may be logged.
        self.info = {k: v for k, v in payload.items() if k not in TOKEN_FIELDS}

    def invalidate(self) -> None:
        self.access_token = None

    def authorization(self) -> dict[str, str]:
        if self.access_token is None:
            raise RuntimeError("no access token")
        return {"Authorization": f"Bearer {self.access_token}"}


class TokenAuth(ABC):
    """Drives a `TokenState` for one upstream session.

    Subclasses implement `obtain()`: send the token request(s) through
    `session.request(..., use_auth=False)` (so the refresh cannot recurse) and return the
    endpoint's JSON. A refused grant raises `AuthError`; the upstream is then marked unhealthy
    (`healthy`, `last_error`) and callers fail fast for `failure_backoff` seconds instead of
    hammering the token endpoint.
    """

    def __init__(self, *, leeway: float = 60.0, failure_backoff: float = 60.0):
        self.state = TokenState(leeway=leeway)
        self._lock = asyncio.Lock()
        self.failure_backoff = failure_backoff
        self.healthy = True
        self.last_error: str | None = None
        self._failed_until: float | None = None
        self._failure: AuthError | None = None
        self.refreshes = 0
        # Called with the session's name after each token obtained (`Metrics.attach_client`).
        self.on_refresh: Callable[[str], None] | None = None

    @abstractmethod
    async def obtain(self, session: UpstreamSession) -> Mapping[str, Any]:
        """Fetch a new token (refresh grant and/or primary grant)."""

    async def headers(self, session: UpstreamSession) -> Mapping[str, str]:
        now = session.clock.monotonic()
        if self.state.needs_refresh(now):
            await self._refresh(session, seen_generation=self.state.generation)
        return self.state.authorization()

    async def unauthorized(self, session: UpstreamSession, sent: Mapping[str, str]) -> bool:
        """A 401: refresh unless someone already did since `sent` was issued, then retry once."""
        if sent.get("Authorization") != self._current_header():
            return True  # the token changed meanwhile; just retry with the new one
        generation = self.state.generation
        self.state.invalidate()
        await self._refresh(session, seen_generation=generation)
        return True

    def _current_header(self) -> str | None:
        tok = self.state.access_token
        return f"Bearer {tok}" if tok else None

    async def _refresh(self, session: UpstreamSession, *, seen_generation: int) -> None:
        async with self._lock:
            now = session.clock.monotonic()
            if self.state.generation != seen_generation and not self.state.needs_refresh(now):
                return  # another caller refreshed while we waited for the lock
            if self._failed_until is not None and now < self._failed_until:
                assert self._failure is not None
                raise self._failure
            try:
                payload = await self.obtain(session)
                self.state.update(payload, session.clock.monotonic())
            except AuthError as exc:
                self._mark_failed(session, exc)
                raise
            except ValueError as exc:
                err = AuthError(
                    f"token endpoint answered without a token: {exc}", upstream=session.name
                )
                self._mark_failed(session, err)
                raise err from exc
            except UpstreamResponseError as exc:
                # A final answer that is no token (an HTML page, a 403, a 404): as good as a
                # refused grant — fail fast for the back-off rather than let every caller ask
                # again (found by probing: 20 callers, 20 token requests).
                err = AuthError(f"token endpoint: {exc}", upstream=session.name, status=exc.status)
                self._mark_failed(session, err)
                raise err from exc
            except UpstreamError:
                raise  # transient (network, 5xx): not an auth verdict; callers retry later
            # Registered before anything can log or fail with them: the session's excerpt
            # filter and the one redactor every log line and CLI output passes.
            tokens = [t for t in (self.state.access_token, self.state.refresh_token) if t]
            for secret in tokens:
                session.add_secret(secret)
            add_secrets(tokens, transient=True, owner=session.name)
            self.refreshes += 1
            self._failed_until = None
            self._failure = None
            if not self.healthy:
                log.info("auth.recovered", upstream=session.name)
            self.healthy = True
            self.last_error = None
            log.info(
                "auth.token_refreshed",
                upstream=session.name,
                expires_in=round((self.state.expires_at or now) - now),
            )
            if self.on_refresh is not None:
                try:
                    self.on_refresh(session.name)
                except Exception as exc:  # an observer's bug must not fail the refresh
                    log.error("auth.observer_failed", upstream=session.name, error=repr(exc))

    def _mark_failed(self, session: UpstreamSession, exc: AuthError) -> None:
        self.healthy = False
        self.last_error = str(exc)
        self._failure = exc
        self._failed_until = session.clock.monotonic() + self.failure_backoff
        self.state.invalidate()
        log.error(
            "auth.failed", upstream=session.name, error=str(exc), retry_in_s=self.failure_backoff
        )
