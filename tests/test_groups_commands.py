"""HR manages email groups from chat: scenario tests through the console adapter."""

from __future__ import annotations

from sqlalchemy import func, select

from bot.db.models import AuditEntry, Membership
from tests.conftest import HR, NOBODY, SENDER


async def membership_count(bot) -> int:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return (await s.execute(select(func.count()).select_from(Membership))).scalar_one()


async def test_hr_creates_group_adds_two_people_and_lists_them(bot) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(HR, '/newgroup eng "Engineering team"')
    assert "Created the internal group eng@corp.example" in reply
    reply = await bot.say(HR, "/addgroup eng alice@corp.example bob@corp.example")
    assert "Added alice@corp.example, bob@corp.example to eng@corp.example" in reply
    reply = await bot.say(HR, "/members eng@corp.example")
    assert "alice@corp.example" in reply and "bob@corp.example" in reply and "2 members" in reply
    async with bot.core.ctx.sessions() as s:
        actions = (await s.execute(select(AuditEntry.action).order_by(AuditEntry.id))).scalars().all()
    assert actions == ["group.create", "membership.add", "membership.add"]


async def test_external_address_never_enters_an_internal_group(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    before = await membership_count(bot)
    reply = await bot.say(HR, "/addgroup eng carol@corp.example someone@gmail.com")
    assert "someone@gmail.com is outside corp.example" in reply and "campaign" in reply
    assert await membership_count(bot) == before  # the valid address was not added either


async def test_someone_without_the_hr_role_is_refused(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    reply = await bot.say(NOBODY, "/newgroup sales")
    assert "for HR;" in reply or "HR" in reply
    reply = await bot.say(NOBODY, "/addgroup eng nora@corp.example")
    assert "owners of eng@corp.example" in reply
    assert await membership_count(bot) == 0


async def test_groups_shows_how_each_membership_came_about(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/newgroup all-staff")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    await bot.say(HR, "/addgroup all-staff alice@corp.example")
    reply = await bot.say(HR, "/groups alice@corp.example")
    assert "in 2 groups" in reply and f"added by hand by {HR}" in reply
    reply = await bot.say(HR, "/groups")
    assert "all-staff@corp.example" in reply and "eng@corp.example — 1 member" in reply


async def test_remove_and_removing_a_non_member(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/addgroup eng alice@corp.example")
    reply = await bot.say(HR, "/removegroup eng alice@corp.example")
    assert "Removed alice@corp.example from eng@corp.example" in reply
    reply = await bot.say(HR, "/removegroup eng alice@corp.example")
    assert (
        "is not in eng@corp.example" in reply and "Usage: /removegroup" not in reply
    )  # a refusal, not a typo


async def test_tryout_answers_say_what_is_wrong_with_the_address(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    routed = await bot.say(HR, "/addgroup eng @relay.example:x@corp.example")
    assert "something before the @-sign" not in routed, routed
    assert "a source route (“@host:”) before the @-sign" in routed, routed
    test = await bot.say(SENDER, "/campaign test c3 x%gmail.com@corp.example")
    assert "is outside corp.example" not in test, test
    assert test.startswith(
        "Tests go to internal addresses only: x%gmail.com@corp.example is not a company address"
    )
    bot.out.seek(0)
    bot.out.truncate()
    await bot.console.say("/as")
    assert bot.out.getvalue().startswith(
        "/as needs the email address of the person to act as.\nUsage: /as <email>"
    )
