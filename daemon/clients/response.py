"""What an upstream answered: the read body (capped while reading and after decompression),
the `Response` value the clients parse, and Retry-After.

Split from `http.py`, which sends and retries; this module only reads and interprets.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from daemon.canonical import may_hold_surrogates, repair_surrogates_in
from daemon.clients.errormap import ErrorReader, check_success
from daemon.errors import (
    MalformedResponse,
    ResponseTooLarge,
    UpstreamResponseError,
    redact_excerpt,
)

__all__ = ["ACCEPT_ENCODING", "Response", "parse_retry_after", "read_capped"]

EXCERPT_BYTES = 4096  # bytes of a body decoded for an error excerpt: cut before decoding
READ_CHUNK = 64 * 1024
# We decompress ourselves, under the size limit, so we only offer what zlib can undo.
ACCEPT_ENCODING = "gzip, deflate"


@dataclass
class Response:
    """A fully read upstream answer. Bodies are read eagerly (pages are small and bounded by
    `max_response_bytes`), which keeps connection lifetimes out of the callers' hands."""

    method: str
    url: URL
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    upstream: str
    secrets: Sequence[str] = field(default=(), repr=False)
    reader: ErrorReader | None = field(default=None, repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def is_json(self) -> bool:
        return self.content_type.endswith("json") or self.content_type.endswith("+json")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def excerpt(self) -> str:
        # Cut the bytes first: decoding (and redacting) a 64 MB error page to keep 300
        # characters of it would cost more than the request did.
        head = self.body[:EXCERPT_BYTES].decode("utf-8", errors="replace")
        return redact_excerpt(head, self.secrets, cut=len(self.body) > EXCERPT_BYTES)

    def parse_json(self) -> Any:
        """The body as JSON, without judging it; not JSON is a `MalformedResponse`.

        A lone surrogate (`"\\ud800"`, which JSON allows and Unicode does not) becomes U+FFFD
        here, at the boundary: an id or a message holding one could not be stored (SQLite
        binds UTF-8), and a record id with one failed its whole page on every run."""
        try:
            value = json.loads(self.body)
            return repair_surrogates_in(value) if may_hold_surrogates(self.body) else value
        except RecursionError as exc:
            raise self._malformed("JSON nested too deeply to read") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._malformed(
                f"expected JSON, got {self.content_type or 'no content type'}"
            ) from exc

    def json(self) -> Any:
        """The body as JSON; a 2xx that carries an error instead of data raises (errormap)."""
        body = self.parse_json()
        if self.ok:
            check_success(self, body, self.reader)
        return body

    def _malformed(self, message: str) -> MalformedResponse:
        return MalformedResponse(
            message,
            upstream=self.upstream,
            status=self.status,
            method=self.method,
            path=self.url.path,
            excerpt=self.excerpt(),
        )


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date.

    Nonsense (negative, NaN, infinite, unparsable) is None: the caller falls back to its own
    backoff rather than trusting it.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_epoch)


class _Decoder:
    """Undo a Content-Encoding with a hard cap on the output, chunk by chunk.

    aiohttp would inflate a whole network chunk at once; a 300 KB gzip that inflates to 300 MB
    must instead fail after `limit` bytes, having held at most that much.
    """

    def __init__(self, encoding: str, limit: int):
        self.limit = limit
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip header, detected
        else:
            raise ValueError(encoding)

    def feed(self, chunk: bytes, produced: int) -> bytes:
        # Ask for one byte more than the budget allows: getting it proves the body is too big.
        return self._z.decompress(chunk, max(1, self.limit - produced + 1))

    def flush(self) -> bytes:
        return self._z.flush()


async def read_capped(
    r: aiohttp.ClientResponse, *, limit: int, upstream: str, method: str, url: URL
) -> bytes:
    """The body, decompressed, never more than `limit` bytes of it in memory: an answer over
    the limit (announced, received or inflated) is a `ResponseTooLarge` and its connection is
    dropped rather than drained."""

    def fail(kind: type[UpstreamResponseError], message: str) -> NoReturn:
        r.close()  # drop the connection instead of draining the rest of the body
        err = kind(message, upstream=upstream, status=r.status, method=method, path=url.path)
        raise err from None

    def too_large(what: str) -> NoReturn:
        fail(ResponseTooLarge, f"answer too large ({what}; max_response_bytes is {limit})")

    encoding = r.headers.get("Content-Encoding", "").strip().lower()
    encoding = "" if encoding == "identity" else encoding
    declared = r.content_length
    if declared is not None and declared > limit:
        too_large(f"announced {declared} bytes")
    try:
        decoder = _Decoder(encoding, limit) if encoding else None
    except ValueError:
        fail(MalformedResponse, f"unsupported Content-Encoding {encoding!r}")
    out = bytearray()
    received = 0
    try:
        async for chunk in r.content.iter_chunked(READ_CHUNK):
            received += len(chunk)
            out += decoder.feed(chunk, len(out)) if decoder is not None else chunk
            if len(out) > limit or received > limit:
                too_large(f"more than {limit} bytes")
        if decoder is not None:
            out += decoder.flush()
            if len(out) > limit:
                too_large(f"more than {limit} bytes")
    except zlib.error as exc:
        fail(MalformedResponse, f"{encoding} body cannot be decompressed: {exc}")
    return bytes(out)
