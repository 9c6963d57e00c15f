"""Configuration: TOML → frozen, validated settings; secret references resolved at load.

The public API lives here; `values` holds the scalar parsers, `models` the settings classes,
`secrets` the reference resolution and `load` the reading and cross-checking.
"""

from daemon.config.load import (
    SYSTEM_CONFIG,
    load_settings,
    parse_settings,
    resolve_config_path,
    schedule_description,
)
from daemon.config.models import (
    DEFAULT_RESELLER_URL,
    NETSAPIENS_MODELS,
    RESERVED_TABLES,
    UPSTREAM_KINDS,
    BillomatUpstream,
    BlestaUpstream,
    DaemonSettings,
    HaloUpstream,
    HttpSettings,
    NetsapiensUpstream,
    NetsapiensWebhookSettings,
    ResellerUpstream,
    Rule,
    Secret,
    Settings,
    SyncJob,
    UpstreamSettings,
    WebhooksSettings,
)
from daemon.config.secrets import SECRET_KEYS
from daemon.config.values import (
    Duration,
    RateLimit,
    format_duration,
    parse_duration,
    parse_months,
    parse_rate_limit,
)

__all__ = [
    "DEFAULT_RESELLER_URL",
    "NETSAPIENS_MODELS",
    "RESERVED_TABLES",
    "SECRET_KEYS",
    "SYSTEM_CONFIG",
    "UPSTREAM_KINDS",
    "BillomatUpstream",
    "BlestaUpstream",
    "DaemonSettings",
    "Duration",
    "HaloUpstream",
    "HttpSettings",
    "NetsapiensUpstream",
    "NetsapiensWebhookSettings",
    "RateLimit",
    "ResellerUpstream",
    "Rule",
    "Secret",
    "Settings",
    "SyncJob",
    "UpstreamSettings",
    "WebhooksSettings",
    "format_duration",
    "load_settings",
    "parse_duration",
    "parse_months",
    "parse_rate_limit",
    "parse_settings",
    "resolve_config_path",
    "schedule_description",
]
