"""Building blocks of the config models: the base model, bounded durations and sizes, secrets,
URLs, and the error a model-level check raises for one key.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr, Strict
from pydantic_core import PydanticCustomError

from daemon.config.values import (
    MAX_DURATION,
    check_http_url,
    check_network,
    format_byte_size,
    format_duration,
)

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

# A count in the config (`max_concurrency`, `max_attempts`...): a TOML integer only. Lax
# validation took `true` for 1, `"8"` for 8 and `8.0` for 8 — a careless value read as another.
Count = Annotated[int, Strict()]
# A switch in the config (`enabled`, `continue`, `backfill`...): a TOML boolean only. Lax
# validation read `enabled = "no"`, `"off"` and `0` as false and `"yes"` or `1` as true:
# quoting or numbering a switch is a slip that should be named, not guessed at.
Flag = Annotated[bool, Strict()]
KiB, GiB = 1024, 1024**3


def _usable_secret(value: SecretStr) -> SecretStr:
    # An empty secret would send blank credentials and fail obscurely at the first request; a
    # control character cannot travel in a header and would make the request itself fail.
    text = value.get_secret_value()
    if not text.strip():
        raise ValueError("must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain control characters (a newline, a tab, ...)")
    return value


def between(
    minimum: float = 0.0, maximum: float = MAX_DURATION, *, positive: bool = False
) -> AfterValidator:
    """A duration's bounds, with the message in the file's own units (`at most 1h`)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if positive and value <= 0:
            raise ValueError("must be positive")
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}")
        if value > maximum:
            raise ValueError(f"must be at most {format_duration(maximum)}")
        return value

    return AfterValidator(check)


def sized(minimum: int, maximum: int) -> AfterValidator:
    def check(value: int) -> int:
        if not minimum <= value <= maximum:
            raise ValueError(
                f"must be between {format_byte_size(minimum)} and {format_byte_size(maximum)}"
            )
        return value

    return AfterValidator(check)


Secret = Annotated[SecretStr, AfterValidator(_usable_secret)]
HttpUrl = Annotated[str, AfterValidator(check_http_url)]
Network = Annotated[str, AfterValidator(check_network)]


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error from a model-level check that still names its key (`sync[0].cron`).

    Model validators have no loc of their own; `load._problems` appends `ctx['field']`.
    """
    return PydanticCustomError("config_field", "{message}", {"field": field, "message": message})


class Model(BaseModel):
    """Frozen, and an unknown key is an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
