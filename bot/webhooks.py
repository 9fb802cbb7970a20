"""What Postroom's HTTP endpoints that take a body share (`/hooks/hr`, `/hooks/email-events`,
`POST /u/<token>`, and the adapters' `/slack/events` and `/wecom/callback`): a refusal that carries
its HTTP status and one sentence, a body read with a size cap, and signature headers parsed without
surprises.

The cap is enforced while reading: a declared Content-Length over the cap is refused before a byte
of the body is read, and a body sent without one (chunked) is refused as soon as it passes the cap,
so an oversize request never sits in memory whole.

Answering before the body is read is safe with uvicorn (checked with 0.55 and its h11 protocol; its
httptools protocol discards the same way): once the response is complete it reads the rest of the
request and throws it away, so the client — httpx, curl, requests — finishes sending and then reads
the 413 (tests/test_bounded_work.py checks it on a real server). What must not happen is
closing the connection with the body unread (a `Connection: close` answer does that): the kernel
then resets the socket and the client sees a broken pipe instead of the answer.

A body's JSON is read with `parse_json`: under the size cap a body can still nest arrays thousands
deep, and the standard parser answers that with RecursionError (not a ValueError), which would be a
500 with a traceback; here it is bad input like any other, and so are NaN and Infinity.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

from starlette.requests import Request

# Seconds since 1970 have 10 digits until the year 2286; anything longer is not a time.
MAX_TIMESTAMP_DIGITS = 12
_ASCII_DIGITS = frozenset("0123456789")


class Refused(Exception):
    def __init__(self, status: int, sentence: str, *, retry_after: int | None = None):
        super().__init__(sentence)
        self.status = status
        self.sentence = sentence
        self.retry_after = retry_after  # seconds, for a 429's Retry-After

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def _too_large(cap: int) -> Refused:
    return Refused(413, f"The body is larger than the {cap} bytes this endpoint accepts.")


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, read at most `cap` bytes far; Refused(413) past the cap, Refused(400) for a
    Content-Length that is not a number."""
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not declared or not set(declared) <= _ASCII_DIGITS:
            raise Refused(400, "The Content-Length header is not a number.")
        if len(declared) > len(str(cap)) or int(declared) > cap:
            raise _too_large(cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _too_large(cap)
    return bytes(body)


class _NotANumber(ValueError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _no_constants(name: str) -> Any:
    raise _NotANumber(name)


class _DuplicateKey(ValueError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(
    body: bytes | str, sentence: str, constant: str | None = None, duplicate: str | None = None
) -> Any:
    """The body's JSON, or Refused(400, sentence) for anything that is not plain JSON: malformed, not
    UTF-8, nested deeper than the parser goes (RecursionError), NaN/Infinity (`constant`, with
    {name}, says which when given), or an object naming a key twice (`duplicate`, with {name}: which
    value was meant is anyone's guess, and parsers differ on which one wins)."""
    try:
        return json.loads(body, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except _NotANumber as exc:
        raise Refused(400, constant.format(name=exc.name) if constant else sentence) from None
    except _DuplicateKey as exc:
        shown = "".join(ch if ch.isprintable() else "?" for ch in exc.name[:40])
        raise Refused(400, duplicate.format(name=shown) if duplicate else sentence) from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Refused(400, sentence) from None


_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 (and UTF-32 LE, which starts the same way)
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\";\s]*)", re.I)


def utf8_text(body: bytes, content_type: str | None = None) -> str:
    """A JSON body as text: UTF-8 only (RFC 8259 §8.1; a leading UTF-8 byte-order mark is dropped).
    `json.loads` would take UTF-16 or UTF-32 bytes too, guessing the encoding from the zero bytes; a
    sender whose body is another encoding than it thinks would have it read as something else. Refused:
    415 for a body or a Content-Type charset in another encoding, 400 for bytes that are not UTF-8."""
    found = _CHARSET.search(content_type or "")
    if found and found.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
        shown = "".join(ch if ch.isprintable() else "?" for ch in found.group(1)[:20])
        raise Refused(415, f"The body must be JSON in UTF-8, and Content-Type says charset={shown}.")
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM) :]
    # A NUL byte is never in UTF-8 JSON (a control character is escaped in a string, and none is
    # allowed outside one), and UTF-16 or UTF-32 text of ASCII has one in every other (or every fourth) byte.
    if body.startswith(_WIDE_BOMS) or b"\x00" in body:
        raise Refused(415, "The body must be JSON in UTF-8, not UTF-16 or UTF-32: send it encoded as UTF-8.")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(
            400, f"The body is not UTF-8 (byte {exc.start} is not a UTF-8 character): send JSON in UTF-8."
        ) from None


def parse_timestamp(value: str | None) -> int | None:
    """Unix seconds from a header or query parameter, or None when it is not ASCII digits of a sane
    length (`int()` would take "²", "١٢٣" or 5,000 digits and fail or mislead later)."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > MAX_TIMESTAMP_DIGITS or not set(text) <= _ASCII_DIGITS:
        return None
    return int(text)


def signatures_match(expected: str, given: str) -> bool:
    """Constant-time comparison that also takes a non-ASCII `given` (hmac.compare_digest raises
    TypeError on non-ASCII str, which would be a 500)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def replay(request: Request, body: bytes) -> Request:
    """The same request with its body already read, for a handler that reads it again (bolt)."""
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)
