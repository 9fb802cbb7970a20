"""Group addresses deliver: mail to a group over SMTP reaches each member once, the policy is kept."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from bot.app import Runtime, build_app
from bot.db.models import Person
from bot.hr.importer import import_staff
from tests.group_mail_kit import fanned_out
from tests.lifecycle_kit import lifecycle_bot
from tests.smtp import free_port

STAFF = """employee_id,email,name,department,location
E1,alice@corp.example,Alice,Engineering,Berlin
E2,bob@corp.example,Bob,Engineering,Shanghai
E3,chen@corp.example,Chen,Sales,Shanghai
"""


@pytest.fixture
async def relay(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    async for bot in lifecycle_bot(
        database_url, smtp.port, tmp_path, relay={"enabled": True, "host": "127.0.0.1", "port": port}
    ):
        runtime = Runtime(bot.app)
        await runtime.start_services()
        staff = tmp_path / "staff.csv"
        staff.write_text(STAFF)
        await import_staff(bot.app.lifecycle, staff)
        try:
            yield bot, runtime.mail_server.port  # type: ignore[union-attr]
        finally:
            await runtime.stop_services()


def mail(sender: str, to: list[str], subject: str = "Hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Sender <{sender}>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg.set_content("Body text.")
    return msg


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_mail_to_groups_reaches_each_member_once_with_list_id(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    _bot, port = relay
    msg = mail("alice@corp.example", ["eng@corp.example", "all-staff@corp.example"])
    errors, reply = await aiosmtplib.send(
        msg, hostname="127.0.0.1", port=port, recipients=["eng@corp.example", "all-staff@corp.example"]
    )
    assert errors == {} and reply.startswith("Message accepted")
    await fanned_out(_bot.app)
    got = sorted(r for m in smtp.messages for r in m.rcpt_tos)
    assert got == ["alice@corp.example", "bob@corp.example", "chen@corp.example"]
    copy = smtp.handler.to("bob@corp.example")[0].message
    assert copy["From"] == "Sender <alice@corp.example>"
    assert copy["List-Id"] == '"eng" <eng.corp.example>'
    assert copy["Subject"] == "Hello"


async def test_policy_and_unknown_addresses_are_refused_at_smtp_time(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    _bot, port = relay
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(
            mail("chen@corp.example", ["eng@corp.example"]), hostname="127.0.0.1", port=port
        )
    assert refused.value.recipients[0].code == 550
    assert "only members of this group may post" in refused.value.recipients[0].message
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(
            mail("x@gmail.com", ["all-staff@corp.example"]), hostname="127.0.0.1", port=port
        )
    assert "only people at corp.example may post" in refused.value.recipients[0].message
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(
            mail("alice@corp.example", ["nosuch@corp.example"]), hostname="127.0.0.1", port=port
        )
    assert (
        refused.value.recipients[0].code == 550 and "no such address" in refused.value.recipients[0].message
    )
    # `post: anyone`: an outsider may write to partners@ (no members yet: nothing goes out).
    errors, _ = await aiosmtplib.send(
        mail("x@gmail.com", ["partners@corp.example"]), hostname="127.0.0.1", port=port
    )
    assert errors == {}
    assert smtp.messages == []


async def test_a_leaver_gets_no_more_group_mail(relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = relay
    from datetime import UTC, datetime

    from bot.events import PersonEvent

    await bot.core.handle_person_event(PersonEvent("left", "test", "E2", None, {}, "l1", datetime.now(UTC)))
    await aiosmtplib.send(mail("alice@corp.example", ["eng@corp.example"]), hostname="127.0.0.1", port=port)
    await fanned_out(bot.app)
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["alice@corp.example"]


async def test_group_mail_on_the_demo_reaches_each_member_once(tmp_path: Path) -> None:
    from bot import demo
    from bot.mail.server import Mailbox

    plan = demo.prepare(tmp_path / "demo", web_port=free_port(), smtp_port=free_port())
    app = await build_app(plan.settings)
    core = app.core
    runtime = Runtime(app)
    try:
        await demo.seed(app, plan.folder)
        mailbox = Mailbox(tmp_path / "mailbox", echo=None)
        await runtime.start_services(mailbox=mailbox)
        async with core.ctx.sessions() as s:
            engineers = sorted(
                (
                    await s.execute(
                        select(Person.email).where(
                            Person.attributes["department"].as_string() == "Engineering"
                        )
                    )
                ).scalars()
            )
        assert engineers == ["alice@corp.example", "bob@corp.example"]
        await aiosmtplib.send(
            mail("alice@corp.example", ["eng@corp.example"]),
            hostname="127.0.0.1",
            port=plan.settings.relay.port,
        )
        await wait_for(lambda: len(mailbox.messages()) >= 2)
        names = sorted(p.name.split("-", 1)[1] for p in mailbox.messages())
        assert names == ["alice@corp.example.eml", "bob@corp.example.eml"]
        assert b"List-Id:" in mailbox.messages()[0].read_bytes()
        assert [g.local_part for g in app.rules.current().groups] == ["all-staff", "eng", "berlin"]
        preview = await app.memberships.reconcile(source="sync", actor="demo", via="demo", dry_run=True)
        assert "+ alice@corp.example to berlin@corp.example" in preview
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):  # eng@ takes mail from its members only
            await aiosmtplib.send(
                mail("chen@corp.example", ["eng@corp.example"]),
                hostname="127.0.0.1",
                port=plan.settings.relay.port,
            )
    finally:
        await runtime.stop()


@pytest.fixture
async def untrusting_relay(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    """The relay when loopback is not among `relay.trusted_networks` (as a remote client would be)."""
    port = free_port()
    async for bot in lifecycle_bot(
        database_url,
        smtp.port,
        tmp_path,
        relay={
            "enabled": True,
            "host": "127.0.0.1",
            "port": port,
            "trusted_networks": ["10.0.0.0/8", "2001:db8::/32"],
        },
    ):
        runtime = Runtime(bot.app)
        await runtime.start_services()
        staff = tmp_path / "staff.csv"
        staff.write_text(STAFF)
        await import_staff(bot.app.lifecycle, staff)
        try:
            yield bot, runtime.mail_server.port  # type: ignore[union-attr]
        finally:
            await runtime.stop_services()


async def test_groups_refuse_untrusted_peers_but_unsubscribe_mail_stays_open(untrusting_relay, smtp) -> None:  # type: ignore[no-untyped-def]
    bot, port = untrusting_relay
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(
            mail("alice@corp.example", ["all-staff@corp.example"]), hostname="127.0.0.1", port=port
        )
    (err,) = refused.value.recipients
    assert err.code == 550 and "relaying denied" in err.message
    assert smtp.messages == []  # nobody in all-staff@ got it
    unsubscribe = bot.core.ctx.settings.campaigns.unsubscribe_mailbox
    errors, reply = await aiosmtplib.send(
        mail("someone@example.com", [unsubscribe]), hostname="127.0.0.1", port=port
    )
    assert errors == {} and reply.startswith("Message accepted")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as unknown:  # unknown addresses: the usual answer
        await aiosmtplib.send(
            mail("alice@corp.example", ["nobody@corp.example"]), hostname="127.0.0.1", port=port
        )
    assert "no such address" in unknown.value.recipients[0].message


def test_trusted_networks_default_to_loopback_and_reject_nonsense(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.config import ConfigError, RelaySettings
    from tests.conftest import make_settings

    relay = RelaySettings()
    assert relay.trusts("127.0.0.1") and relay.trusts("::1") and relay.trusts("::ffff:127.0.0.1")
    assert not relay.trusts("192.0.2.7") and not relay.trusts(None) and not relay.trusts("not-an-ip")
    assert RelaySettings(trusted_networks=["192.0.2.0/24"]).trusts("192.0.2.7")
    with pytest.raises(ConfigError, match="not an IP network"):
        make_settings("sqlite+aiosqlite://", 25, tmp_path, relay={"trusted_networks": ["corp.example"]})


async def test_a_relay_port_in_use_is_one_sentence_naming_relay_port(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tryout: a relay port already taken stopped serve with "[Errno 98] error while attempting to bind",
    and the demo with a traceback; the web port had its sentence already."""
    import socket

    from bot.config import ConfigError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        async for bot in lifecycle_bot(database_url, smtp.port, tmp_path):
            runtime = Runtime(bot.app)
            with pytest.raises(ConfigError) as refused:
                await runtime.start_mail("127.0.0.1", port, bot.app.mail_routes())
            assert str(refused.value) == (
                f"The SMTP relay can't listen on 127.0.0.1:{port} (address already in use): set relay.port "
                "to a free port."
            )
            assert runtime.mail_server is None
    finally:
        taken.close()
