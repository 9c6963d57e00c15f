"""The validated, frozen shape of `daemon.toml` (DESIGN §3).

Field names are the TOML keys, so an error path such as `upstreams.halo.client_secret` points
at the line to fix. Checks that need more than one section (does `sync[2].upstream` exist, is
it the right kind) live in `daemon.config.load`, which sees everything at once.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from daemon.config.dispatch import BusinessHours, DispatchSettings, LoopGuardSettings
from daemon.config.fields import (
    DAY,
    HOUR,
    Count,
    Flag,
    GiB,
    HttpUrl,
    Model,
    Network,
    Secret,
    between,
    field_error,
    sized,
)
from daemon.config.upstreams import (
    BlestaUpstream,
    HaloUpstream,
    NetsapiensUpstream,
    ResellerUpstream,
    UpstreamSettings,
)
from daemon.config.values import (
    ByteSize,
    Duration,
    check_cron,
    check_listen,
    expand_user,
    parse_duration,
    parse_months,
)
from daemon.tablenames import RESERVED_NAMES, table_name_problem

NetsapiensModel = Literal[
    "agent",
    "auditlog",
    "auditlog_lite",
    "call",
    "call_origid",
    "cdr",
    "message",
    "messagesession",
    "subscriber",
    "presence",
    "voicemail",
    "contacts",
]
NETSAPIENS_MODELS: tuple[str, ...] = get_args(NetsapiensModel)
# The store's own tables and indexes and SQL keywords (`daemon.tablenames`, the one rule).
RESERVED_TABLES = RESERVED_NAMES
# A Reseller job's `resource` is the API method it reads (DESIGN §3); the short names of the
# first release stay accepted as aliases and are normalised to the method name.
RESELLER_RESOURCES = ("getcredit", "getpackages", "getpackagepricing", "search")
RESELLER_ALIASES = {
    "credit": "getcredit",
    "packages": "getpackages",
    "pricing": "getpackagepricing",
    "licenses": "search",
}
DEFAULT_MAX_PAGES = 100_000
MAX_PAGES = 1_000_000_000
MAX_PAGE_SIZE = 100_000
DEFAULT_MAX_DURATION = 2 * 3600.0
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_DEFAULT_JITTER = 30.0
_CRON_REFERENCE = datetime(2025, 1, 1, tzinfo=UTC)


class DaemonSettings(Model):
    """`[daemon]`: process-wide settings."""

    database: Path = Path("state.db")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console", "auto"] = "auto"
    timezone: str = "UTC"
    default_region: str = "US"
    shutdown_timeout: Annotated[Duration, between(maximum=HOUR, positive=True)] = 30.0
    # At least an hour: `retention = 90` is ninety seconds, and would prune everything.
    retention: Annotated[Duration, between(minimum=HOUR)] = 90 * 86400.0
    allow_insecure_config: Flag = False
    business_hours: BusinessHours | None = None
    dispatch: DispatchSettings = DispatchSettings()

    @field_validator("database")
    @classmethod
    def _relative_to_config(cls, value: Path, info: ValidationInfo) -> Path:
        # Relative to the file, not the cwd: `daemon run-once` from another directory must open
        # the same database as the service.
        base = (info.context or {}).get("base_dir")
        if "\x00" in str(value) or not str(value).strip():
            raise ValueError("must be a file path (not empty, no NUL character)")
        value = expand_user(value)
        return value if value.is_absolute() or base is None else Path(base) / value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a dir
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        import phonenumbers  # here, not at the top: a config without phone numbers skips it

        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {value!r}: expected an ISO 3166 code such as 'US'")
        return region


class HttpSettings(Model):
    """`[http]`: the webhook / health listener."""

    listen: Annotated[str, AfterValidator(check_listen)] = "127.0.0.1:8780"
    max_body_bytes: Annotated[ByteSize, sized(1, GiB)] = 1048576
    trusted_proxies: list[Network] = []

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _e164(raw: str, info: ValidationInfo) -> str:
    """Stored as E.164 so the loop guard compares numbers, not spellings."""
    from daemon.phones import to_e164  # phonenumbers is loaded only for configs with numbers

    region = (info.context or {}).get("default_region", "US")
    number = to_e164(raw, region)
    if number is None:
        raise ValueError(f"{raw!r} is not a phone number (default region {region})")
    return number


PhoneNumber = Annotated[str, AfterValidator(_e164)]


URL_SAFE_SECRET = re.compile(r"^[A-Za-z0-9._~-]+$")


class NetsapiensWebhookSettings(Model):
    """`[webhooks.netsapiens]`: the listener, the subscriptions it keeps, and the loop guard."""

    secret: Secret
    public_url: HttpUrl
    subscribe: list[NetsapiensModel] = ["message"]
    domain: str = "*"
    # The keeper asks for 24-hour subscriptions: renewing before half of that is no setting.
    renew_before: Annotated[Duration, between(maximum=DAY / 2, positive=True)] = 900.0
    backfill: Flag = True
    allow_from: list[Network] = []
    own_numbers: list[PhoneNumber] = []
    upstream: str = "netsapiens"
    # Secret rotation: the old secret is still accepted for `rotation_grace` after the daemon
    # first loads it here, while the keeper moves the subscriptions to the new one.
    previous_secret: Secret | None = None
    rotation_grace: Annotated[Duration, between(maximum=30 * DAY, positive=True)] = DAY
    guard: LoopGuardSettings = LoopGuardSettings()

    @field_validator("secret", "previous_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The secret is the only thing authenticating a webhook, and it travels in the URL as
        # one path segment: `/`, `?`, `#` or `%` would break every delivery (and a `/` would
        # put half of it in logs that mask the last segment).
        if value is None:
            return value
        text = value.get_secret_value()
        if len(text) < 16:
            raise ValueError("must be at least 16 characters long")
        if not URL_SAFE_SECRET.match(text):
            raise ValueError("must use only letters, digits and . _ ~ - (it is part of a URL)")
        return value


class WebhooksSettings(Model):
    netsapiens: NetsapiensWebhookSettings | None = None


def _default_jitter(every: Any, cron: Any) -> float:
    """10 % of the interval, at most 30 s: spreads jobs that share a schedule without making a
    5-minute job drift noticeably. Cron jobs use the gap between their first two ticks."""
    try:
        if every is not None:
            interval = parse_duration(every)
        elif isinstance(cron, str):
            from croniter import croniter  # loaded only for configs that schedule by cron

            if not croniter.is_valid(cron):
                return 0.0
            it = croniter(cron, _CRON_REFERENCE)
            first, second = it.get_next(datetime), it.get_next(datetime)
            interval = (second - first).total_seconds()
        else:
            return 0.0
    except ValueError:
        return 0.0
    return min(MAX_DEFAULT_JITTER, interval * 0.1)


class SyncJob(Model):
    """One `[[sync]]` entry: what to copy, into which table, how often."""

    name: str
    table: str
    upstream: str
    resource: str | None = None
    method: str = "getList"
    params: dict[str, Any] = {}
    every: Annotated[Duration, between(minimum=1.0, positive=True)] | None = None
    cron: Annotated[str, AfterValidator(check_cron)] | None = None
    jitter: Annotated[Duration, between(maximum=DAY)] = 0.0
    mode: Literal["full", "incremental", "append"] = "full"
    cursor_field: str | None = None
    phone_fields: list[str] = []
    report: str | None = None
    months: str | None = None
    page_size: Count | None = Field(default=None, gt=0, le=MAX_PAGE_SIZE)
    # Every run ends, and no run erases most of a table on one bad answer (docs/database.md).
    max_pages: Count = Field(default=DEFAULT_MAX_PAGES, ge=1, le=MAX_PAGES)
    max_duration: Annotated[Duration, between(positive=True)] = DEFAULT_MAX_DURATION
    max_tombstone_fraction: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "table" not in data and isinstance(data.get("name"), str):
            data["table"] = data["name"].replace("-", "_")
        if "jitter" not in data:
            data["jitter"] = _default_jitter(data.get("every"), data.get("cron"))
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not JOB_NAME.match(value):
            raise ValueError(f"invalid job name {value!r}: use [a-z0-9][a-z0-9_-]*")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        problem = table_name_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("months")
    @classmethod
    def _months(cls, value: str | None) -> str | None:
        if value is not None:
            parse_months(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SyncJob:
        if self.every is None and self.cron is None:
            raise field_error("every", "a job needs a schedule: set `every` or `cron`")
        if self.every is not None and self.cron is not None:
            raise field_error("cron", "set `every` or `cron`, not both")
        if self.resource is None and self.report is None:
            raise field_error("resource", "a job needs `resource` (or `report` for Blesta)")
        if self.resource is not None and self.report is not None:
            raise field_error("report", "set `resource` or `report`, not both")
        if self.months is not None and self.report is None:
            raise field_error("months", "`months` only applies to a `report` job")
        if self.mode == "incremental" and not self.cursor_field:
            raise field_error("cursor_field", "required when mode = 'incremental'")
        if self.every is not None and self.jitter > self.every:
            # Added to every wait: a jitter past the interval means the job may never run.
            raise field_error("jitter", "must be at most the interval (`every`)")
        return self


class Rule(Model):
    """One `[[rules]]` entry; matching and acting live in `daemon.rules`."""

    name: str
    on: str = Field(min_length=1)
    match: dict[str, str | list[str]] = {}
    when: str | None = None
    action: Literal["sms_reply", "halo_ticket", "ignore"]
    text: str | None = None
    ticket: dict[str, Any] | None = None
    thread: Flag = False
    # notes per threaded ticket, then a new one
    max_notes: Count = Field(default=50, ge=1, le=10_000)
    cooldown: Duration | None = None
    continue_: Flag = Field(default=False, alias="continue")
    enabled: Flag = True
    sms_upstream: str | None = None
    halo_upstream: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not RULE_NAME.match(value):
            raise ValueError(f"invalid rule name {value!r}: use letters, digits, '_', '-', '.'")
        return value

    @model_validator(mode="after")
    def _needs(self) -> Rule:
        if self.action == "sms_reply" and not self.text:
            raise field_error("text", "required for action = 'sms_reply'")
        if self.action == "halo_ticket" and not self.ticket:
            raise field_error("ticket", "required for action = 'halo_ticket'")
        return self


class Settings(Model):
    """The whole file, validated. Built by `load_settings`/`parse_settings`."""

    daemon: DaemonSettings = DaemonSettings()
    http: HttpSettings = HttpSettings()
    upstreams: dict[str, UpstreamSettings] = {}
    webhooks: WebhooksSettings = WebhooksSettings()
    sync: list[SyncJob] = []
    rules: list[Rule] = []
    _extra_secrets: tuple[str, ...] = PrivateAttr(default=())

    def upstream(self, name: str) -> UpstreamSettings:
        try:
            return self.upstreams[name]
        except KeyError:
            raise KeyError(f"no upstream named {name!r}") from None

    def secret_values(self) -> list[str]:
        """Every secret string the file resolved to, for the log redactor."""
        found: list[str] = list(self._extra_secrets)
        sections: list[BaseModel] = list(self.upstreams.values())
        if self.webhooks.netsapiens is not None:
            sections.append(self.webhooks.netsapiens)
        for section in sections:
            for field_name in type(section).model_fields:
                value = getattr(section, field_name)
                if isinstance(value, SecretStr):
                    found.append(value.get_secret_value())
        return [s for s in dict.fromkeys(found) if s]

    def secret_pairs(self) -> list[tuple[str, str]]:
        """`(user, secret)` pairs that may travel as HTTP Basic credentials (Blesta and the
        Reseller API use Basic; OAuth servers accept it for client credentials), so the
        redactor can mask the base64 of each pair as an echoed `Authorization` header."""
        pairs: list[tuple[str, str]] = []
        for up in self.upstreams.values():
            if isinstance(up, BlestaUpstream):
                pairs.append((up.user, up.key.get_secret_value()))
            elif isinstance(up, ResellerUpstream):
                pairs.append((up.user, up.password.get_secret_value()))
            elif isinstance(up, HaloUpstream):
                pairs.append((up.client_id, up.client_secret.get_secret_value()))
            elif isinstance(up, NetsapiensUpstream):
                pairs.append((up.client_id, up.client_secret.get_secret_value()))
                pairs.append((up.username, up.password.get_secret_value()))
            elif up.app_id is not None and up.app_secret is not None:
                pairs.append((up.app_id, up.app_secret.get_secret_value()))
        return list(dict.fromkeys(pairs))
