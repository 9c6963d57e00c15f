"""NetSapiens API v2 client: password grant with refresh, messaging, CDRs, event subscriptions.

Facts this module is faithful to (upstream-apis §5):

- base `{api_url}/ns-api/v2`; `~` in a path means the token's own domain/user;
- tokens come from `POST /tokens` with a JSON body: the password grant, or the refresh grant
  while we hold a refresh token. Whether a spent or revoked refresh token answers 400 or 401 is
  unknown, so any refused refresh (4xx) falls back to the password grant; a refused password
  grant is an `AuthError` and `TokenAuth` marks the upstream unhealthy and fails fast;
- an expired access token answers 401 "The access token provided has expired": the core session
  refreshes once and retries (single-flight, so a burst of callers causes one token request);
- writes answer 202 `{"code":202,"message":"Accepted"}` without the resource, or 200 with it;
  any 2xx is success (a naive port that accepts only 200 treats every sent SMS as failed);
- a message session id is caller-chosen: 32+ characters of `[A-Za-z0-9_]`, checked here before
  any request so a bad id never reaches the PBX;
- lists are bare arrays paged with `start` (0-based offset) and `limit`; we page until a short
  page;
- subscriptions without `subscription-expires-datetime` die with the creating token (≈1 h), so
  `create` always sends an explicit expiry; a duplicate answers 409, raised as
  `SubscriptionExists` so the keeper can re-list and adopt;
- datetimes arrive as `2024-12-09T21:27:11+00:00` or `2023-10-09 17:16:36` (UTC): both parse.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import structlog

from daemon.clients.auth import TokenAuth
from daemon.clients.errormap import ErrorDetail
from daemon.clients.http import UpstreamClient, UpstreamSession
from daemon.clients.ns_subscriptions import Subscription, SubscriptionExists, SubscriptionsApi
from daemon.clients.ns_wire import (
    DEFAULT_PAGE,
    format_ns_datetime,
    parse_ns_datetime,
    validate_session_id,
)
from daemon.clients.paging import DEFAULT_MAX_PAGES, walk_pages
from daemon.clients.response import Response
from daemon.clients.settings import options_from_settings, secret_value
from daemon.clock import Clock
from daemon.config.upstreams import NetsapiensUpstream
from daemon.errors import (
    AuthError,
    MalformedResponse,
    UpstreamError,
    redact_excerpt,
)

__all__ = [
    "MESSAGE_TYPES",
    "NETSAPIENS_ERRORS",
    "NetsapiensAuth",
    "NetsapiensClient",
    "Subscription",
    "SubscriptionExists",
    "SubscriptionsApi",
    "format_ns_datetime",
    "parse_ns_datetime",
    "validate_session_id",
]

log = structlog.get_logger(__name__)

API_PREFIX = "/ns-api/v2"
TOKEN_PATH = "tokens"  # noqa: S105 - a path, not a secret
MESSAGE_TYPES = frozenset({"sms", "mms", "chat", "chat-media"})


def _message(resp: Response, body: Any = None) -> str:
    """The `message` of an `{"code","message"}` error body, else ""."""
    if body is None:
        try:
            body = resp.parse_json() if resp.body.strip() else None
        except UpstreamError:
            body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return redact_excerpt(body["message"], resp.secrets, limit=200)
    return ""


class NetsapiensErrors:
    """NetSapiens' `{"code", "message"}` bodies; token refusals are `AuthError`, a 409 on
    `/subscriptions` is `SubscriptionExists`, and a 2xx whose body is such an error object with
    an error code is an error too."""

    def detail(self, resp: Response) -> ErrorDetail | None:
        text = _message(resp)
        s = resp.status
        path = resp.url.path.rstrip("/")
        if path.endswith(f"{API_PREFIX}/{TOKEN_PATH}") and 400 <= s < 500 and s != 429:
            return ErrorDetail(f"token request refused: {text or f'HTTP {s}'}", kind=AuthError)
        if s == 409 and path.endswith("/subscriptions"):
            return ErrorDetail(text or "subscription already exists", kind=SubscriptionExists)
        return ErrorDetail(text)

    def failure_in_success(self, resp: Response, body: Any) -> ErrorDetail | None:
        if isinstance(body, dict) and set(body) <= {"code", "message"}:
            code = body.get("code")
            if isinstance(code, int) and not isinstance(code, bool) and code >= 400:
                text = _message(resp, body) or f"error code {code}"
                if resp.url.path.rstrip("/").endswith(f"{API_PREFIX}/{TOKEN_PATH}"):
                    # A grant refused inside a 200 is a refusal all the same.
                    return ErrorDetail(f"token request refused: {text}", kind=AuthError)
                return ErrorDetail(text)
        return None


NETSAPIENS_ERRORS = NetsapiensErrors()


class NetsapiensAuth(TokenAuth):
    """Password grant, then refresh grants with the (rotating) refresh token we hold."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        username: str,
        password: str,
        *,
        clock: Clock,
        leeway: float = 60.0,
        failure_backoff: float = 60.0,
    ):
        super().__init__(leeway=leeway, failure_backoff=failure_backoff)
        self.client_id = client_id
        self._client_secret = client_secret
        self.username = username
        self._password = password
        self._clock = clock
        self.obtained_at: datetime | None = None  # wall time of the last token, for token_info

    async def obtain(self, session: UpstreamSession) -> Mapping[str, Any]:
        if self.state.refresh_token:
            try:
                payload = await self._grant(
                    session,
                    {"grant_type": "refresh_token", "refresh_token": self.state.refresh_token},
                )
            except UpstreamError as exc:
                refused = isinstance(exc, AuthError) or (
                    not exc.transient and exc.status is not None and 400 <= exc.status < 500
                )
                if not refused:
                    raise
                # A spent, rotated or revoked refresh token: start over with the password.
                log.info("auth.refresh_refused", upstream=session.name, status=exc.status)
                self.state.refresh_token = None
            else:
                if _carries_token(payload):
                    self.obtained_at = self._clock.now()
                    return payload
                # Refused OAuth-style, inside a 200 (`{"error": "invalid_grant"}`): the same as
                # a 4xx. Kept, the dead refresh token was tried after every back-off, for ever
                # (found by probing).
                log.info("auth.refresh_refused", upstream=session.name, status=200)
                self.state.refresh_token = None
        payload = await self._grant(
            session,
            {"grant_type": "password", "username": self.username, "password": self._password},
        )
        self.obtained_at = self._clock.now()
        return payload

    async def _grant(self, session: UpstreamSession, grant: dict[str, str]) -> dict[str, Any]:
        body = {"client_id": self.client_id, "client_secret": self._client_secret, **grant}
        resp = await session.request(
            "POST", TOKEN_PATH, json_body=body, use_auth=False, idempotent=True
        )
        payload = resp.json()
        if not isinstance(payload, dict):
            raise AuthError(
                "token endpoint answered a non-object", upstream=session.name, status=resp.status
            )
        return payload


