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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDictProxy

from daemon.clients.errormap import ErrorDetail, error_kwargs
from daemon.clients.response import Response
from daemon.errors import MalformedResponse, UpstreamResponseError, ValidationError

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
        body = resp.parse_json()
    except MalformedResponse:
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


def _validation(body: Mapping[str, Any]) -> ErrorDetail:
    fields = flatten_field_errors(body.get("errors"))
    summary = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
    message = str(body.get("message") or "request rejected")
    return ErrorDetail(f"{message} {summary}".strip(), fields, ValidationError)


class BlestaErrors:
    """How Blesta and the Reseller API (a Blesta plugin) say what went wrong.

    A body that is not a Blesta envelope (a proxy's HTML page) adds nothing, so the status
    table classifies it (502 HTML → ServerError with an excerpt).
    """

    def detail(self, resp: Response) -> ErrorDetail | None:
        body = _envelope(resp)
        if body is None:
            return None
        if resp.status in (400, 422):
            return _validation(body)
        message = str(body.get("message") or "")
        if resp.status == 415:
            return ErrorDetail(message or "format not supported", kind=UpstreamResponseError)
        detail = body.get("response")
        if resp.status >= 500 and isinstance(detail, str) and detail:
            # A 500 carries the PHP exception text (e.g. a missing required argument).
            return ErrorDetail(detail)
        return ErrorDetail(message)

    def failure_in_success(self, resp: Response, body: Any) -> ErrorDetail | None:
        # Some Blesta versions and proxies answer validation failures with 200 + `errors`.
        if isinstance(body, Mapping) and body.get("errors"):
            return _validation(body)
        return None


BLESTA_ERRORS = BlestaErrors()


def list_rows(data: Any, what: str, upstream: str, status: int) -> list[Any]:
    """A list method's `response` must be a list. PHP sends an array with gaps in its keys as an
    object of numeric keys, which is still a list; `null`, `false` or any other object is not —
    reading it as "no records" would let a sync tombstone the table."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data and all(str(k).isdigit() for k in data):
        return [data[k] for k in sorted(data, key=lambda k: int(k))]
    raise MalformedResponse(
        f"{what} is {json_type(data)}, not a list", upstream=upstream, status=status
    )


def json_type(value: Any) -> str:
    """How a JSON value reads in an error message (`null`, `false`, `an object`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    return type(value).__name__


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
    body = resp.json()  # raises on a 200 that carries `errors` (BlestaErrors)
    if not isinstance(body, dict) or "response" not in body:
        raise MalformedResponse(
            f"expected a JSON envelope with `response`, got "
            f"{type(body).__name__ if resp.is_json else resp.content_type or 'no content type'}",
            **error_kwargs(resp),
        )
    return BlestaResponse(
        resp.status, body.get("response"), raw, None, True, False, None, resp.headers
    )
