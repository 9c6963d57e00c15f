"""The three output formats of Blesta's API controller: `.json`, `.xml` and `.php`.

Blesta's `Api` controller (blesta-core `app/controllers/api.php`) serves any model method as
`{model}/{method}.{format}` with format `json` (application/json), `php` (text/plain, PHP's
`serialize()`) or `xml` (application/xml, minPHP's `Xml::makeXml` of `{model: envelope}`); the
format is matched case-insensitively and anything else is a 415. Clients other people wrote may
ask for any of them, so the simulator renders all three the way that controller does.

PHP distinguishes arrays from objects; database rows arrive as `stdClass` objects. Here a plain
`dict` is rendered as such an object and a `PhpArray` as an associative array (the envelope, and
methods that return PHP arrays such as `report_manager/getAvailable`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

CONTENT_TYPES = {"json": "application/json", "php": "text/plain", "xml": "application/xml"}
_TAG_JUNK = re.compile(r"[^a-z0-9_:.-]", re.I)
_XML_CONTROL = {i: None for i in range(32) if i not in (9, 10, 13)}
_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "`": "&apos;"}


class PhpArray(dict[str, Any]):
    """A PHP associative array (a plain dict renders as a `stdClass` object)."""


def xml_root(model: str) -> str:
    """Blesta's root element: the CamelCased model name, lower-cased (`report_manager` →
    `reportmanager`)."""
    return model.replace("_", "").lower()


def render(fmt: str, model: str, body: dict[str, Any], status: int = 200) -> web.Response:
    """The envelope `body` as Blesta would answer it in `fmt`."""
    if fmt == "xml":
        text = make_xml({xml_root(model): body})
    elif fmt == "php":
        text = php_serialize(PhpArray(body))
    else:
        text = json.dumps(body)
    return web.Response(
        status=status, text=text, content_type=CONTENT_TYPES.get(fmt, "application/json")
    )


# -- PHP serialize() ---------------------------------------------------------------------------


def _php_float(value: float) -> str:
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" in text:  # PHP writes 1.0E+25 where Python writes 1e+25
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        sign = exponent[0] if exponent[0] in "+-" else "+"
        text = f"{mantissa}E{sign}{exponent.lstrip('+-')}"
    return text


def _php_key(key: Any) -> str:
    text = str(key)
    # PHP turns decimal-integer string keys into integer keys
    if isinstance(key, int) or re.fullmatch(r"-?(0|[1-9][0-9]*)", text):
        return f"i:{int(text)};"
    return _php_string(text)


def _php_string(text: str) -> str:
    return f's:{len(text.encode("utf-8"))}:"{text}";'


def php_serialize(value: Any) -> str:
    """PHP's `serialize()` of a JSON-like value (see the module docstring for dicts)."""
    if value is None:
        return "N;"
    if isinstance(value, bool):
        return f"b:{int(value)};"
    if isinstance(value, int):
        return f"i:{value};"
    if isinstance(value, float):
        return f"d:{_php_float(value)};"
    if isinstance(value, str):
        return _php_string(value)
    if isinstance(value, list | tuple):
        items = "".join(f"i:{i};{php_serialize(v)}" for i, v in enumerate(value))
        return f"a:{len(value)}:{{{items}}}"
    if isinstance(value, dict):
        items = "".join(_php_key(k) + php_serialize(v) for k, v in value.items())
        if isinstance(value, PhpArray):
            return f"a:{len(value)}:{{{items}}}"
        return f'O:8:"stdClass":{len(value)}:{{{items}}}'
    return _php_string(str(value))


# -- minPHP Xml::makeXml -----------------------------------------------------------------------


def _xml_text(value: Any) -> str:
    if value is None or value is False:
        return ""
    text = "1" if value is True else str(value)
    text = "".join(_XML_ESCAPES.get(c, c) for c in text)
    for c in ("\t", "\n", "\r"):
        text = text.replace(c, f"&#{ord(c)};")
    return text.translate(_XML_CONTROL)


def _is_numeric(key: Any) -> bool:
    try:
        float(str(key))
    except ValueError:
        return False
    return True


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple) or (
        isinstance(value, dict) and list(value) == [str(i) for i in range(len(value))]
    )


def _items(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, list | tuple):
        return list(enumerate(value))
    return list(value.items())


def _segment(value: Any, root: str, depth: int) -> str:
    """One level of minPHP's recursive walk: list items take their parent's tag, empty values
    become `<tag />`, nested elements are indented with tabs."""
    if _is_numeric(root):
        root = "result"
    if not isinstance(value, dict | list | tuple):
        return _xml_text(value)
    out = []
    for key, child in _items(value):
        tag = _TAG_JUNK.sub("", str(key))
        level = depth + 1
        sub = _segment(child, tag, level)
        nested = isinstance(child, dict | list | tuple)
        pad = "\t" * level
        close = "\n" + pad if nested else ""
        if _is_numeric(tag):
            out.append(f"\n{pad}<{root}>{sub}{close}</{root}>")
        elif sub == "":
            out.append(f"\n{pad}<{tag} />")
        elif nested and _is_list(child):
            out.append(f"\n{pad}{sub}")  # the items already carry this tag
        else:
            out.append(f"\n{pad}<{tag}>{sub}{close}</{tag}>")
    return "".join(out)


def make_xml(value: Any) -> str:
    return '<?xml version="1.0" encoding="UTF-8" ?>' + _segment(value, "result", -1)
