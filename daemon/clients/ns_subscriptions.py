"""NetSapiens `/subscriptions`: the object the keeper reasons about and the CRUD calls.

Subscriptions without `subscription-expires-datetime` die with the creating token (about an
hour), so `create` always sends an explicit expiry; a duplicate answers 409, raised as
`SubscriptionExists` (by the client's error mapping) so the keeper can re-list and adopt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.clients.ns_wire import DEFAULT_PAGE, format_ns_datetime, parse_ns_datetime
from daemon.clients.segments import segment
from daemon.errors import MalformedResponse, UpstreamResponseError

if TYPE_CHECKING:
    from daemon.clients.netsapiens import NetsapiensClient

__all__ = ["Subscription", "SubscriptionExists", "SubscriptionsApi"]


class SubscriptionExists(UpstreamResponseError):
    """409 on `POST /subscriptions`: one with the same model, post-url and domain exists."""


@dataclass(frozen=True)
class Subscription:
    """The fields of a subscription object the keeper reasons about; `raw` keeps the rest."""

    id: str
    model: str
    post_url: str
    domain: str
    user: str
    status: str
    expires_at: datetime | None
    error_count: int
    posts_count: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, obj: Mapping[str, Any]) -> Subscription:
        def num(key: str) -> int:
            try:
                return int(obj.get(key) or 0)
            except (TypeError, ValueError):
                return 0

        return cls(
            id=str(obj.get("id") or ""),
            model=str(obj.get("model") or ""),
            post_url=str(obj.get("post-url") or ""),
            domain=str(obj.get("domain") or "*"),
            user=str(obj.get("user") or "*"),
            status=str(obj.get("status") or "").lower(),
            expires_at=parse_ns_datetime(obj.get("subscription-expires-datetime")),
            error_count=num("error-count"),
            posts_count=num("posts-count"),
            raw=dict(obj),
        )


_FIELD_NAMES = {
    "post_url": "post-url",
    "geo_support": "subscription-geo-support",
    "expires_at": "subscription-expires-datetime",
    "preferred_server": "preferred-server",
    "error_count": "error-count",
    "posts_count": "posts-count",
}


def _wire_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return format_ns_datetime(value)
    return value


class SubscriptionsApi:
    """`/subscriptions` CRUD; reached as `client.subscriptions`."""

    def __init__(self, client: NetsapiensClient):
        self._client = client

    async def create(
        self,
        model: str,
        post_url: str,
        *,
        expires_at: datetime,
        domain: str = "*",
        user: str = "*",
        reseller: str | None = None,
        geo_support: bool = True,
        preferred_server: str | None = None,
    ) -> dict[str, Any]:
        """Create one; raises `SubscriptionExists` on 409. The expiry is mandatory because the
        upstream default is "dies with the token that created it"."""
        body: dict[str, Any] = {
            "model": model,
            "post-url": post_url,
            "domain": domain,
            "user": user,
            "subscription-geo-support": _wire_value(geo_support),
            "subscription-expires-datetime": format_ns_datetime(expires_at),
        }
        if reseller is not None:
            body["reseller"] = reseller
        if preferred_server is not None:
            body["preferred-server"] = preferred_server
        result = await self._client.request("POST", "subscriptions", json=body)
        if isinstance(result, dict) and result.get("id"):
            return result
        # Accepted without the object: find what was made.
        for sub in await self.list():
            if sub.get("post-url") == post_url and sub.get("model") == model:
                return sub
        raise MalformedResponse(
            "subscription created but not returned or listed", upstream=self._client.name
        )

    async def get(self, subscription_id: str) -> dict[str, Any]:
        result = await self._client.request("GET", f"subscriptions/{segment(subscription_id)}")
        if isinstance(result, list) and len(result) == 1:  # some builds wrap it in an array
            result = result[0]
        if not isinstance(result, dict):
            raise MalformedResponse("subscription is not an object", upstream=self._client.name)
        return result

    async def list(self, *, limit: int = DEFAULT_PAGE) -> list[dict[str, Any]]:
        return [s async for s in self._client.paged("subscriptions", limit=limit)]

    async def update(self, subscription_id: str, **fields: Any) -> Any:
        """Partial update (`expires_at=datetime`, `post_url=...`); 202 answers carry no object."""
        body = {_FIELD_NAMES.get(k, k.replace("_", "-")): _wire_value(v) for k, v in fields.items()}
        return await self._client.request(
            "PUT", f"subscriptions/{segment(subscription_id)}", json=body
        )

    async def delete(self, subscription_id: str) -> Any:
        return await self._client.request("DELETE", f"subscriptions/{segment(subscription_id)}")
