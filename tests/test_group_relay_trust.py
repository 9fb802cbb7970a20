"""What the embedded group relay accepts and the headers it writes: a From naming a colleague the envelope
sender is not goes out "via" the group, every header Postroom writes is ASCII (RFC 2047, folded), raw
UTF-8 subjects are read as UTF-8 for the post log, leavers and bounces are not posters, and moderators'
decisions read right."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
import pytest
from sqlalchemy import select, update

from bot.db.models import Group, GroupPost
from bot.events import PersonEvent
from bot.groups.posts import add_post
from tests.conftest import HR
from tests.group_mail_kit import fanned_out, until
from tests.smtp import free_port
from tests.test_group_posts import DnsServer, click, held_cards, mail, post, running
from tests.test_postfix_policy import ask, request


@pytest.fixture
async def relay(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for pair in running(database_url, smtp.port, tmp_path):
        yield pair


def forged(envelope: str, header_from: str, to: str, subject: str = "Payroll change") -> bytes:
    msg = EmailMessage()
    msg["From"] = header_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="rejecty.example")
    msg.set_content("Please update my bank details.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def raw(header_from: bytes, subject: bytes, to: str = "eng@corp.example") -> bytes:
    """A message whose headers are raw 8-bit UTF-8 (RFC 6532), as a client without SMTPUTF8 may send."""
    return (
        b"From: " + header_from + b"\r\nTo: " + to.encode() + b"\r\nSubject: " + subject + b"\r\n"
        b"Message-ID: " + make_msgid(domain="corp.example").encode() + b"\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBody.\r\n"
    )


def words(data: bytes, name: str) -> str:
    """The first `name` header of a message, its encoded words decoded."""
    value = message_from_bytes(data, policy=policy.compat32).get(name)
    return str(make_header(decode_header(str(value))))


def head_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


async def test_a_from_naming_a_colleague_the_sender_is_not_goes_out_via_the_group(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await bot.say(HR, "/addgroup partners bob@corp.example")  # post: anyone
    await post(
        port,
        "eve@rejecty.example",
        "partners@corp.example",
        forged("eve@rejecty.example", "Dora Director <alice@corp.example>", "partners@corp.example"),
    )
    # a colleague's own post keeps its From; one sent by another company mailbox does not
    await post(
        port,
        "alice@corp.example",
        "partners@corp.example",
        mail("alice@corp.example", "partners@corp.example"),
    )
    await post(
        port,
        "chen@corp.example",
        "partners@corp.example",
        forged("chen@corp.example", "Alice <ALICE@corp.example>", "partners@corp.example"),
    )
    await fanned_out(bot.app)
    got = [m.message for m in smtp.handler.to("bob@corp.example")]
    assert len(got) == 3
    assert got[0]["From"] == '"eve@rejecty.example via partners" <partners@corp.example>'
    assert got[0]["Reply-To"] == "eve@rejecty.example"
    assert len(got[0].get_all("From")) == 1 and "alice@corp.example" not in str(got[0]["From"]).lower()
    assert got[1]["From"] == "Sender <alice@corp.example>" and got[1]["Reply-To"] is None
    assert got[2]["From"] == '"chen@corp.example via partners" <partners@corp.example>'


async def test_the_card_of_a_held_forged_post_shows_both_senders(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await post(
        port,
        "eve@rejecty.example",
        "eng-open@corp.example",
        forged("eve@rejecty.example", "Dora Director <bob@corp.example>", "eng-open@corp.example"),
    )
    await until(lambda: bool(held_cards(bot)))
    card = held_cards(bot)[-1]
    fields = dict(card.fields)
    assert fields["From"] == "Dora Director <bob@corp.example>"
    assert fields["Envelope sender"] == "eve@rejecty.example"
    assert "bob@corp.example" in fields["Warning"] and "eve@rejecty.example via eng-open" in fields["Warning"]
    post_id = card.buttons[0].value
    answer = await bot.core.handle_action(click("alice@corp.example", "post.approve", post_id))
    assert answer is not None and answer.text.startswith(f"Approved post #{post_id}")
    await fanned_out(bot.app)
    copy = smtp.handler.to("alice@corp.example")[0].message
    assert copy["From"] == '"eve@rejecty.example via eng-open" <eng-open@corp.example>'
    updated = [m for kind, _conv, m in bot.console.transcript if kind == "update"]
    assert updated and updated[-1].text == f"Post #{post_id} to eng-open@corp.example was approved."
    assert "waits for a moderator" not in updated[-1].text
    assert dict(updated[-1].card.fields)["Envelope sender"] == "eve@rejecty.example"


async def test_every_header_postroom_writes_is_encoded_and_folded(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with DnsServer({"_dmarc.strict.example": "v=DMARC1; p=reject"}) as dns_server:
        relay = {"dns_nameservers": ["127.0.0.1"], "dns_port": dns_server.port}
        async for bot, port in running(database_url, smtp.port, tmp_path, relay=relay):
            await bot.say(HR, "/addgroup partners bob@corp.example")
            unicode_name = "Spaß Team für alle Abteilungen, Ünïcode 团队 <intern>"
            async with bot.app.ctx.sessions() as session, session.begin():
                await session.execute(
                    update(Group).where(Group.local_part == "partners").values(display_name=unicode_name)
                )
                await session.execute(
                    update(Group).where(Group.local_part == "eng").values(display_name='Eng <ops>, "core"')
                )
            sends = [
                ("x@strict.example", "partners@corp.example", "Jürgen Müller <x@strict.example>".encode()),
                ("y@strict.example", "partners@corp.example", b"=?utf-8?b?5byg5LiJ?= <y@strict.example>"),
                ("alice@corp.example", "eng@corp.example", b"Alice <alice@corp.example>"),
            ]
            for sender, to, header_from in sends:
                await post(port, sender, to, raw(header_from, b"Hello", to))
            await fanned_out(bot.app)
            juergen, zhang = smtp.handler.to("bob@corp.example")[:2]
            eng = smtp.handler.to("bob@corp.example")[2]
            for copy in (juergen, zhang, eng):
                added = head_of(copy.data).split(b"\r\nFrom: " if copy is eng else b"\r\nTo: ", 1)[0]
                assert added.isascii(), added  # what Postroom wrote before the poster's own headers
                for line in added.split(b"\r\n"):
                    assert len(line) <= 78, line
                    assert all(len(w) <= 75 for w in re.findall(rb"=\?[^?]+\?[bq]\?[^?]*\?=", line, re.I))
                assert copy.mail_from.isascii()
            # decoded as RFC 2047 §6.2 says (whitespace between encoded words goes; the stdlib's
            # policy.default keeps it inside a display name, so decode_header reads them here)
            assert words(juergen.data, "Reply-To") == "Jürgen Müller <x@strict.example>"
            assert words(juergen.data, "From") == f"Jürgen Müller via {unicode_name} <partners@corp.example>"
            assert words(zhang.data, "Reply-To") == "张三 <y@strict.example>"
            assert words(zhang.data, "From") == f"张三 via {unicode_name} <partners@corp.example>"
            assert words(juergen.data, "List-Id") == f"{unicode_name} <partners.corp.example>"
            assert b'List-Id: "Eng <ops>, \\"core\\"" <eng.corp.example>' in eng.data
            reread = message_from_bytes(eng.data, policy=policy.default)
            assert str(reread["List-Id"]).endswith("<eng.corp.example>")


async def test_the_post_log_reads_raw_utf8_subjects(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await post(
        port,
        "alice@corp.example",
        "eng@corp.example",
        raw(b"Alice <alice@corp.example>", "通知 办公室关闭".encode()),
    )
    await post(
        port,
        "alice@corp.example",
        "eng@corp.example",
        raw("Zoë <alice@corp.example>".encode("latin-1"), b"caf\xe9 today"),
    )
    posts = await fanned_out(bot.app)
    assert [p.subject for p in posts] == ["通知 办公室关闭", "café today"]
    assert posts[1].author == "Zoë <alice@corp.example>"
    log = await bot.say(HR, "/posts eng")
    assert "“通知 办公室关闭”" in log and "\ufffd" not in log


async def test_a_leaver_is_an_outsider_to_company_groups(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await bot.core.handle_person_event(PersonEvent("left", "test", "E2", None, {}, "l1", datetime.now(UTC)))
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await post(
            port,
            "bob@corp.example",
            "all-staff@corp.example",
            mail("bob@corp.example", "all-staff@corp.example"),
        )
    (err,) = refused.value.recipients
    assert err.code == 550 and "bob@corp.example has left the company" in err.message
    # eng-open holds outsiders' posts: a leaver's waits like one
    await post(
        port, "bob@corp.example", "eng-open@corp.example", mail("bob@corp.example", "eng-open@corp.example")
    )
    await until(lambda: bool(held_cards(bot)))
    # a colleague still posts
    await post(
        port,
        "chen@corp.example",
        "all-staff@corp.example",
        mail("chen@corp.example", "all-staff@corp.example"),
    )
    posts = await fanned_out(bot.app)
    assert [(p.sender, p.state) for p in posts] == [
        ("bob@corp.example", "held"),
        ("chen@corp.example", "delivered"),
    ]


async def test_the_policy_service_treats_a_leaver_as_an_outsider_too(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    async for bot, _relay in running(
        database_url, smtp.port, tmp_path, postfix={"policy_enabled": True, "policy_port": port}
    ):
        await bot.core.handle_person_event(
            PersonEvent("left", "test", "E2", None, {}, "l1", datetime.now(UTC))
        )
        answers = await ask(
            port,
            request(sender="bob@corp.example", recipient="all-staff@corp.example"),
            request(sender="chen@corp.example", recipient="all-staff@corp.example"),
        )
        assert answers[0].startswith(
            "action=REJECT 5.7.1 <all-staff@corp.example>: only people at corp.example"
        )
        assert "has left the company" in answers[0]
        assert answers[1] == "action=DUNNO"


async def test_a_bounce_to_a_group_is_refused_never_held(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await client.connect()
    try:
        for group in ("board@corp.example", "partners@corp.example", "eng@corp.example"):
            await client.mail("")  # MAIL FROM:<>
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt(group)
            assert refused.value.code == 550 and "no mail without a sender" in refused.value.message
            await client.rset()
    finally:
        await client.quit()
    async with bot.app.ctx.sessions() as session:
        assert (await session.execute(select(GroupPost.id))).first() is None
    assert held_cards(bot) == []


async def test_rejecting_a_held_post_without_a_sender_does_not_claim_a_notice(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, _port = relay
    async with bot.app.ctx.sessions() as session, session.begin():
        group = (await session.execute(select(Group).where(Group.local_part == "board"))).scalar_one()
        held = await add_post(
            session,
            group,
            via="relay",
            state="held",
            sender="",
            data=b"Subject: old\r\n\r\nx\r\n",
            inspected=None,
            key=None,
            now=bot.app.ctx.now(),
            size=20,
            expires_at=bot.app.ctx.now(),
        )
        post_id = held.id
    answer = await bot.say(HR, f"/post reject {post_id} not for us")
    assert answer == f"Rejected post #{post_id} to board@corp.example. It had no sender, so nobody was told."
    assert smtp.messages == []


async def test_a_reason_with_control_characters_is_refused(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await post(
        port, "chen@corp.example", "board@corp.example", mail("chen@corp.example", "board@corp.example")
    )
    await until(lambda: bool(held_cards(bot)))
    post_id = held_cards(bot)[-1].buttons[0].value
    answer = await bot.say(HR, f'/post reject {post_id} "bad\x07bell"')
    assert "The reason can't contain control characters or text-direction overrides." in answer
    async with bot.app.ctx.sessions() as session:
        assert (await session.get(GroupPost, int(post_id))).state == "held"  # type: ignore[union-attr]
    answer = await bot.say(HR, f"/post reject {post_id} off topic")
    assert "Rejected post" in answer
    updated = [m for kind, _conv, m in bot.console.transcript if kind == "update"]
    assert updated[-1].text == f"Post #{post_id} to board@corp.example was rejected."


async def test_the_post_log_counts_one_recipient_in_the_singular(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    await bot.say(HR, "/addgroup partners bob@corp.example")
    await post(
        port,
        "alice@corp.example",
        "partners@corp.example",
        mail("alice@corp.example", "partners@corp.example"),
    )
    await fanned_out(bot.app)
    log = await bot.say(HR, "/posts partners")
    assert "1 KB, 1 recipient — delivered" in log and "1 recipients" not in log
