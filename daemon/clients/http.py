"""The shared HTTP core: one session per upstream, retries, rate budget, typed errors.

Every upstream client (Blesta, Reseller, Billomat, Halo, NetSapiens) sends through an
`UpstreamSession`, so timeouts, concurrency, retry policy, auth and error translation behave the
same everywhere and are tested once. aiohttp exceptions never leave this module: they are turned
into the `daemon.errors` tree here, the way httpx translates httpcore's at one boundary.

Retry policy (DESIGN §5): exponential backoff with full jitter on connection errors, timeouts,
5xx and 429; `Retry-After` (seconds or HTTP-date) honoured on 429/503, or whatever an upstream's
`retry_after` hook reads (Billomat's `X-Rate-Limit-Reset`); 4xx other than 408/429 never retried.
A non-idempotent request (POST) is retried only when the upstream cannot have acted on it:
429, 503, or a connection that was never established.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import aiohttp
import structlog
from multidict import CIMultiDict
from yarl import URL

from daemon import __version__
from daemon.clients.errormap import ErrorReader, map_error
from daemon.clients.priority import ACTION_BUDGET_WAIT, ActionScope, current_action
from daemon.clients.ratelimit import NoRoom, RateBudget, RateLimit
from daemon.clients.response import ACCEPT_ENCODING, Response, parse_retry_after, read_capped
from daemon.clock import Clock
from daemon.errors import (
    BudgetExhausted,
    ConnectError,
    NetworkError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

log = structlog.get_logger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
Params = Mapping[str, Any] | Sequence[tuple[str, Any]]


MiB = 1024 * 1024


@dataclass(frozen=True)
class HttpOptions:
    """Per-upstream transport settings (from the upstream's config table)."""

    timeout: float = 30.0
    max_retries: int = 4
    max_concurrency: int = 4
    rate_limit: RateLimit | None = None
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    retry_after_cap: float = 900.0  # never wait longer than this once on an upstream's say-so
    max_retry_wait: float = 600.0  # all the waiting one request may do between its tries
    max_response_bytes: int = 64 * MiB  # per answer, after decompression
    action_reserve: float = 0.0  # share of the rate budget only actions may use
    user_agent: str = f"integration-daemon/{__version__}"


class Auth(Protocol):
    """Adds credentials to a request and reacts to a 401 (see daemon.clients.auth)."""

    async def headers(self, session: UpstreamSession) -> Mapping[str, str]:
        """Headers to add to the next request (may refresh a token first)."""
        ...

    async def unauthorized(self, session: UpstreamSession, sent: Mapping[str, str]) -> bool:
        """A request sent with `sent` headers got 401. True: try once more with new headers."""
        ...


RetryAfterHook = Callable[[Response, float], float | None]
BackoffHook = Callable[[int], float]


class UpstreamSession:
    """One aiohttp session to one upstream, with its retry, budget and auth policy.

    Open with `async with UpstreamSession(...) as s:`; the service's exit stack owns it.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        options: HttpOptions,
        *,
        clock: Clock,
        auth: Auth | None = None,
        secrets: Iterable[str] = (),
        errors: ErrorReader | None = None,
        retry_after: RetryAfterHook | None = None,
        rate_limited_backoff: BackoffHook | None = None,
        default_headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ):
        self.name = name
        self.base_url = URL(base_url.rstrip("/") + "/")
        self.options = options
        self.clock = clock
        self.auth = auth
        self.secrets: list[str] = [s for s in secrets if s]
        self.errors = errors
        self._retry_after_hook = retry_after
        self._rate_limited_backoff = rate_limited_backoff
        self._default_headers = dict(default_headers or {})
        self._rng = rng or random.Random()
        self.budget = (
            RateBudget(options.rate_limit, clock, reserve=options.action_reserve)
            if options.rate_limit
            else None
        )
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(max(1, options.max_concurrency))
        self.requests_sent = 0
        self.in_flight = 0  # logical requests under way (retries and waits included)
        self._idle = asyncio.Event()
        self._idle.set()
        # Told of every HTTP attempt (retries and token requests too): the upstream's name and
        # the status, None when no answer came. Set by the service (`Metrics.attach_client`).
        self.on_response: Callable[[str, int | None], None] | None = None
        self._observer_failed = False

    async def __aenter__(self) -> UpstreamSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.options.max_concurrency)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
                headers={
                    "User-Agent": self.options.user_agent,
                    "Accept-Encoding": ACCEPT_ENCODING,
                    **self._default_headers,
                },
                # We inflate bodies ourselves, under max_response_bytes (clients/response.py).
                auto_decompress=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def add_secret(self, value: str) -> None:
        """Remember a secret obtained later (a token) so excerpts never show it."""
        if value and value not in self.secrets:
            self.secrets.append(value)

    def url(self, path: str) -> URL:
        """Resolve `path` against the base URL. A path that would leave the upstream's origin (a
        full URL, in any case of its scheme) is refused: the session's credentials go
        with every request it makes. (Found by probing: `daemon api blesta <URL> ...` sent
        Blesta's Basic credentials to the host it named.)"""
        target = self.base_url.join(URL(path.lstrip("/")))
        if target.origin() != self.base_url.origin():
            raise ValueError(f"{self.name}: a path that leaves the upstream's host is refused")
        return target

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        ceiling = min(self.options.backoff_cap, self.options.backoff_base * (2**attempt))
        return self._rng.uniform(0, ceiling)

    async def idle(self) -> None:
        """Return once no request is under way (a reload closes a replaced client only then)."""
        while self.in_flight:
            await self._idle.wait()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        data: Any = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        use_auth: bool = True,
        idempotent: bool | None = None,
        max_retries: int | None = None,
        raise_for_status: bool = True,
    ) -> Response:
        """Send one logical request, retrying per policy; returns a 2xx `Response` or raises.

        Every wait between tries counts against `max_retry_wait`, so an upstream that answers
        `Retry-After: 899` to every try cannot hold a job for an hour."""
        self.in_flight += 1  # retries and waits included: a reload closes a client after
        self._idle.clear()  # its requests, and only then (`idle()`)
        try:
            if self._session is None:
                raise RuntimeError(f"session for {self.name} is not open")
            method = method.upper()
            idem = method in IDEMPOTENT if idempotent is None else idempotent
            action = current_action()
            retries = self.options.max_retries if max_retries is None else max_retries
            if action is not None:
                retries = 0  # the dispatcher owns an action's retries (daemon.clients.priority)
            url = self.url(path)
            auth_retried = False
            attempt = 0
            waited = 0.0
            while True:
                req_headers: dict[str, str] = dict(headers or {})
                sent_auth: Mapping[str, str] = {}
                if use_auth and self.auth is not None:
                    sent_auth = await self.auth.headers(self)
                    req_headers.update(sent_auth)
                try:
                    # Wait for a slot *before* aiohttp's timeout starts: its `total` also counts
                    # time queued for a pooled connection, which failed healthy requests as timeouts
                    # whenever more than max_concurrency were waiting. The budget is taken inside
                    # the slot so a recorded start is (almost) the moment the request leaves.
                    async with self._slots:
                        await self._take_budget(action, method, url)
                        if action is not None:
                            action.sent += 1
                        started = self.clock.monotonic()
                        resp = await self._send(method, url, params, data, json_body, req_headers)
                except BudgetExhausted:
                    raise  # nothing left: the dispatcher defers the action
                except UpstreamError as exc:
                    self._observe(exc.status)
                    wait = self.backoff(attempt)
                    retry = exc.transient and (idem or isinstance(exc, ConnectError))
                    if retry and attempt < retries and waited + wait <= self.options.max_retry_wait:
                        self._log_retry(method, url, attempt, wait, exc)
                        await self.clock.sleep(wait)
                        waited += wait
                        attempt += 1
                        continue
                    self._log_giving_up(method, url, attempt, exc)
                    raise
                duration = self.clock.monotonic() - started
                self._observe(resp.status)
                log.debug(
                    "http.request",
                    upstream=self.name,
                    method=method,
                    path=url.path,
                    status=resp.status,
                    duration_ms=round(duration * 1000, 1),
                    attempt=attempt + 1,
                )
                if resp.ok or not raise_for_status:
                    return resp
                if resp.status == 401 and use_auth and self.auth is not None and not auth_retried:
                    auth_retried = True
                    if await self.auth.unauthorized(self, sent_auth):
                        continue
                error = map_error(resp, self.errors)
                retryable = resp.status in (408, 429) or resp.status >= 500 or error.transient
                safe = idem or resp.status in (429, 503)
                if retryable and safe and attempt < retries:
                    delay = self._retry_wait(resp, attempt, error)
                    if delay is None or waited + delay > self.options.max_retry_wait:
                        self._log_giving_up(method, url, attempt, error, wait_s=delay)
                        raise error
                    if resp.status == 429 and self.budget is not None:
                        self.budget.penalise(delay)
                    self._log_retry(method, url, attempt, delay, error)
                    await self.clock.sleep(delay)
                    waited += delay
                    attempt += 1
                    continue
                if retryable:
                    self._log_giving_up(method, url, attempt, error)
                raise error

        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _take_budget(self, action: ActionScope | None, method: str, url: URL) -> None:
        """A start in the rate budget: a sync waits its turn; an action draws on the reserved
        share too, but waits at most ACTION_BUDGET_WAIT (`BudgetExhausted` past that)."""
        if self.budget is None:
            return
        if action is None:
            await self.budget.acquire()
            return
        try:
            await self.budget.acquire(priority=True, max_wait=ACTION_BUDGET_WAIT)
        except NoRoom as full:
            raise BudgetExhausted(
                f"rate budget spent; room again in {full.retry_in:.0f} s",
                retry_in=full.retry_in,
                upstream=self.name,
                method=method,
                path=url.path,
            ) from None

    def _observe(self, status: int | None) -> None:
        """Tell `on_response` about one attempt; an observer's failure never fails a request
        (it is logged once per session: it is a bug, and would repeat on every request)."""
        if self.on_response is None:
            return
        try:
            self.on_response(self.name, status)
        except Exception as exc:
            if not self._observer_failed:
                self._observer_failed = True
                log.error("http.observer_failed", upstream=self.name, error=repr(exc))

    def _retry_wait(self, resp: Response, attempt: int, error: UpstreamError) -> float | None:
        """Seconds before the next try; None when the upstream asks for more than we allow."""
        asked: float | None = None
        if self._retry_after_hook is not None:
            asked = self._retry_after_hook(resp, self.clock.now().timestamp())
        if asked is None and resp.status in (429, 503):
            asked = parse_retry_after(resp.headers.get("Retry-After"), self.clock.now().timestamp())
        if asked is None and resp.status == 429 and self._rate_limited_backoff is not None:
            asked = self._rate_limited_backoff(attempt)
        if isinstance(error, RateLimited) and asked is not None:
            error.retry_after = asked
        if asked is None:
            return self.backoff(attempt)
        if not math.isfinite(asked) or asked > self.options.retry_after_cap:
            return None
        return max(0.0, asked)

    async def _send(
        self,
        method: str,
        url: URL,
        params: Params | None,
        data: Any,
        json_body: Any,
        headers: Mapping[str, str],
    ) -> Response:
        assert self._session is not None
        self.requests_sent += 1
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                data=data,
                json=json_body,
                headers=CIMultiDict(headers),
                allow_redirects=False,
            ) as r:
                body = await read_capped(
                    r,
                    limit=self.options.max_response_bytes,
                    upstream=self.name,
                    method=method,
                    url=url,
                )
                return Response(
                    method, r.url, r.status, r.headers, body, self.name, self.secrets, self.errors
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no answer within {self.options.timeout:g}s",
                upstream=self.name,
                method=method,
                path=url.path,
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(
                f"cannot connect: {exc.os_error.strerror or exc.os_error}",
                upstream=self.name,
                method=method,
                path=url.path,
            ) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise NetworkError(
                f"connection failed: {type(exc).__name__}",
                upstream=self.name,
                method=method,
                path=url.path,
            ) from exc

    def _log_retry(
        self, method: str, url: URL, attempt: int, wait: float, exc: UpstreamError
    ) -> None:
        log.info(
            "http.retry",
            upstream=self.name,
            method=method,
            path=url.path,
            status=exc.status,
            error=type(exc).__name__,
            attempt=attempt + 1,
            wait_s=round(wait, 3),
        )

    def _log_giving_up(
        self,
        method: str,
        url: URL,
        attempt: int,
        exc: UpstreamError,
        wait_s: float | None = None,
    ) -> None:
        fields: dict[str, Any] = {}
        if wait_s is not None:
            fields["asked_wait_s"] = round(wait_s, 3)
        log.warning(
            "http.giving_up",
            upstream=self.name,
            method=method,
            path=url.path,
            status=exc.status,
            error=type(exc).__name__,
            attempts=attempt + 1,
            **fields,
        )


class UpstreamClient:
    """Base of every upstream client: the client owns its session, so `async with client:`
    opens and closes exactly one connection pool, and the client's name is its session's."""

    session: UpstreamSession

    @property
    def name(self) -> str:
        return self.session.name

    async def __aenter__(self) -> Self:
        await self.session.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def close(self) -> None:
        await self.session.close()
