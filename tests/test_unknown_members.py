"""/addgroup of a company address no source knows asks first (--unknown-ok), and /audit lists such members
(issue "Safe to run for real": `/addgroup eng ghost@corp.example` used to add a person nobody knows,
silently)."""

from __future__ import annotations

from tests.conftest import HR


async def test_an_address_nobody_knows_is_added_only_when_hr_says_so(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    refused = await bot.say(HR, "/addgroup eng alice@corp.example ghost@corp.example")
    assert "No HR source or messenger knows ghost@corp.example: check the spelling" in refused
    assert "--unknown-ok" in refused and "Usage:" not in refused  # a refusal, not a malformed command
    assert "eng@corp.example has no members yet." in await bot.say(HR, "/members eng")  # nothing changed
    assert "Added alice@corp.example to eng@corp.example" in await bot.say(
        HR, "/addgroup eng alice@corp.example"
    )
    added = await bot.say(HR, "/addgroup eng ghost@corp.example --unknown-ok")
    assert added.startswith("Added ghost@corp.example to eng@corp.example")
    audit = await bot.say(HR, "/audit")
    assert "Members no HR source or messenger knows: ghost@corp.example in eng@corp.example" in audit


async def test_external_members_of_an_open_group_need_no_flag(bot) -> None:  # type: ignore[no-untyped-def]
    """Partners outside the company are never people on record: the question is for company addresses."""
    from sqlalchemy import update

    from bot.db.models import Group

    await bot.say(HR, "/newgroup partners")
    async with bot.core.ctx.sessions() as s, s.begin():
        await s.execute(update(Group).where(Group.local_part == "partners").values(kind="external-allowed"))
    assert (await bot.say(HR, "/addgroup partners lena@example.com")).startswith("Added lena@example.com")
