"""HaloPSA client: OAuth client credentials, array-body writes, Halo's paging quirks.

Facts this module is faithful to (upstream-apis §4):

- the token comes from `POST {tenant_url}/auth/token[?tenant=<name>]` with a form body
  (`grant_type=client_credentials`, `client_id`, `client_secret`, `scope`); hosted tenants need
  `?tenant=`, so it is sent whenever one is configured. A bad client answers an OAuth error
  (`{"error": "invalid_client", "error_description": ...}`), which becomes an `AuthError`;
- the API lives under `{tenant_url}/api/` and takes `Authorization: Bearer <token>`; the token
  is refreshed before it expires and once on a 401, single-flight (`TokenAuth`), so a burst of
  callers holding a stale token causes one token request, and a revoked client fails fast
  instead of hammering the token endpoint;
- writes are `POST /api/<Resource>` with a JSON array; resources and their paging quirks live in
  `halo_resources`;
- Halo-hosted allows 300 requests per rolling 5 minutes: configure `rate_limit = "300/5m"` and the
  session's `RateBudget` waits before sending rather than collecting 429s; without it, a 429
  that names no Retry-After backs off across that window (`rate_limited_backoff`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon.clients.auth import TokenAuth
from daemon.clients.errormap import ErrorDetail
from daemon.clients.halo_resources import (
    RESOURCES,
    AgentResource,
    HaloPage,
    HaloResource,
    ResourceSpec,
    find_spec,
)
from daemon.clients.http import UpstreamClient, UpstreamSession
from daemon.clients.response import Response
from daemon.clients.settings import options_from_settings, secret_value
from daemon.clock import Clock
from daemon.config.upstreams import HaloUpstream
from daemon.errors import AuthError, UpstreamError, redact_excerpt

__all__ = ["RESOURCES", "HaloClient", "HaloPage", "HaloResource", "ResourceSpec"]

TOKEN_PATH = "auth/token"  # noqa: S105 - a path, not a secret


# Halo-hosted allows 300 requests per rolling 5 minutes and says so with a bare 429, no
# Retry-After: waiting 0.5 s · 2ⁿ (our generic backoff) fails the job inside 10 s, while the
# window needs minutes to roll. These waits span the window over the default four retries.
RATE_WINDOW = 300.0


def rate_limited_backoff(attempt: int) -> float:
    """Seconds to wait after the n-th 429 without Retry-After: 15, 30, 60, 120, 240 (capped)."""
    return float(min(RATE_WINDOW, 15.0 * 2.0**attempt))


def _json_or_none(resp: Response) -> Any:
    if not resp.body.strip():
        return None
    try:
        return resp.parse_json()
    except UpstreamError:
        return None


def _message(resp: Response) -> str:
    """The human part of an error body (JSON `message`/`error_description`, else text)."""
    body = _json_or_none(resp)
    text = ""
    if isinstance(body, dict):
        for key in ("error_description", "message", "Message", "error", "title"):
            if isinstance(body.get(key), str) and body[key]:
                text = body[key]
                break
    elif isinstance(body, str):
        text = body
    elif body is None and resp.body.strip() and resp.content_type != "text/html":
        text = resp.body[:400].decode("utf-8", errors="replace")
        return redact_excerpt(text, resp.secrets, limit=200, cut=len(resp.body) > 400)
    return redact_excerpt(text, resp.secrets, limit=200) if text else ""


# Keys an error body may carry; an object made only of these (with `error`) is no record.
_ERROR_KEYS = frozenset(
    {"error", "errors", "error_description", "message", "Message", "status", "title", "type",
     "traceId", "detail"}
)  # fmt: skip


def _is_token_path(resp: Response) -> bool:
    return resp.url.path.rstrip("/").lower().endswith("/auth/token")


class HaloErrors:
    """How Halo says what went wrong: OAuth errors from the token endpoint, text or JSON
    messages elsewhere, and `200 {"error": ...}` where data was asked for."""

    def detail(self, resp: Response) -> ErrorDetail | None:
        if _is_token_path(resp) and resp.status in (400, 401):
            body = _json_or_none(resp)
            code = body.get("error") if isinstance(body, dict) else None
            desc = body.get("error_description") if isinstance(body, dict) else None
            what = f"token request refused: {code or 'HTTP ' + str(resp.status)}"
            if isinstance(desc, str) and desc:
                what += f" ({redact_excerpt(desc, resp.secrets, limit=200)})"
            return ErrorDetail(what, kind=AuthError)
        return ErrorDetail(_message(resp))

    def failure_in_success(self, resp: Response, body: Any) -> ErrorDetail | None:
        if (
            isinstance(body, dict)
            and (body.get("error") or body.get("errors"))
            and set(body) <= _ERROR_KEYS
        ):
            if _is_token_path(resp):  # an OAuth refusal sent as a 200 is still a refusal
                return ErrorDetail(f"token request refused: {_message(resp) or 'error body'}",
                                   kind=AuthError)  # fmt: skip
            return ErrorDetail(_message(resp) or "error body")
        return None


HALO_ERRORS = HaloErrors()


class HaloAuth(TokenAuth):
    """Client-credentials grant against `{tenant_url}/auth/token`."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        scope: str = "all",
        tenant: str | None = None,
        leeway: float = 60.0,
        failure_backoff: float = 60.0,
    ):
        super().__init__(leeway=leeway, failure_backoff=failure_backoff)
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope or "all"
        self.tenant = tenant or None

    async def obtain(self, session: UpstreamSession) -> Mapping[str, Any]:
        resp = await session.request(
            "POST",
            TOKEN_PATH,
            params={"tenant": self.tenant} if self.tenant else None,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "scope": self.scope,
            },
            use_auth=False,
            idempotent=True,  # asking for a token twice is harmless
        )
        payload = resp.json()
        if not isinstance(payload, dict):
            raise AuthError(
                "token endpoint answered a non-object", upstream=session.name, status=resp.status
            )
        return payload


