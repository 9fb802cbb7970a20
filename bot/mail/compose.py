"""Campaign messages built directly as bytes.

Building an `EmailMessage` and calling `as_bytes()` costs ~1.8 ms a message; assembling the
same MIME structure here costs a small fraction of that (benchmarks/send_throughput.py).
Parts are UTF-8 quoted-printable. Header values are RFC 2047-encoded only when not ASCII, in encoded words
of at most 75 characters on lines of at most 76; ASCII values are folded at spaces to 78 characters, so a
`List-Unsubscribe` is folded between its URIs, never inside one; `Date` is UTC written `+0000`.
The message comes back as `WireBytes`: CRLF throughout by construction (a bare CR in a part is a line
break, as SMTP would have made it; no header carries a control character), so neither the DKIM signer nor
the transport scans it for bare line ends again.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from email.utils import formatdate, quote

from bot.mail.wire import WireBytes

# What no header may carry: inputs refuse these (bot/values.py), but a value stored before they did may.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
MAX_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be no longer (998 is the hard limit)
MAX_WORD = 75  # RFC 2047 §2: an encoded word is at most 75 characters…
MAX_WORD_LINE = 76  # …and a line that holds one at most 76
_PREFIX = "=?utf-8?b?"
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


def _one_line(value: str) -> str:
    return value if value.isprintable() else _CONTROLS.sub(" ", value)


def date_header(when: float | None = None) -> str:
    """RFC 5322 date in UTC written `+0000` (formatdate's `-0000` says "time zone unknown")."""
    return formatdate(when, localtime=False)[:-5] + "+0000"


def encoded_words(text: str, first: int) -> list[str]:
    """`text` as RFC 2047 base64 encoded words, none longer than 75 characters, the first at most
    `first` characters (what its line has left), never splitting a character across two words."""
    words: list[str] = []
    budget = min(first, MAX_WORD)
    chunk = ""
    for ch in text:
        trial = chunk + ch
        if chunk and len(_PREFIX) + 2 + -(-len(trial.encode("utf-8")) // 3) * 4 > budget:
            words.append(_PREFIX + base64.b64encode(chunk.encode("utf-8")).decode("ascii") + "?=")
            chunk = ch
            budget = min(MAX_WORD_LINE - 1, MAX_WORD)  # a continuation line starts with one space
        else:
            chunk = trial
    if chunk or not words:
        words.append(_PREFIX + base64.b64encode(chunk.encode("utf-8")).decode("ascii") + "?=")
    return words


def fold(name: str, value: str) -> str:
    """`Name: value` folded before spaces so lines stay within 78 characters where the value allows it
    (unfolding gives the value back exactly); a single word longer than that (a URL) stays whole on its
    line, never split."""
    line = f"{name}: {value}"
    if len(line) <= MAX_LINE:
        return line
    parts = value.split(" ")
    out: list[str] = []
    current = f"{name}: {parts[0]}"
    started = bool(parts[0])
    for part in parts[1:]:
        if started and part and len(current) + 1 + len(part) > MAX_LINE and current.strip():
            out.append(current)
            current = " " + part
        else:
            current += " " + part
        started = started or bool(part)
    out.append(current)
    return "\r\n".join(out)


def header(name: str, value: str) -> str:
    """One header field, ready for the wire: ASCII folded at spaces; otherwise RFC 2047 encoded words
    within their limits, one per line."""
    name, value = _one_line(name), _one_line(value)
    if value.isascii():
        return fold(name, value)
    words = encoded_words(value, MAX_WORD_LINE - len(name) - 2)
    return f"{name}: " + "\r\n ".join(words)


def address(name: str | None, email: str, field: str = "From", *, quoted: bool = False) -> str:
    """`Field: Name <email>`, the name quoted or encoded as needed (encoded words within their limits);
    `quoted`: an ASCII name is quoted even without specials (List-Id's phrase, as list servers write it)."""
    email = _one_line(email)
    if not name:
        return f"{field}: {email}"
    name = _one_line(name)
    if name.isascii():
        shown = f'"{quote(name)}"' if quoted or _SPECIALS.search(name) else name
        return fold(field, f"{shown} <{email}>")
    words = encoded_words(name, MAX_WORD_LINE - len(field) - 2)
    tail = f"<{email}>"
    last = words[-1] + " " + tail
    indent = len(field) + 2 if len(words) == 1 else 1
    fits = indent + len(last) <= MAX_WORD_LINE  # the line holds an encoded word: 76 at most
    lines = [*words[:-1], last if fits else words[-1]]
    if not fits:
        lines.append(tail)
    return f"{field}: " + "\r\n ".join(lines)


def _qp(text: str) -> bytes:
    """`text` quoted-printable with CRLF line ends: CRLF, LF and a bare CR are each one line break."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    return encoded.replace(b"\n", b"\r\n")


def new_message_id(domain: str) -> str:
    return f"<{int(time.time() * 1000):x}.{secrets.token_hex(8)}@{domain}>"


def build_message(
    *,
    from_name: str | None,
    from_address: str,
    to_name: str | None,
    to_address: str,
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> WireBytes:
    """A complete RFC 5322 message with CRLF line ends (`WireBytes`), ready for SMTP DATA."""
    lines = [
        address(from_name, from_address, "From"),
        address(to_name, to_address, "To"),
        header("Subject", subject),
        f"Date: {date_header()}",
        f"Message-ID: {_one_line(message_id)}",
        "MIME-Version: 1.0",
    ]
    for name, value in headers:
        lines.append(header(name, value))
    if html is None:
        lines.append('Content-Type: text/plain; charset="utf-8"')
        lines.append("Content-Transfer-Encoding: quoted-printable")
        return WireBytes(("\r\n".join(lines) + "\r\n\r\n").encode() + _qp(text) + b"\r\n")
    boundary = "=_pr_" + secrets.token_hex(12)
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    b = boundary.encode()
    part_head = (
        b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    )
    return WireBytes(
        b"".join(
            [
                head,
                b"--" + b + b"\r\n",
                part_head % b"plain",
                _qp(text),
                b"\r\n--" + b + b"\r\n",
                part_head % b"html",
                _qp(html),
                b"\r\n--" + b + b"--\r\n",
            ]
        )
    )
