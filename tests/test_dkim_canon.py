"""DKIM relaxed canonicalisation done as whole-block byte operations (bot/mail/dkim.py) agrees with dkimpy's
own, line by line implementation, and the messages signed that way verify with dkimpy: trailing
whitespace, empty lines at the end, CRLF / bare LF / bare CR, long lines, 8-bit bodies, folded headers.
Messages the composer marks as CRLF already (`WireBytes`) are signed exactly as the same bytes unmarked."""

from __future__ import annotations

import hashlib
import re

import dkim
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.mail.compose import build_message
from bot.mail.dkim import (
    DkimSigner,
    body_hash,
    fold_whitespace,
    load_key,
    normalise_line_ends,
    relaxed_body,
    relaxed_fields,
)
from bot.mail.wire import WireBytes
from tests.dkim_kit import DOMAIN, Keys, verified

# Bodies and header values built from the pieces canonicalisation cares about.
BODY_PIECES = [
    b"a",
    b"Z",
    b".",
    b"=",
    b" ",
    b"  ",
    b"\t",
    b" \t ",
    b"\r\n",
    b"\r\n\r\n",
    b"\xc3\xa9",
    b"\xff",
]
VALUE_PIECES = [b"a", b"<x@corp.example>", b" ", b"  ", b"\t", b"\r\n ", b"\r\n\t", b"\xe9", b";"]
NAMES = [b"From", b"To", b"Subject", b"subject", b"DATE", b"Message-ID", b"X-Mailer", b"List-Unsubscribe"]

bodies = st.lists(st.sampled_from(BODY_PIECES), max_size=60).map(b"".join)
values = st.lists(st.sampled_from(VALUE_PIECES), max_size=12).map(b"".join)
headers = st.lists(st.tuples(st.sampled_from(NAMES), values), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    k = Keys(tmp_path_factory.mktemp("dkim"))
    k.make("pr2026")
    k.make("ed2026", "ed25519")
    return k


def signer(keys: Keys) -> DkimSigner:
    return DkimSigner(
        [load_key(domain=DOMAIN, selector=s, key_file=str(f)) for s, f in keys.files.items()],
        clock=lambda: 1e9,
    )


def dkimpy_fields(head: bytes) -> dict[bytes, list[bytes]]:
    parsed, _ = dkim.rfc822_parse(head + b"\r\n\r\n")
    out: dict[bytes, list[bytes]] = {}
    for name, value in Relaxed.canonicalize_headers(parsed):
        out.setdefault(name, []).append(name + b":" + value)
    return out


# -- the canonical forms against dkimpy's -------------------------------------------------------------
@given(st.binary(max_size=200) | bodies)
@example(b"  leading and trailing  ")
@example(b"   ")
@example(b"\t")
@example(b"a \t b\r\n\t\tc  \r\n")
def test_fold_whitespace_is_every_run_to_one_space(data: bytes) -> None:
    assert fold_whitespace(data) == re.sub(rb"[ \t]+", b" ", data)


@given(bodies)
@example(b"")
@example(b"\r\n")
@example(b"\r\n\r\n\r\n")
@example(b"text\r\n\r\n\r\n")
@example(b"no line end at the end")
@example(b"\r\n ")
@example(b"trailing space \r\ntrailing tab\t\r\n")
@example(b" \t \r\n")
@example(b"a\r\n \t \r\nb  \r\n  \r\n")
@example(b"x" * 5000 + b"  " + b"y" * 5000)
@example("8-bit: Grüße, 你好".encode() + b" \xff\xfe \r\n")
def test_the_relaxed_body_and_its_hash_are_dkimpys(body: bytes) -> None:
    # SMTP ends every message with a line end: the body canonicalised is the one that arrives.
    expected = Relaxed.canonicalize_body(body if not body or body.endswith(b"\r\n") else body + b"\r\n")
    assert relaxed_body(body) == expected
    message = b"From: a@corp.example\r\n\r\n" + body
    assert body_hash(message, message.index(b"\r\n\r\n") + 4) == hashlib.sha256(expected).digest()


@given(headers)
@example([(b"Subject", b"\r\n folded before the value"), (b"To", b"  a  \t\r\n\t b  ")])
@example([(b"Subject", b" a\r\n \r\n\t"), (b"From", b"")])
@example([(b"X-Mailer", b"\t\t"), (b"from", b"<x@corp.example>\r\n\t;\xe9 ")])
def test_the_relaxed_header_fields_are_dkimpys(fields: list[tuple[bytes, bytes]]) -> None:
    head = b"\r\n".join(name + b":" + value for name, value in fields)
    assert relaxed_fields(head) == dkimpy_fields(head)


def test_header_edge_cases_dkimpy_cannot_parse() -> None:
    # Whitespace before the colon (RFC 6376 §3.4.2 deletes it), and a continuation line before any field.
    head = b" stray continuation\r\nSubject \t :  Hi  there \r\nTo:x@example.com"
    assert relaxed_fields(head) == {b"subject": [b"subject:Hi there\r\n"], b"to": [b"to:x@example.com\r\n"]}
    assert relaxed_fields(head, frozenset({b"to"})) == {b"to": [b"to:x@example.com\r\n"]}


# -- signed messages verify ---------------------------------------------------------------------------
EDGE_BODIES = {
    "trailing-whitespace": b"line one  \r\nline two\t\r\n\t\r\nend \t\r\n",
    "empty-lines-at-the-end": b"text\r\n\r\n\r\n\r\n",
    "only-empty-lines": b"\r\n\r\n\r\n",
    "empty": b"",
    "no-final-line-end": b"the last line has no end",
    "whitespace-last-line-without-end": b"hi\r\n \t",  # was signed as if the empty line stayed
    "bare-lf": b"one\ntwo  \n\n\nthree\n",
    "bare-cr": b"one\rtwo\r\r\n",
    "mixed": b"a\r\nb\nc\rd \r\n\n",
    "long-lines": b"x" * 3000 + b"\r\n" + b"y " * 1500 + b"\r\n",
    "8-bit": "Grüße aus Köln, 你好 —  eight bits\r\n".encode() + b"\xff\xfe\x80 \r\n",
    "whitespace-runs": b"    <div>\r\n\t\t<p>two  spaces</p>\r\n    </div>\r\n",
    "dots": b".\r\n..\r\n. \r\n",
}


@pytest.mark.parametrize("body", list(EDGE_BODIES.values()), ids=list(EDGE_BODIES))
def test_edge_case_bodies_verify(keys: Keys, body: bytes) -> None:
    head = b"From: News <news@corp.example>\r\nTo: lena@example.com\r\nSubject: edge\r\n\r\n"
    if b"\n" in body.replace(b"\r\n", b"") or b"\r" in body.replace(b"\r\n", b""):
        head = head.replace(b"\r\n", b"\n")  # a message written with bare line ends throughout
    signed = signer(keys).sign(head + body)
    assert verified(signed, keys) == [(DOMAIN, "pr2026", "rsa-sha256"), (DOMAIN, "ed2026", "ed25519-sha256")]
    assert type(signed) is WireBytes and _crlf_only(signed)


def test_folded_headers_with_tabs_and_runs_verify(keys: Keys) -> None:
    data = (
        b"From:\r\n\tNews  Team\r\n <news@corp.example>\r\n"
        b"Subject: a\r\n\tfolded\r\n    subject \t \r\n"
        b"To: lena@example.com,\r\n  raj@example.net\r\n"
        b"List-Unsubscribe:\r\n <https://postroom.corp.example/u/x>,\r\n\t<mailto:u@corp.example>\r\n"
        b"X-Not-Signed: \t x  \r\n"
        b"\r\nHi.\r\n"
    )
    signed = signer(keys).sign(data)
    assert verified(signed, keys)
    h = signed.split(b"h=", 1)[1].split(b";", 1)[0].replace(b"\r\n\t", b"")
    assert h == b"from:to:subject:list-unsubscribe:from"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=headers, body=bodies)
