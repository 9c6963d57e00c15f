"""Configuration: TOML → frozen, validated settings; secret references resolved at load.

The public API lives here; `values` holds the scalar parsers, `models` the settings classes,
`secrets` the reference resolution and `load` the reading and cross-checking.
"""

from daemon.config.checks import database_problem
from daemon.config.fields import Secret
from daemon.config.load import (
    SYSTEM_CONFIG,
    load_settings,
    parse_settings,
    resolve_config_path,
    schedule_description,
)
from daemon.config.models import (
    NETSAPIENS_MODELS,
    RESERVED_TABLES,
    DaemonSettings,
    HttpSettings,
    NetsapiensWebhookSettings,
    Rule,
    Settings,
    SyncJob,
    WebhooksSettings,
)
from daemon.config.secrets import SECRET_KEYS
from daemon.config.upstreams import (
    DEFAULT_RESELLER_URL,
    UPSTREAM_KINDS,
    BillomatUpstream,
    BlestaUpstream,
    HaloUpstream,
    NetsapiensUpstream,
    ResellerUpstream,
    UpstreamSettings,
)
from daemon.config.values import (
    MAX_DURATION,
    ByteSize,
    Duration,
    RateLimit,
    format_byte_size,
    format_duration,
    parse_byte_size,
    parse_duration,
    parse_months,
    parse_rate_limit,
)

__all__ = [
    "DEFAULT_RESELLER_URL",
    "MAX_DURATION",
    "NETSAPIENS_MODELS",
    "RESERVED_TABLES",
    "SECRET_KEYS",
    "SYSTEM_CONFIG",
    "UPSTREAM_KINDS",
    "BillomatUpstream",
    "BlestaUpstream",
    "ByteSize",
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
    "database_problem",
    "format_byte_size",
    "format_duration",
    "load_settings",
    "parse_byte_size",
    "parse_duration",
    "parse_months",
    "parse_rate_limit",
    "parse_settings",
    "resolve_config_path",
    "schedule_description",
]
