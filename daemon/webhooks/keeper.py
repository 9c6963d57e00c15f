"""SubscriptionKeeper: keeps one live NetSapiens subscription per configured model pointed at us.

Why a keeper rather than "subscribe at startup": a subscription made without an explicit expiry
dies with the token that created it (≈1 h), an operator or failover may delete it, the PBX marks
it `error` after failed posts, and a restart must not pile up duplicates (each duplicate doubles
every delivery). So every `sync_once` reconciles the upstream table with what we want:

- ours = same model and our exact post url (`<public_url>/<model>/<secret>`);
- several of ours → keep the one expiring last, delete the rest;
- one in `error` (or pointing at a different domain) → replace it;
- none → create with an explicit expiry (409 → re-list and adopt what exists);
- expiring within `renew_before` → PUT a new expiry (404 → it vanished: create);
- ours for a model no longer configured → delete;
- ours under a previous secret (a rotation: `previous_secrets`) → create the one with the current
  secret first, then delete the old one, so deliveries never stop (the listener accepts the old
  secret for its grace period meanwhile).

Each kept subscription is recorded in the store's `subscriptions` table; rows for subscriptions
that no longer exist are removed. The post url carries the webhook secret, so logs show it
redacted. `run()` repeats this until cancelled, waking before the earliest renewal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.clients.ns_subscriptions import Subscription, SubscriptionExists
from daemon.clock import Clock
from daemon.errors import AuthError, DaemonError, NotFoundError, UpstreamError
from daemon.logs import mask_webhook_url
from daemon.store import SubscriptionRow

if TYPE_CHECKING:
    from daemon.config.models import NetsapiensWebhookSettings

log = structlog.get_logger(__name__)

__all__ = [
    "KeeperReport",
    "SubscriptionKeeper",
    "SubscriptionStore",
    "next_check_delay",
    "redact_url",
]


class SubscriptionStore(Protocol):
    """The slice of `daemon.store.Store` the keeper uses."""

    async def upsert_subscription(
        self,
        subscription_id: str,
        model: str,
        post_url: str,
        expires_at: datetime | None,
        status: str,
    ) -> None: ...

    async def list_subscriptions(self) -> Sequence[SubscriptionRow]: ...

    async def delete_subscription(self, subscription_id: str) -> bool: ...


class SubscriptionsClient(Protocol):
    """`NetsapiensClient.subscriptions`."""

    async def create(
        self, model: str, post_url: str, *, expires_at: datetime, domain: str = "*"
    ) -> dict[str, Any]: ...

    async def list(self) -> list[dict[str, Any]]: ...

    async def update(self, subscription_id: str, **fields: Any) -> object: ...

    async def delete(self, subscription_id: str) -> object: ...


class KeeperClient(Protocol):
    @property
    def subscriptions(self) -> SubscriptionsClient: ...


@dataclass
class KeeperReport:
    """What one reconciliation did, by subscription id (`errors`: model → message)."""

    created: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    expiries: dict[str, datetime] = field(default_factory=dict)  # model -> expiry of the kept one
    gap_suspected: bool = False  # a subscription was missing or in error: events may be lost

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "adopted": self.adopted,
            "renewed": self.renewed,
            "replaced": self.replaced,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "errors": self.errors,
            "expiries": {m: e.isoformat() for m, e in self.expiries.items()},
            "gap_suspected": self.gap_suspected,
        }


def redact_url(url: str, secret: str) -> str:
    """The post url with its secret segment masked, for logs and errors — also a URL recorded
    under a secret that has since been rotated."""
    return mask_webhook_url(url, [secret] if secret else [])


def next_check_delay(
    now: datetime,
    expiries: Sequence[datetime],
    renew_before: timedelta,
    max_interval: float,
    min_interval: float = 1.0,
) -> float:
    """Seconds until the earliest renewal is due, bounded to [min_interval, max_interval]."""
    delay = max_interval
    for expiry in expiries:
        delay = min(delay, (expiry - renew_before - now).total_seconds())
    return max(min_interval, delay)


class SubscriptionKeeper:
    def __init__(
        self,
        client: KeeperClient,
        store: SubscriptionStore,
        *,
        clock: Clock,
        public_url: str,
        secret: str,
        models: Sequence[str],
        previous_secrets: Sequence[str] = (),
        domain: str = "*",
        renew_before: timedelta = timedelta(minutes=15),
        lifetime: timedelta = timedelta(hours=24),
        max_interval: float = 300.0,
        error_backoff: float = 10.0,
        on_gap: Callable[[], Awaitable[object]] | None = None,
    ):
        if lifetime <= renew_before:
            raise ValueError("subscription lifetime must exceed renew_before")
        self.client = client
        self.store = store
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.secret = secret
        # Secrets our post urls carried before a rotation: subscriptions with them are ours, to
        # be replaced by ones with the current secret.
        self.previous_secrets = [p for p in dict.fromkeys(previous_secrets) if p and p != secret]
        self.models = list(dict.fromkeys(m.strip().lower() for m in models))
        self.domain = domain or "*"
        self.renew_before = renew_before
        self.lifetime = lifetime
        self.max_interval = max_interval
        self.error_backoff = error_backoff
        self.on_gap = on_gap
        self.last_report: KeeperReport | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls,
        client: KeeperClient,
        store: SubscriptionStore,
        hooks: NetsapiensWebhookSettings,
        *,
        clock: Clock,
        on_gap: Callable[[], Awaitable[object]] | None = None,
    ) -> SubscriptionKeeper:
        """The keeper `[webhooks.netsapiens]` describes (the service and `daemon subscriptions
        sync` both build it here, so they keep the same subscriptions)."""
        previous = [hooks.previous_secret.get_secret_value()] if hooks.previous_secret else []
        return cls(
            client,
            store,
            clock=clock,
            public_url=str(hooks.public_url),
            secret=hooks.secret.get_secret_value(),
            previous_secrets=previous,
            models=list(hooks.subscribe),
            domain=hooks.domain,
            renew_before=timedelta(seconds=hooks.renew_before),
            on_gap=on_gap,
        )

    def post_url(self, model: str) -> str:
        return f"{self.public_url}/{model}/{self.secret}"

    def _ours(self, sub: Subscription) -> bool:
        """A subscription pointing at our listener (any model), recognised by url + secret,
        the current one or a previous one."""
        head, _, last = sub.post_url.rpartition("/")
        return head.startswith(self.public_url + "/") and last in (
            self.secret,
            *self.previous_secrets,
        )

    def _rotated(self, sub: Subscription, model: str) -> bool:
        """Ours for `model`, but under a previous secret."""
        return sub.model == model and any(
            sub.post_url == f"{self.public_url}/{model}/{old}" for old in self.previous_secrets
        )

    def _log(self, event: str, sub_id: str, model: str, **kw: Any) -> None:
        log.info(
            event,
            model=model,
            subscription_id=sub_id,
            post_url=redact_url(self.post_url(model), self.secret),
            **kw,
        )

    async def sync_once(self) -> KeeperReport:
        """Reconcile once. Listing failures raise; a failure on one model is reported in
        `errors` and the other models still get their turn."""
        report = KeeperReport()
        # Every subscription the PBX lists is live: it is the one that expires them. Judged by
        # our clock, one could look expired to a clock ahead of the PBX's, and then it was
        # neither renewed nor replaced (a create met 409 and adopted it as it was) while the
        # loop woke every second with a backfill each time (found by probing). Listed, it is
        # renewed when its expiry is near or past.
        live = [Subscription.parse(s) for s in await self.client.subscriptions.list()]
        now = self.clock.now()
        known = {row.id: row.model for row in await self.store.list_subscriptions()}
        for sub in live:
            if self._ours(sub) and sub.model not in self.models:
                await self._delete(sub, report, reason="model no longer subscribed")
        for model in self.models:
            try:
                await self._reconcile(model, live, known, now, report)
            except UpstreamError as exc:
                if isinstance(exc, AuthError):
                    raise
                report.errors[model] = redact_url(str(exc), self.secret)
                log.warning("subscription.failed", model=model, error=report.errors[model])
        kept = set(report.created + report.adopted + report.renewed + report.unchanged)
        kept.update(report.replaced)
        # A row whose subscription is neither kept nor listed goes, for a model no longer
        # configured too (its subscription vanished upstream before it was dropped: found by
        # probing); a model whose pass failed keeps its rows, as nothing is known of them.
        for row in await self.store.list_subscriptions():
            if row.id not in kept and row.model not in report.errors:
                await self.store.delete_subscription(row.id)
        self.last_report = report
        return report

    async def _reconcile(
        self,
        model: str,
        live: Sequence[Subscription],
        known: dict[str, str],
        now: datetime,
        report: KeeperReport,
    ) -> None:
        rotated = [s for s in live if self._rotated(s, model)]
        if not rotated:
            await self._reconcile_current(model, live, known, now, report)
            return
        # The new one first: if creating it fails, the old one keeps delivering.
        kept = await self._reconcile_current(model, live, known, now, report, rotating=True)
        for old in rotated:
            await self._delete(old, report, reason="secret rotated", log_event=None)
            self._log("subscription.replaced", kept.id, model, old_id=old.id, reason="rotation")

    async def _reconcile_current(
        self,
        model: str,
        live: Sequence[Subscription],
        known: dict[str, str],
        now: datetime,
        report: KeeperReport,
        *,
        rotating: bool = False,
    ) -> Subscription:
        """Keep exactly one healthy subscription with the current post url for `model`.
        `rotating`: one under an older secret still delivers, so a missing one is no gap.
        Returns the one kept."""
        url = self.post_url(model)
        mine = [s for s in live if s.model == model and s.post_url == url]
        stale = [s for s in mine if s.domain != self.domain]
        for sub in stale:
            await self._delete(sub, report, reason=f"domain {sub.domain!r} is not {self.domain!r}")
        mine = [s for s in mine if s.domain == self.domain]
        if len(mine) > 1:
            # Keep the healthiest, longest-lived one; every duplicate doubles deliveries.
            mine.sort(key=lambda s: (s.status != "error", s.expires_at or now), reverse=True)
            for dup in mine[1:]:
                await self._delete(dup, report, reason="duplicate")
            mine = mine[:1]
        if not mine:
            if model in known.values() and not rotating:
                report.gap_suspected = True  # we had one and it vanished behind our back
            sub, adopted = await self._create(model, now)
            bucket = report.replaced if rotating else report.created
            self._keep(sub, report.adopted if adopted else bucket, report)
            self._log(
                "subscription.adopted" if adopted else "subscription.created",
                sub.id,
                model,
                expires_at=sub.expires_at.isoformat() if sub.expires_at else None,
            )
            await self._record(sub)
            return sub
        sub = mine[0]
        if sub.status == "error":
            report.gap_suspected = True
            await self._delete(sub, report, reason="status error", log_event=None)
            new, _ = await self._create(model, now)
            self._keep(new, report.replaced, report)
            self._log("subscription.replaced", new.id, model, old_id=sub.id, reason="error")
            await self._record(new)
            return new
        if sub.expires_at is None or sub.expires_at - now <= self.renew_before:
            expires = now + self.lifetime
            try:
                await self.client.subscriptions.update(sub.id, expires_at=expires)
            except NotFoundError:
                report.gap_suspected = True
                new, _ = await self._create(model, now)
                self._keep(new, report.replaced, report)
                self._log("subscription.replaced", new.id, model, old_id=sub.id, reason="vanished")
                await self._record(new)
                return new
            sub = _with_expiry(sub, expires)
            self._keep(sub, report.renewed, report)
            self._log("subscription.renewed", sub.id, model, expires_at=expires.isoformat())
        elif sub.id not in known:
            self._keep(sub, report.adopted, report)
            self._log("subscription.adopted", sub.id, model, status=sub.status)
        else:
            self._keep(sub, report.unchanged, report)
        await self._record(sub)
        return sub

    def _keep(self, sub: Subscription, bucket: list[str], report: KeeperReport) -> None:
        bucket.append(sub.id)
        if sub.expires_at is not None:
            report.expiries[sub.model] = sub.expires_at

    async def _create(self, model: str, now: datetime) -> tuple[Subscription, bool]:
        """Create ours; on 409 re-list and adopt the existing one. Returns (sub, adopted)."""
        url = self.post_url(model)
        try:
            raw = await self.client.subscriptions.create(
                model, url, expires_at=now + self.lifetime, domain=self.domain
            )
            return Subscription.parse(raw), False
        except SubscriptionExists:
            for raw in await self.client.subscriptions.list():
                sub = Subscription.parse(raw)
                if sub.model == model and sub.post_url == url:
                    return sub, True
            raise

    async def _delete(
        self,
        sub: Subscription,
        report: KeeperReport,
        *,
        reason: str,
        log_event: str | None = "subscription.deleted",
    ) -> None:
        try:
            await self.client.subscriptions.delete(sub.id)
        except NotFoundError:
            pass  # already gone: the outcome we wanted
        await self.store.delete_subscription(sub.id)
        report.deleted.append(sub.id)
        if log_event:
            log.info(
                log_event,
                model=sub.model,
                subscription_id=sub.id,
                reason=reason,
                post_url=redact_url(sub.post_url, self.secret),
            )

    async def _record(self, sub: Subscription) -> None:
        await self.store.upsert_subscription(
            sub.id, sub.model, sub.post_url, sub.expires_at, sub.status or "pending"
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reconcile until cancelled: after each pass sleep until the earliest renewal is due
        (at most `max_interval`); after a failure back off exponentially up to it."""
        task_status.started()
        failures = 0
        while True:
            try:
                report = await self.sync_once()
            except UpstreamError as exc:
                failures += 1
                self.last_error = redact_url(str(exc), self.secret)
                delay = min(self.max_interval, self.error_backoff * 2 ** (failures - 1))
                log.warning(
                    "subscription.sync_failed",
                    error=self.last_error,
                    retry_in_s=round(delay, 1),
                    failures=failures,
                )
            else:
                if failures:
                    log.info("subscription.sync_recovered", failures=failures)
                failures = 0
                self.last_error = None
                if report.gap_suspected and self.on_gap is not None:
                    try:
                        await self.on_gap()  # e.g. a backfill; its failure is not ours
                    except DaemonError as exc:  # LimitExceeded too (found by probing)
                        log.warning("subscription.gap_fill_failed", error=str(exc))
                delay = next_check_delay(
                    self.clock.now(),
                    list(report.expiries.values()),
                    self.renew_before,
                    self.error_backoff if report.errors else self.max_interval,
                )
            await self.clock.sleep(delay)


def _with_expiry(sub: Subscription, expires: datetime) -> Subscription:
    return replace(sub, expires_at=expires)