def test_any_header_block_and_body_verifies(
    keys: Keys, fields: list[tuple[bytes, bytes]], body: bytes
) -> None:
    head = b"".join(name + b":" + value + b"\r\n" for name, value in fields if name.lower() != b"from")
    data = b"From: News <news@corp.example>\r\n" + head + b"\r\n" + body
    signed = signer(keys).sign(data)
    assert len(verified(signed, keys)) == 2
    assert signer(keys).sign(WireBytes(data)) == signed  # the CRLF-marked path signs the same bytes


# -- the composer's WireBytes ---------------------------------------------------------------------------
def _crlf_only(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.sampled_from("ab \t\r\n\u00e9\u4f60."), max_size=200),
    subject=st.text(st.sampled_from("ab \t\r\n\x00\x7f\u00e9"), max_size=40),
    email=st.sampled_from(["x@example.com", "x\r\n@example.com", "x\n@example.com\r"]),
)
def test_the_composer_makes_crlf_only_messages(text: str, subject: str, email: str) -> None:
    data = build_message(
        from_name="News\r\nBcc: evil@example.com",
        from_address="news@corp.example",
        to_name=None,
        to_address=email,
        subject=subject,
        text=text,
        html=f"<pre>{text}</pre>",
        message_id="<1@corp.example>\n",
        headers=[("X-Test\r\n", "v\r\nw")],
    )
    assert type(data) is WireBytes
    assert _crlf_only(data), data
    head = data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^Bcc:", head, re.M | re.I)


def test_a_bare_cr_in_a_part_is_a_line_break_as_smtp_would_send_it() -> None:
    data = build_message(
        from_name=None,
        from_address="news@corp.example",
        to_name=None,
        to_address="x@example.com",
        subject="s",
        text="one\rtwo\r\nthree\nfour",
        html=None,
        message_id="<1@corp.example>",
    )
    assert data.endswith(b"\r\n\r\none\r\ntwo\r\nthree\r\nfour\r\n")
    assert normalise_line_ends(data) is data  # marked: not scanned again


def test_indented_html_from_the_composer_verifies_and_signs_as_unmarked(keys: Keys) -> None:
    html = "<html>\n  <body>\n" + "    <div>\n      <p>Hi  {i}\tthere</p>\n    </div>\n" * 40 + "</html>\n"
    data = build_message(
        from_name="Example Corp",
        from_address="news@corp.example",
        to_name="Lena Fischer",
        to_address="lena@example.com",
        subject="Indented  template",
        text="Hi  there,\n\n\tindented\n",
        html=html,
        message_id="<2@corp.example>",
    )
    signed = signer(keys).sign(data)
    assert len(verified(signed, keys)) == 2
    assert signer(keys).sign(bytes(data)) == signed


def test_a_message_no_key_signs_goes_out_with_its_line_ends_made_crlf() -> None:
    s = DkimSigner([])
    out = s.sign(b"From: a@other.example\nSubject: x\n\nbody\n")
    assert out == b"From: a@other.example\r\nSubject: x\r\n\r\nbody\r\n" and type(out) is WireBytes
