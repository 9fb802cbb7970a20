"""Header hygiene of the mail Postroom sends, read back with the email package and verified with dkimpy:
`Date` in UTC written +0000, RFC 2047 encoded words within 75 characters (76 a line), long headers folded
between their parts — `List-Unsubscribe` between its URIs, never inside one — and automations marked
`Auto-Submitted: auto-generated` while campaigns are `Precedence: bulk`."""

from __future__ import annotations

import re
from datetime import UTC
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.groups.notices import notice_bytes
from bot.mail.compose import build_message
from tests.audience_kit import make_bot, wait_for_mail  # noqa: F401
from tests.conftest import APPROVER, SENDER
from tests.dkim_kit import DOMAIN, Keys, verified

CONSENT = '--consent "Said yes at the booth"'
WORD = re.compile(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=")


def raw_fields(data: bytes) -> list[str]:
    """The header fields as on the wire, each with its folding."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields: list[str] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[-1] += "\r\n" + line
        else:
            fields.append(line)
    return fields


def field(data: bytes, name: str) -> str:
    (found,) = [f for f in raw_fields(data) if f.lower().startswith(name.lower() + ":")]
    return found


def check_lines(data: bytes) -> None:
    """Every encoded word within 75 characters and every line holding one within 76; no line past 998."""
    for line in data.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n"):
        assert len(line) <= 998
        for word in WORD.findall(line):
            assert len(word) <= 75, word
        if WORD.search(line):
            assert len(line) <= 76, line


def test_date_is_utc_written_plus_0000() -> None:
    data = build_message(
        from_name=None,
        from_address="news@corp.example",
        to_name=None,
        to_address="a@example.com",
        subject="x",
        text="x",
        html=None,
        message_id="<1@corp.example>",
    )
    date = field(data, "Date")
    assert date.endswith(" +0000"), date  # -0000 would say "time zone unknown" (RFC 5322 §3.3)
    assert parsedate_to_datetime(date.split(": ", 1)[1]).tzinfo == UTC
    notice = notice_bytes("eng@corp.example", ["a@corp.example"], "Undeliverable", "text")
    assert field(notice, "Date").endswith(" +0000")


@settings(max_examples=150, deadline=None)
@given(
    subject=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200),
    name=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=90),
)
@example(subject="A  long   ASCII subject with  double spaces " * 4 + "end", name="Example Corp")
@example(subject="Grüße " * 30, name="Zoë " * 30)
def test_encoded_words_stay_within_their_limits_and_decode_to_what_was_given(subject: str, name: str) -> None:
    data = build_message(
        from_name=name,
        from_address="news@corp.example",
        to_name=None,
        to_address="a@example.com",
        subject=subject,
        text="x",
        html=None,
        message_id="<1@corp.example>",
    )
    check_lines(data)
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        assert len(line) <= 78 or b"=?" not in line
    parsed = message_from_bytes(data, policy=policy.default)
    unfolded = field(data, "Subject").split(":", 1)[1].replace("\r\n", "")
    if subject.isascii() and subject.isprintable():
        assert unfolded == " " + subject  # folding only inserted line breaks
    assert str(parsed["Subject"]) in (subject, subject.strip())
    from_value = field(data, "From").split(":", 1)[1]
    decoded = str(make_header(decode_header(from_value.replace("\r\n", ""))))
    assert decoded.endswith("<news@corp.example>")
    shown = decoded.removesuffix(" <news@corp.example>").removesuffix("<news@corp.example>").strip()
    if name.isascii():
        assert parsed["From"].addresses[0].display_name == name.strip() or shown
    else:
        assert shown == name.strip() or shown == name, (shown, name)


def test_a_long_list_unsubscribe_is_folded_between_its_uris_only() -> None:
    https = "https://postroom.corp.example/u/" + "Ab9_" * 16
    mailto = "mailto:unsubscribe@corp.example?subject=unsubscribe%20" + "Ab9_" * 16
    data = build_message(
        from_name="Example Corp",
        from_address="news@corp.example",
        to_name=None,
        to_address="a@example.com",
        subject="x",
        text="x",
        html=None,
        message_id="<1@corp.example>",
        headers=[("List-Unsubscribe", f"<{https}>, <{mailto}>")],
    )
    raw = field(data, "List-Unsubscribe")
    assert raw == f"List-Unsubscribe: <{https}>,\r\n <{mailto}>"
    assert re.findall(
        r"<([^>]*)>", str(message_from_bytes(data, policy=policy.default)["List-Unsubscribe"])
    ) == [
        https,
        mailto,
    ]


async def test_campaign_and_automation_mail_reads_back_clean_and_verifies(
    make_bot,  # noqa: F811
    smtp,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    keys = Keys(tmp_path / "dkim")
    keys.make("pr2026")
    name = "Beispiel Gesellschaft für Ünternehmenskommunikation und Öffentlichkeitsarbeit mbH"
    bot = await make_bot(
        dkim=keys.section("pr2026"),
        campaigns={"from_name": name},
        web={"base_url": "https://postroom-with-a-rather-long-host-name.corp.example"},
    )
    subject = (
        "Frühjahrsneuigkeiten für unsere Kundinnen und Kunden — jetzt mit 20 % Rabatt auf Überraschungen"
    )
    reply = await bot.say(
        SENDER, f'/campaign new spring --to customers --template welcome --subject "{subject}"'
    )
    assert "Draft campaign" in reply, reply
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    assert "Approved" in await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    await wait_for_mail(smtp, "lena@example.com")
    reply = await bot.say(SENDER, "/automation new welcome --on confirmed:customers --template welcome")
    assert "Draft automation" in reply, reply
    assert "Submitted automation" in await bot.say(SENDER, "/automation submit welcome")
    assert "Approved" in await bot.say(APPROVER, "/approve automation:welcome")
    await bot.settle()
    await bot.say(SENDER, f"/contacts add ann@example.com --list customers {CONSENT}")
    await bot.settle()
    await wait_for_mail(smtp, "ann@example.com")

    campaign = smtp.handler.to("lena@example.com")[0].data
    automation = smtp.handler.to("ann@example.com")[0].data
    for data in (campaign, automation):
        assert verified(data, keys) == [(DOMAIN, "pr2026", "rsa-sha256")]
        check_lines(data)
        parsed = message_from_bytes(data, policy=policy.default)
        assert parsed["From"].addresses[0].addr_spec == "news@corp.example"
        assert str(make_header(decode_header(field(data, "From").split(":", 1)[1]))).startswith(name)
        assert parsed["Date"].datetime.tzinfo == UTC and field(data, "Date").endswith("+0000")
        uris = re.findall(r"<([^>]*)>", str(parsed["List-Unsubscribe"]))
        assert uris[0].startswith("https://postroom-with-a-rather-long-host-name.corp.example/u/")
        assert uris[1].startswith("mailto:unsubscribe@corp.example?subject=unsubscribe%20")
        raw = field(data, "List-Unsubscribe")
        assert raw.count("\r\n ") == 1 and "\r\n <mailto:" in raw  # folded between the URIs, not within
        assert str(parsed["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        assert str(parsed["Precedence"]) == "bulk"
    assert str(message_from_bytes(campaign, policy=policy.default)["Subject"]) == subject
    assert "Auto-Submitted" not in message_from_bytes(campaign, policy=policy.default)  # a person sent it
    auto = message_from_bytes(automation, policy=policy.default)
    assert str(auto["Auto-Submitted"]) == "auto-generated"  # RFC 3834: sent by a trigger
    assert str(auto["X-Auto-Response-Suppress"]) == "All"


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_folded_headers_still_verify(tmp_path: Path, algorithm: str) -> None:
    from bot.mail.dkim import DkimSigner, load_key

    keys = Keys(tmp_path / "k")
    path = keys.make("s1", algorithm)
    data = build_message(
        from_name="Ünïcode " * 12,
        from_address="news@corp.example",
        to_name="Zoë " * 20,
        to_address="z@example.com",
        subject="Grüße " * 30,
        text="x",
        html="<p>x</p>",
        message_id="<1@corp.example>",
        headers=[("List-Unsubscribe", "<https://x.example/u/" + "a" * 90 + ">, <mailto:u@corp.example>")],
    )
    signed = DkimSigner([load_key(domain=DOMAIN, selector="s1", key_file=str(path))]).sign(data)
    assert len(verified(signed, keys)) == 1