def _carries_token(payload: Mapping[str, Any]) -> bool:
    token = payload.get("access_token")
    return isinstance(token, str) and bool(token)


def _seg(value: str) -> str:
    """A path segment; `~` (my domain/user) and `*` stay literal."""
    return quote(value, safe="~*@")


@dataclass
class NsList:
    """A bare-array list paged by `start` (a 0-based offset) and `limit`, for the walker."""

    client: NetsapiensClient
    path: str
    params: dict[str, Any]
    limit: int

    @property
    def label(self) -> str:
        return self.path

    @property
    def upstream(self) -> str:
        return self.client.name

    @property
    def first_page_size(self) -> int | None:
        return self.limit

    async def fetch(self, page_no: int, size: int | None) -> list[dict[str, Any]]:
        start = (page_no - 1) * self.limit
        page = await self.client.request(
            "GET", self.path, params={**self.params, "start": start, "limit": self.limit}
        )
        if page is None:
            return []
        if not isinstance(page, list) or not all(isinstance(i, dict) for i in page):
            raise MalformedResponse(
                f"expected a list of objects from {self.path}", upstream=self.client.name
            )
        return page

    def records(self, page: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return page

    def announced_total(self, page: list[dict[str, Any]]) -> int | None:
        return None

    def announced_size(self, page: list[dict[str, Any]]) -> int | None:
        return None

    async def count(self) -> int | None:
        return None

    def missing_total(self, first: list[Any]) -> str | None:
        return None  # this list never announces a total


class NetsapiensClient(UpstreamClient):
    """NetSapiens v2 over one `UpstreamSession`; use as `async with NetsapiensClient...`."""

    kind = "netsapiens"

    def __init__(self, session: UpstreamSession, auth: NetsapiensAuth, *, api_url: str = ""):
        self.session = session

        self.auth = auth
        self.api_url = api_url
        self.subscriptions = SubscriptionsApi(self)

    @classmethod
    def from_settings(cls, cfg: NetsapiensUpstream, *, clock: Clock) -> NetsapiensClient:
        """Build from an `[upstreams.<name>]` table of kind netsapiens (unopened)."""
        api_url = str(cfg.api_url).rstrip("/")
        client_secret, password = secret_value(cfg.client_secret), secret_value(cfg.password)
        auth = NetsapiensAuth(
            str(cfg.client_id), client_secret, str(cfg.username), password, clock=clock
        )
        session = UpstreamSession(
            str(cfg.name),
            api_url + API_PREFIX,
            options_from_settings(cfg),
            clock=clock,
            auth=auth,
            secrets=[client_secret, password],
            errors=NETSAPIENS_ERRORS,
            default_headers={"Accept": "application/json"},
        )
        return cls(session, auth, api_url=api_url)

    @property
    def healthy(self) -> bool:
        return self.auth.healthy

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one call; returns the parsed JSON body (None when empty). Any 2xx is success."""
        resp = await self.session.request(
            method, path, params=params, json_body=json, idempotent=idempotent
        )
        if not resp.body.strip():
            return None
        return resp.json()

    async def paged(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        limit: int = DEFAULT_PAGE,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every object of a bare-array list, `start` (0-based) + `limit` until a short page
        (`daemon.clients.paging`: a repeated page raises, `max_pages` bounds the walk)."""
        source = NsList(self, path, dict(params or {}), max(1, min(limit, 1000)))
        walk = walk_pages(source, window=1, max_pages=max_pages)
        async with aclosing(walk) as stream:
            async for page in stream:
                for item in page:
                    yield item

    async def token_info(self) -> dict[str, Any]:
        """Who the token belongs to and until when (never the token itself)."""
        await self.auth.headers(self.session)
        info = dict(self.auth.state.info or {})
        expires_at = None
        lifetime = self.auth.state.lifetime  # as the token's state read it: always sane
        if self.auth.obtained_at is not None and lifetime is not None:
            expires_at = (self.auth.obtained_at + timedelta(seconds=lifetime)).isoformat()
        return {
            "user": info.get("user") or info.get("username"),
            "domain": info.get("domain"),
            "territory": info.get("territory"),
            "scope": info.get("scope"),
            "expires_at": expires_at,
            "api_url": self.api_url + API_PREFIX,
            "apiversion": info.get("apiversion"),
        }

    @staticmethod
    def new_session_id() -> str:
        """A fresh message session id: 32 random hex characters, as the API wants."""
        return secrets.token_hex(16)

    async def send_message(
        self,
        domain: str = "~",
        user: str = "~",
        *,
        message: str,
        destination: str | Sequence[str],
        from_number: str | None = None,
        type: str = "sms",
        session_id: str | None = None,
        data: bytes | str | None = None,
        mime_type: str | None = None,
        size: int | None = None,
    ) -> dict[str, Any]:
        """Send a message: a new session when `session_id` is None, else into that session.

        Returns the upstream's answer (the Message object, or `{"code":202,...}`); any 2xx is
        success. `data` for media may be raw bytes (encoded here) or base64 text."""
        if type not in MESSAGE_TYPES:
            raise ValueError(f"message type must be one of {sorted(MESSAGE_TYPES)}")
        if session_id is not None:
            validate_session_id(session_id)
        if type in ("sms", "mms") and not from_number:
            raise ValueError(f"{type} needs a from_number (the sending DID)")
        body: dict[str, Any] = {
            "type": type,
            "message": message,
            "destination": destination if isinstance(destination, str) else list(destination),
        }
        if from_number:
            body["from-number"] = from_number
        if data is not None:
            if isinstance(data, bytes):
                size = len(data) if size is None else size
                data = base64.b64encode(data).decode("ascii")
            body["data"] = data
            if mime_type:
                body["mime-type"] = mime_type
            if size is not None:
                body["size"] = size
        base = f"domains/{_seg(domain)}/users/{_seg(user)}"
        path = (
            f"{base}/messages"
            if session_id is None
            else (f"{base}/messagesessions/{session_id}/messages")
        )
        result = await self.request("POST", path, json=body)
        return result if isinstance(result, dict) else {"result": result}

    async def get_messages(
        self,
        domain: str = "~",
        user: str | None = None,
        session_id: str | None = None,
        limit: int = 100,
        *,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> list[dict[str, Any]]:
        """Message sessions (domain-wide, or one user's), or one session's messages — every
        page of them (`limit` is the page size), as the seed SDK reads them."""
        if session_id is not None:
            path = self.session_messages_path(domain, user or "~", session_id)
        elif user is None:
            path = f"domains/{_seg(domain)}/messagesessions"
        else:
            path = f"domains/{_seg(domain)}/users/{_seg(user)}/messagesessions"
        return [item async for item in self.paged(path, limit=limit, max_pages=max_pages)]

    @staticmethod
    def session_messages_path(domain: str, user: str, session_id: str) -> str:
        """The list of one session's messages (`ValueError` for a malformed session id)."""
        validate_session_id(session_id)
        return f"domains/{_seg(domain)}/users/{_seg(user)}/messagesessions/{session_id}/messages"

    async def list_cdrs(
        self,
        domain: str = "~",
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = DEFAULT_PAGE,
        *,
        user: str | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> list[dict[str, Any]]:
        """CDRs between `start` and `end`, every page."""
        params: dict[str, Any] = {}
        if start is not None:
            params["datetime-start"] = format_ns_datetime(start)
        if end is not None:
            params["datetime-end"] = format_ns_datetime(end)
        path = f"domains/{_seg(domain)}" + (f"/users/{_seg(user)}" if user else "") + "/cdrs"
        return [
            item async for item in self.paged(path, params=params, limit=limit, max_pages=max_pages)
        ]
