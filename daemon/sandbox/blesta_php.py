"""What PHP and Blesta's API controller do to a request, for the Blesta and Reseller simulators.

PHP builds `$_GET`/`$_POST` from bracketed names (`vars[lines][0][amount]=5` → nested arrays);
Blesta's API controller then matches arguments to method parameters by name. The simulators must
read arguments exactly where PHP would (query for GET/DELETE, urlencoded body for POST/PUT, never
a JSON body), so a client that sends them elsewhere fails here as it would upstream.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")


def parse_php_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """`[("a[b][0]", "x")]` → `{"a": {"b": {"0": "x"}}}`; `a[]` appends; last value wins.

    Like PHP, arrays are ordered maps with string keys; `as_list` turns `{"0":..,"1":..}` into a
    list where a handler wants one.
    """
    out: dict[str, Any] = {}
    for key, value in pairs:
        m = _KEY.match(key)
        if not m:
            out[key] = value
            continue
        parts = [m.group(1), *_PART.findall(m.group(2))]
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return out


def as_list(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def truthy(value: Any) -> bool:
    """PHP's boolean cast of a request string ("0" and "" are false; "false" is true in PHP,
    but the Reseller docs use true|false, so it is read as false here)."""
    return str(value).strip().lower() not in ("", "0", "false", "no", "off")


async def request_args(request: web.Request) -> dict[str, Any]:
    """The arguments Blesta's controller would see for this request."""
    if request.method in ("GET", "DELETE", "HEAD"):
        return parse_php_params(request.query.items())
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded" or (
        request.method == "PUT" and "json" not in ctype  # Blesta parse_str()s a raw PUT body
    ):
        body = await request.text()
        return parse_php_params(parse_qsl(body, keep_blank_values=True))
    if ctype == "multipart/form-data":
        form = await request.post()
        return parse_php_params((k, str(v)) for k, v in form.items())
    await request.read()  # JSON and anything else: PHP's $_POST stays empty
    return {}


MESSAGES = {
    400: "The request cannot be fulfilled due to bad syntax.",
    401: "The authorization details given appear to be invalid.",
    403: "The requested resource is not accessible.",
    404: "The requested resource does not exist.",
    415: "The format requested is not supported by the server.",
    500: "An unexpected error occured.",  # sic, as Blesta spells it
    503: "The requested resource is currently unavailable due to maintenance.",
}


class ApiError(Exception):
    """Raised by a model handler; rendered as Blesta's JSON error envelope."""

    def __init__(self, status: int, *, errors: dict[str, Any] | None = None, response: Any = None):
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.response = response


def error_response(
    status: int, *, errors: dict[str, Any] | None = None, response: Any = None
) -> web.Response:
    body: dict[str, Any] = {"message": MESSAGES.get(status, "Error"), "response": response}
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status)


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, secret
