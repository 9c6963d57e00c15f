"""Blesta's wire format, shared by the billing API and the Reseller API (a Blesta plugin).

- Requests: PHP reads GET/DELETE arguments from the query string and POST/PUT arguments from a
  urlencoded body, both with bracket nesting (`vars[lines][0][amount]=5`). Never JSON: the core
  controller would not see a JSON body at all (upstream-apis.md §1).
- Responses: a `{"response": ...}` envelope, errors as `{"message", "errors", "response"}` with
  the status codes of §1, except reports, which stream a CSV file with no envelope.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDictProxy

from daemon.clients.http import Response
from daemon.errors import (
    AuthError,
    ForbiddenError,
    MalformedResponse,
    NotFoundError,
    ServerError,
    UpstreamError,
    UpstreamResponseError,
    ValidationError,
)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _scalar(value: Any) -> str:
    # PHP's http_build_query sends booleans as 1/0; the string "false" would be truthy in PHP.
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encode_php_params(args: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested args to PHP bracket pairs, as http_build_query does.

    Mappings nest as `key[sub]`, lists and tuples as `key[0]`, `key[1]`; None (and an empty list
    or mapping) is omitted so PHP applies the method's default; booleans become `1`/`0` because
    PHP casts any non-empty string, "false" included, to true. Order is preserved.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in (args or {}).items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            pairs.extend(encode_php_params(value, name))
        elif isinstance(value, list | tuple):
            pairs.extend(encode_php_params({str(i): v for i, v in enumerate(value)}, name))
        else:
            pairs.append((name, _scalar(value)))
    return pairs


def form_body(pairs: list[tuple[str, str]]) -> bytes:
    """An application/x-www-form-urlencoded body from encoded pairs."""
    return urlencode(pairs).encode("ascii")


def parse_csv(text: str) -> list[dict[str, str]]:
    """Rows of a Blesta report as dicts keyed by the header's display names.

    Strips a UTF-8 BOM (spreadsheet exports carry one), honours quoted cells holding commas,
    doubled quotes and newlines, skips blank lines, and pads short rows with "".
    """
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for cells in reader:
        if not cells or all(c == "" for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        padded = cells + [""] * (len(header) - len(cells))
        rows.append(dict(zip(header, padded, strict=False)))
    return rows


@dataclass
class BlestaResponse:
    """One Blesta answer. `data` is the envelope's `response` value; CSV bodies land in
    `csv_data` (rows as dicts) because reports have no envelope."""

    status: int
    data: Any
    raw: str
    errors: dict[str, Any] | None
    is_json: bool
    is_csv: bool
    csv_data: list[dict[str, str]] | None
    headers: CIMultiDictProxy[str]


def _envelope(resp: Response) -> dict[str, Any] | None:
    try:
        body = json.loads(resp.body)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def flatten_field_errors(errors: Any) -> dict[str, list[str]]:
    """Blesta's `{field: {code: text}}` → `{field: [text, ...]}` (other shapes kept readable)."""
    if not isinstance(errors, Mapping):
        return {"_": [str(errors)]} if errors else {}
    out: dict[str, list[str]] = {}
    for field, detail in errors.items():
        if isinstance(detail, Mapping):
            out[str(field)] = [str(v) for v in detail.values()]
        elif isinstance(detail, list):
            out[str(field)] = [str(v) for v in detail]
        else:
            out[str(field)] = [str(detail)]
    return out


def _kw(resp: Response) -> dict[str, Any]:
    return dict(
        upstream=resp.upstream,
        status=resp.status,
        method=resp.method,
        path=resp.url.path,
        excerpt=resp.excerpt(),
    )


def validation_error(resp: Response, body: Mapping[str, Any]) -> ValidationError:
    fields = flatten_field_errors(body.get("errors"))
    summary = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
    message = str(body.get("message") or "request rejected")
    return ValidationError(f"{message} {summary}".strip(), field_errors=fields, **_kw(resp))


def blesta_error(resp: Response) -> UpstreamError | None:
    """The `error_mapper` for Blesta and the Reseller API: envelope message → typed error.

    Returns None for bodies that are not a Blesta envelope (an HTML proxy page), so the core's
    `default_error` classifies them by status (502 HTML → ServerError with an excerpt).
    """
    body = _envelope(resp)
    if body is None:
        return None
    message = str(body.get("message") or "")
    detail = body.get("response")
    s = resp.status
    kw = _kw(resp)
    if s == 400 or (s == 422):
        return validation_error(resp, body)
    if s == 401:
        return AuthError(message or "credentials refused", **kw)
    if s == 403:
        return ForbiddenError(message or "not accessible", **kw)
    if s == 404:
        return NotFoundError(message or "no such model or method", **kw)
    if s == 415:
        return UpstreamResponseError(message or "format not supported", **kw)
    if s >= 500:
        # A 500 carries the PHP exception text in `response` (e.g. a missing required argument).
        text = str(detail) if isinstance(detail, str) and detail else message or "server error"
        return ServerError(text, **kw)
    return None


def parse_response(resp: Response) -> BlestaResponse:
    """Turn a 2xx answer into a `BlestaResponse`.

    A 200 that carries an `errors` object is a failure (some Blesta versions and proxies answer
    so), and a body that is neither CSV nor a JSON envelope is a `MalformedResponse`.
    """
    raw = resp.text()
    if resp.content_type in ("text/csv", "application/csv"):
        return BlestaResponse(
            resp.status, None, raw, None, False, True, parse_csv(raw), resp.headers
        )
    body = _envelope(resp)
    if body is None:
        raise MalformedResponse(
            f"expected a JSON envelope, got {resp.content_type or 'no content type'}",
            **_kw(resp),
        )
    errors = body.get("errors")
    if errors:
        raise validation_error(resp, body)
    return BlestaResponse(
        resp.status, body.get("response"), raw, None, True, False, None, resp.headers
    )
