"""`[upstreams.<name>]`: one model per kind of upstream, the fields they share, and the table
of kinds.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from daemon.config.fields import (
    DAY,
    HOUR,
    Count,
    GiB,
    HttpUrl,
    KiB,
    Model,
    Secret,
    between,
    field_error,
    sized,
)
from daemon.config.values import ByteSize, Duration, RateLimitValue

DEFAULT_RESELLER_URL = "https://account.blesta.com/plugin/blesta_reseller/v2/index"
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_RETRY_WAIT = 600.0


class UpstreamBase(Model):
    """Fields every `[upstreams.<name>]` table shares; `name` is the table's key."""

    name: str
    timeout: Annotated[Duration, between(maximum=HOUR, positive=True)] = 30.0
    max_retries: Count = Field(default=4, ge=0, le=10)
    max_concurrency: Count = Field(default=4, ge=1, le=64)
    rate_limit: RateLimitValue = None
    # Every answer is read into memory up to this size (after decompression) and no further.
    max_response_bytes: Annotated[ByteSize, sized(KiB, GiB)] = DEFAULT_MAX_RESPONSE_BYTES
    # All the waiting one request may do between its tries (backoff and Retry-After together).
    max_retry_wait: Annotated[Duration, between(maximum=DAY)] = DEFAULT_MAX_RETRY_WAIT
    # The share of `rate_limit` kept for actions (SMS replies, tickets): a sync may use the rest
    # of the window, never this part, so a big sync cannot starve a reply.
    action_reserve: float = Field(default=0.2, ge=0.0, le=0.9, allow_inf_nan=False)


class BlestaUpstream(UpstreamBase):
    max_concurrency: Count = Field(default=8, ge=1, le=64)
    kind: Literal["blesta"] = "blesta"
    url: HttpUrl
    user: str
    key: Secret
    auth: Literal["basic", "header"] = "basic"


class ResellerUpstream(UpstreamBase):
    kind: Literal["blesta_reseller"] = "blesta_reseller"
    url: HttpUrl = DEFAULT_RESELLER_URL
    user: str
    password: Secret


class BillomatUpstream(UpstreamBase):
    max_concurrency: Count = Field(default=8, ge=1, le=64)
    kind: Literal["billomat"] = "billomat"
    billomat_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")]
    api_key: Secret
    app_id: str | None = None
    app_secret: Secret | None = None
    url: HttpUrl | None = None
    max_rate_wait: Annotated[Duration, between(maximum=DAY)] = 900.0

    @model_validator(mode="after")
    def _app_pair(self) -> BillomatUpstream:
        if (self.app_id is None) != (self.app_secret is None):
            missing = "app_secret" if self.app_secret is None else "app_id"
            raise field_error(missing, "app_id and app_secret go together: set both or neither")
        return self

    @property
    def base_url(self) -> str:
        """The API root: the `url` override (sandbox, proxies) or the account's own host."""
        return (self.url or f"https://{self.billomat_id}.billomat.net/api").rstrip("/")


class HaloUpstream(UpstreamBase):
    max_concurrency: Count = Field(default=8, ge=1, le=64)
    kind: Literal["halo"] = "halo"
    tenant_url: HttpUrl
    client_id: str
    client_secret: Secret
    scope: str = "all"
    tenant: str = ""


class NetsapiensUpstream(UpstreamBase):
    kind: Literal["netsapiens"] = "netsapiens"
    api_url: HttpUrl
    client_id: str
    client_secret: Secret
    username: str
    password: Secret


UpstreamSettings = (
    BlestaUpstream | ResellerUpstream | BillomatUpstream | HaloUpstream | NetsapiensUpstream
)
UPSTREAM_KINDS: dict[str, type[UpstreamBase]] = {
    "blesta": BlestaUpstream,
    "blesta_reseller": ResellerUpstream,
    "billomat": BillomatUpstream,
    "halo": HaloUpstream,
    "netsapiens": NetsapiensUpstream,
}
