"""Held membership plans: re-planned when approved, one per identical request, and the rolling brake.

Tryout findings: a plan held by the mass-removal brake and approved later applied its old list — it
removed someone HR had added again meanwhile; the same request sent twice queued two plans; and
removing a group's members a few at a time (each below `groups.max_remove_share`) emptied it without
ever waiting for an approver.
"""

from __future__ import annotations

from sqlalchemy import select, update

from bot.db.models import Group, Membership, PendingPlan, Person
from tests.conftest import APPROVER, HR, ChatBot

ENG = ["alice", "bob", "carl", "carol", "chen", "dana", "erin", "frank", "gus"]


def addr(name: str) -> str:
    return f"{name}@corp.example"


async def members(bot: ChatBot, group: str = "eng") -> set[str]:
    async with bot.app.ctx.sessions() as s:
        return set(
            (
                await s.execute(
                    select(Membership.email)
                    .join(Group, Group.id == Membership.group_id)
                    .where(Group.local_part == group)
                )
            ).scalars()
        )


async def eng_of(bot: ChatBot, names: list[str]) -> None:
    await bot.say(HR, "/newgroup eng")
    for name in names:
        await bot.say(HR, f"/addgroup eng {addr(name)}")
    assert await members(bot) == {addr(n) for n in names}


async def test_an_approved_plan_is_planned_again_against_who_is_in_the_group_now(bot: ChatBot) -> None:
    await eng_of(bot, ENG[:6])  # alice bob carl carol chen dana
    held = await bot.say(HR, f"/removegroup eng {addr('alice')} {addr('bob')} {addr('carl')}")
    assert "plan #1" in held, held
    # While it waits: bob is removed by hand (one at a time applies), carl is removed and added again.
    await bot.say(HR, f"/removegroup eng {addr('bob')}")
    await bot.say(HR, f"/removegroup eng {addr('carl')}")
    await bot.say(HR, f"/addgroup eng {addr('carl')}")
    assert await members(bot) == {addr(n) for n in ("alice", "carl", "carol", "chen", "dana")}
    answer = await bot.say(APPROVER, "/plan approve 1")
    # carl was added again after the plan was made: the approval does not undo that.
    assert await members(bot) == {addr(n) for n in ("carl", "carol", "chen", "dana")}, answer
    assert "1 change applied" in answer, answer
    assert "Changed since the plan was made" in answer, answer
    assert f"{addr('bob')} is no longer in eng@corp.example" in answer, answer
    assert f"{addr('carl')} was added to eng@corp.example again after the plan was made" in answer, answer


async def test_an_approved_plan_never_adds_a_leaver_or_someone_already_in(bot: ChatBot) -> None:
    await bot.say(HR, "/newgroup vip")
    async with bot.app.ctx.sessions() as session, session.begin():
        await session.execute(update(Group).values(protected=True))
    held = await bot.say(HR, f"/addgroup vip {addr('carl')} {addr('dana')} {addr('erin')}")
    assert "plan #1" in held, held
    async with bot.app.ctx.sessions() as session, session.begin():
        await session.execute(update(Person).where(Person.email == addr("dana")).values(status="left"))
        vip = (await session.execute(select(Group).where(Group.local_part == "vip"))).scalar_one()
        session.add(Membership(group_id=vip.id, email=addr("erin"), source="manual", added_by=HR))
    answer = await bot.say(APPROVER, "/plan approve 1")
    assert await members(bot, "vip") == {addr("carl"), addr("erin")}, answer
    assert "1 change applied" in answer, answer
    assert f"{addr('erin')} is already in vip@corp.example" in answer, answer
    assert f"{addr('dana')} has left since the plan was made" in answer, answer


async def test_the_same_held_request_twice_is_one_plan(bot: ChatBot) -> None:
    await eng_of(bot, ENG[:6])
    command = f"/removegroup eng {addr('alice')} {addr('bob')} {addr('carl')}"
    first = await bot.say(HR, command)
    again = await bot.say(HR, command)
    assert "plan #1" in first and "plan #1" in again, (first, again)
    assert len(bot.cards()) == 1  # the approvers see it once
    async with bot.app.ctx.sessions() as s:
        assert len((await s.execute(select(PendingPlan.id))).all()) == 1
    # Another request (different changes) is its own plan.
    other = await bot.say(HR, f"/removegroup eng {addr('alice')} {addr('bob')} {addr('dana')}")
    assert "plan #2" in other, other
