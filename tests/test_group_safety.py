"""Attacker tryout against a real `postroom serve`, group mail: a relay answering a bare 550 to everyone
filed every member's copy as their own bounce (and /posts said "delivered"); an owner who had left still
got owner notices; a group could take a person's address or one of Postroom's own."""

from __future__ import annotations

import asyncio

import aiosmtplib
from sqlalchemy import select

from bot.app import App
from bot.db.models import GroupPost
from tests.conftest import HR
from tests.group_mail_kit import deliveries, fanned_out, until
from tests.smtp_faults import FaultyServer
from tests.test_group_posts import mail, running

GENERIC_550 = "550 Requested action not taken: mailbox unavailable"
ENG = ("alice@corp.example", "bob@corp.example", "fwd@corp.example")


async def post_to(port: int, sender: str, group: str) -> None:
    await aiosmtplib.send(
        mail(sender, group), sender=sender, recipients=[group], hostname="127.0.0.1", port=port
    )


async def settled(app: App) -> dict[str, str]:
    """The only post's copies once none is out (claimed) any more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        async with app.ctx.sessions() as session:
            post_id = (await session.execute(select(GroupPost.id))).scalar_one()
        states = await deliveries(app, post_id)
        if states and "sending" not in states.values():
            return states
        assert loop.time() < deadline, states
        await asyncio.sleep(0.02)


async def test_a_bare_550_for_everyone_bounces_nobody_and_the_copies_go_out_once_fixed(
    database_url, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    with FaultyServer() as server:
        server.handler.rcpt_reply = GENERIC_550
        relay = {"retry_base_s": 1.0, "retry_max_s": 2.0, "max_attempts": 50}
        async for bot, port in running(database_url, server.port, tmp_path, relay=relay):
            await post_to(port, "alice@corp.example", "eng@corp.example")
            await until(lambda: len(server.handler.refused) >= 3)
            states = await settled(bot.app)
            assert set(states) == set(ENG)
            assert "bounced" not in states.values(), states  # the relay's doing, not theirs
            log = await bot.say(HR, "/posts eng")
            assert "3 recipients" in log and "— delivered" not in log, log
            assert "0 delivered" in log and "waiting to retry" in log, log
            hr = [m.text for kind, conv, m in bot.console.transcript if conv == "hr" and "bounced" in m.text]
            assert not hr, hr
            server.handler.fix()
            (done,) = await fanned_out(bot.app)
            assert set((await deliveries(bot.app, done.id)).values()) == {"sent"}
            for member in ENG:
                assert len(server.handler.to(member)) == 1, member
            assert "— delivered" in await bot.say(HR, "/posts eng")


async def test_a_bare_550_proven_by_a_later_delivery_bounces_only_that_member(database_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One connection: bob's bare refusal is followed by fwd@'s delivery to the same domain over it."""
    with FaultyServer() as server:
        server.handler.rcpt_replies["bob@corp.example"] = GENERIC_550
        async for bot, port in running(database_url, server.port, tmp_path, relay={"connections": 1}):
            await post_to(port, "alice@corp.example", "eng@corp.example")
            (done,) = await fanned_out(bot.app)
            states = await deliveries(bot.app, done.id)
            assert states == {
                "alice@corp.example": "sent",
                "bob@corp.example": "bounced",
                "fwd@corp.example": "sent",
            }
            log = await bot.say(HR, "/posts eng")
            assert "2 delivered, 1 bounced" in log, log