class HaloClient(UpstreamClient):
    """HaloPSA over one `UpstreamSession`; use as `async with HaloClient.from_settings(...)`.

    Each resource is an attribute (`client.tickets.list_all(open_only=True)`), also reachable by
    name with `resource("kb-articles")`; `request()` is the raw escape hatch.
    """

    kind = "halo"

    def __init__(self, session: UpstreamSession, *, page_concurrency: int | None = None):
        self.session = session

        self.page_concurrency = page_concurrency or session.options.max_concurrency

        def res(name: str) -> HaloResource:
            return HaloResource(self, RESOURCES[name])

        self.tickets = res("tickets")
        self.actions = res("actions")
        self.clients = res("clients")
        self.users = res("users")
        self.agents = AgentResource(self, RESOURCES["agents"])
        self.assets = res("assets")
        self.sites = res("sites")
        self.invoices = res("invoices")
        self.contracts = res("contracts")
        self.opportunities = res("opportunities")
        self.projects = res("projects")
        self.appointments = res("appointments")
        self.items = res("items")
        self.kb_articles = res("kb_articles")
        self.suppliers = res("suppliers")
        self.attachments = res("attachments")
        self.statuses = res("statuses")
        self.teams = res("teams")
        self.categories = res("categories")
        self.priorities = res("priorities")
        self.slas = res("slas")
        self.ticket_types = res("ticket_types")
        self.top_levels = res("top_levels")
        self.expenses = res("expenses")
        self.timesheets = res("timesheets")
        self.releases = res("releases")
        self.reports = res("reports")
        self.webhooks = res("webhooks")
        self.workdays = res("workdays")
        self.software_licences = res("software_licences")
        self.crm_notes = res("crm_notes")
        self.quotations = res("quotations")

    @classmethod
    def from_settings(cls, cfg: HaloUpstream, *, clock: Clock) -> HaloClient:
        """Build from an `[upstreams.<name>]` table of kind halo (unopened)."""
        secret = secret_value(cfg.client_secret)
        auth = HaloAuth(
            str(cfg.client_id),
            secret,
            scope=cfg.scope or "all",
            tenant=cfg.tenant or None,
        )
        session = UpstreamSession(
            str(cfg.name),
            str(cfg.tenant_url),
            options_from_settings(cfg),
            clock=clock,
            auth=auth,
            secrets=[secret],
            errors=HALO_ERRORS,
            rate_limited_backoff=rate_limited_backoff,
            default_headers={"Accept": "application/json"},
        )
        return cls(session)

    @property
    def auth(self) -> HaloAuth | None:
        auth = self.session.auth
        return auth if isinstance(auth, HaloAuth) else None

    def resource(self, name: str) -> HaloResource:
        """A resource by attribute name, dashed/spaced name or Halo path; `KeyError` if none."""
        spec = find_spec(name)
        found = getattr(self, spec.name)
        assert isinstance(found, HaloResource)
        return found

    @staticmethod
    def api_path(path: str) -> str:
        """`/Tickets`, `Tickets` and `api/Tickets` all mean `{tenant_url}/api/Tickets`."""
        trimmed = path.lstrip("/")
        if trimmed.lower().startswith(("api/", "auth/")) or trimmed.lower() in ("api", "auth"):
            return trimmed
        return "api/" + trimmed

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one authenticated request; returns the parsed JSON (None for an empty body)."""
        resp = await self.session.request(
            method, self.api_path(path), params=params, json_body=json
        )
        if not resp.body.strip():
            return None
        return resp.json()
