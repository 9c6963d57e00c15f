"""From settings and open clients to a ready dispatcher, and the holder that lets a reload swap
the rules atomically.

The service (and the tests, and `daemon sandbox`) build the event path through these, so there
is one wiring of rules, routes, executors and the loop guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemon.clients.halo import HaloClient
from daemon.clients.netsapiens import NetsapiensClient
from daemon.clock import Clock
from daemon.config import Settings
from daemon.config.dispatch import LoopGuardSettings
from daemon.rules.actions import HaloActions, SmsActions
from daemon.rules.dispatcher import Dispatcher, Executors, RuleRoutes
from daemon.rules.engine import RuleSet
from daemon.rules.guard import LoopGuard
from daemon.store import Store


def compile_rules(settings: Settings) -> RuleSet:
    return RuleSet.compile(
        settings.rules,
        timezone=settings.daemon.timezone,
        business_hours=settings.daemon.business_hours,
    )


def rule_routes(settings: Settings) -> RuleRoutes:
    return RuleRoutes(
        sms={r.name: r.sms_upstream for r in settings.rules},
        halo={r.name: r.halo_upstream for r in settings.rules},
    )


@dataclass
class RulesHolder:
    """The rules in force. A reload builds the new RuleSet first (a config that does not compile
    is refused before anything changes) and then swaps both fields in one assignment each,
    between two events' evaluations — never in the middle of one."""

    ruleset: RuleSet
    routes: RuleRoutes

    @classmethod
    def from_settings(cls, settings: Settings) -> RulesHolder:
        return cls(compile_rules(settings), rule_routes(settings))

    def replace(self, settings: Settings) -> None:
        ruleset, routes = compile_rules(settings), rule_routes(settings)
        self.ruleset, self.routes = ruleset, routes


def executors(settings: Settings, clients: Mapping[str, object], store: Store) -> Executors:
    """An executor per NetSapiens and Halo upstream among `clients`; the defaults are the first
    of each kind in the config, as `sms_upstream`/`halo_upstream` promise."""
    region = settings.daemon.default_region
    sms = {
        n: SmsActions(c, region=region)
        for n, c in clients.items()
        if isinstance(c, NetsapiensClient)
    }
    halo = {n: HaloActions(c, store) for n, c in clients.items() if isinstance(c, HaloClient)}
    default_sms = next((n for n, u in settings.upstreams.items() if u.kind == "netsapiens"), None)
    default_halo = next((n for n, u in settings.upstreams.items() if u.kind == "halo"), None)
    return Executors(sms, halo, default_sms, default_halo)


def loop_guard(settings: Settings, store: Store, *, clock: Clock) -> LoopGuard:
    """The loop guard `[webhooks.netsapiens.guard]` and `own_numbers` describe."""
    hooks = settings.webhooks.netsapiens
    return LoopGuard(
        hooks.guard if hooks is not None else LoopGuardSettings(),
        store,
        clock=clock,
        own_numbers=hooks.own_numbers if hooks is not None else (),
    )


def build_dispatcher(
    settings: Settings,
    store: Store,
    clients: Mapping[str, object],
    *,
    clock: Clock,
    holder: RulesHolder | None = None,
) -> Dispatcher:
    holder = holder or RulesHolder.from_settings(settings)
    return Dispatcher(
        store,
        rules=lambda: holder.ruleset,
        routes=lambda: holder.routes,
        executors=executors(settings, clients, store),
        guard=loop_guard(settings, store, clock=clock),
        clock=clock,
        settings=settings.daemon.dispatch,
        region=settings.daemon.default_region,
    )
