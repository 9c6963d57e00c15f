"""Inbound events: everything that brings PBX events into the inbox.

- `events`   payload → `Event` (pure), `body_hash` for the loop guard
- `body`     untrusted bytes → JSON, shape bounded before parsing
- `inbox`    `Event` → inbox row (`new_event`), the `InboxWriter` seam
- `app`      the listener: `make_app(ListenerDeps)`, `POST /webhooks/netsapiens/<model>/<secret>`
- `access`   `listener_runner`: serving it without ever logging a path
- `secrets`  constant-time secret checks, rotation grace
- `remote`   the client address behind trusted proxies, `allow_from`
- `keeper`   `SubscriptionKeeper`: NetSapiens subscriptions pointed at the listener
- `gapfill`  `Backfiller`: what the webhooks missed, pulled through the API

Dependencies point down: `app` and `gapfill` use `events`, `body` and `inbox`; nothing here
imports `sync/` or `rules/`.
"""