async def test_an_owner_who_left_gets_no_undeliverable_notice_and_hr_is_told(
    database_url, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """alice@ owns eng@ (the rules file) and leaves; bob@'s copy bounces (550 5.1.1): the notice is not
    mailed to her, and HR's chat report says nobody else was told."""
    from datetime import UTC, datetime

    from bot.events import PersonEvent

    async for bot, port in running(database_url, smtp.port, tmp_path):
        await bot.core.handle_person_event(
            PersonEvent("left", "test", "E1", None, {}, "l1", datetime.now(UTC))
        )
        smtp.handler.fail_rcpt["bob@corp.example"] = [550]
        await post_to(port, "fwd@corp.example", "eng@corp.example")
        (done,) = await fanned_out(bot.app)
        assert (await deliveries(bot.app, done.id))["bob@corp.example"] == "bounced"
        await until(lambda: len(smtp.handler.to("fwd@corp.example")) == 1)
        assert not smtp.handler.to("alice@corp.example")  # the notice is sent before the post is done
        assert not [m for m in smtp.messages if "Undeliverable" in str(m.message["Subject"])]
        hr = [m.text for kind, conv, m in bot.console.transcript if conv == "hr" and "bounced" in m.text]
        assert hr and "no owner at the company" in hr[-1], hr


async def group_addresses(bot) -> set[str]:  # type: ignore[no-untyped-def]
    from bot.db.models import Group

    async with bot.app.ctx.sessions() as session:
        return set((await session.execute(select(Group.address))).scalars())


async def test_a_group_cannot_take_a_persons_or_postrooms_own_address(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tryout finding: /newgroup on an employee's own mailbox, then /addgroup, sent that person's mail to
    someone else (through the relay and the Postfix export); so did Postroom's own addresses."""
    from datetime import UTC, datetime

    from bot.events import PersonEvent

    async for bot, _port in running(database_url, smtp.port, tmp_path):
        await bot.core.handle_person_event(
            PersonEvent("left", "test", "E3", None, {}, "l3", datetime.now(UTC))
        )
        before = await group_addresses(bot)
        expected = {
            "bob@corp.example": "is the mailbox of Bob (bob@corp.example): a group can't take a person's address",
            "Bob+lists": "is the mailbox of Bob (bob@corp.example)",
            "chen": "who has left: a group can't take a person's address, even a leaver's",
            "news": "campaigns.from_address",
            # Tryout: the campaign sender's, the unsubscribe mailbox's and a return path's addresses with a
            # tag were taken (mail to news+x@ is delivered to news@'s mailbox).
            "news+x": "is the campaigns' From address news@corp.example (campaigns.from_address) with a tag",
            "unsubscribe+x@corp.example": "is the unsubscribe mailbox unsubscribe@corp.example (campaigns.unsubscribe_mailbox) with a tag",
            "unsubscribe@corp.example": "campaigns.unsubscribe_mailbox",
            "bounces": "Postroom's own addresses",
            "bounces+g.x": "Postroom's own addresses",
            "noreply": "Postroom's own addresses",
            "postmaster": "RFC 2142",
            "abuse@corp.example": "must reach a person who answers for it, not a group",
        }
        for name, why in expected.items():
            reply = await bot.say(HR, f"/newgroup {name}")
            assert why in reply and "Usage" not in reply and "Traceback" not in reply, (name, reply)
        assert await group_addresses(bot) == before
        reply = await bot.say(HR, "/addgroup bob alice@corp.example")
        assert "no group" in reply.lower(), reply
        assert "Created the internal group" in await bot.say(
            HR, "/newgroup eng-leads"
        )  # an ordinary name still works


def test_the_rules_file_refuses_postrooms_own_addresses_with_the_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bot.groups.rules import RulesError, parse_rules
    from tests.conftest import make_settings

    settings = make_settings("sqlite+aiosqlite:///:memory:", 2525, tmp_path)
    text = "groups:\n  - address: eng\n  - address: postmaster\n    members: everyone\n"
    try:
        parse_rules(text, settings, "groups.yaml")
    except RulesError as exc:
        assert "groups.yaml, line 3" in str(exc) and "RFC 2142" in str(exc), exc
    else:
        raise AssertionError("postmaster@ was accepted as a rule group")


async def test_a_rule_group_on_a_persons_address_is_not_created_and_says_its_line(
    database_url, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from bot.groups import planner
    from bot.groups.rules import parse_rules

    async for bot, _port in running(database_url, smtp.port, tmp_path):
        rules = parse_rules(
            "groups:\n  - address: social2\n  - address: bob\n    members: everyone\n", bot.app.settings
        )
        async with bot.app.ctx.sessions() as session, session.begin():
            done = await planner.sync_group_definitions(session, rules, bot.app.settings, actor="t", via="t")
        assert "created social2@corp.example" in done
        assert any("not created bob@corp.example (rules file, line 3)" in d for d in done), done
        assert "bob@corp.example" not in await group_addresses(bot)
        assert "social2@corp.example" in await group_addresses(bot)


async def test_a_joiner_whose_email_is_a_groups_address_is_refused(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    import pytest

    from bot.db.models import Person
    from bot.errors import UserError
    from bot.events import PersonEvent

    async for bot, _port in running(database_url, smtp.port, tmp_path):
        joined = PersonEvent(
            "joined", "hr", "E9", "eng@corp.example", {"department": "Sales"}, "j9", datetime.now(UTC)
        )
        with pytest.raises(UserError) as refused:
            await bot.core.handle_person_event(joined)
        assert "a person and a group can't share an address" in refused.value.sentence
        async with bot.app.ctx.sessions() as session:
            assert (
                await session.execute(select(Person.id).where(Person.email == "eng@corp.example"))
            ).first() is None
