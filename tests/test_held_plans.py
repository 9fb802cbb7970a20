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


async def test_removing_a_group_a_few_at_a_time_waits_for_an_approver_within_the_window(bot: ChatBot) -> None:
    await eng_of(bot, ENG)  # nine members; 30% of them is 2.7
    # Two at a time is below the per-plan brake (fewer than guard_min_removals = 3)…
    first = await bot.say(HR, f"/removegroup eng {addr('alice')} {addr('bob')}")
    assert "waits" not in first, first
    # …but within the window the removals add up: the next two would make 4 of 9 (44%).
    second = await bot.say(HR, f"/removegroup eng {addr('carl')} {addr('carol')}")
    assert "waits for an approver (plan #1)" in second, second
    assert "in the last 24 hours" in second and "4 of the 9 members" in second, second
    assert await members(bot) == {addr(n) for n in ENG[2:]}
    # One at a time does not get round it either.
    for name in ("carl", "carol", "chen"):
        answer = await bot.say(HR, f"/removegroup eng {addr(name)}")
    assert "waits for an approver" in answer, answer
    assert len(await members(bot)) >= 6
    # What an approver approved does not count again: after the approval the next removal applies.
    async with bot.app.ctx.sessions() as s:
        pending = (
            (await s.execute(select(PendingPlan.id).where(PendingPlan.state == "pending"))).scalars().all()
        )
    for plan_id in pending:
        await bot.say(APPROVER, f"/plan approve {plan_id}")
    assert "waits" not in await bot.say(HR, f"/removegroup eng {addr('dana')}")


async def test_the_window_is_a_setting_and_zero_turns_it_off(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    settings = make_settings(database_url, smtp.port, tmp_path, groups={"remove_window_hours": 0})
    assert settings.groups.remove_window_hours == 0
    assert make_settings(database_url, smtp.port, tmp_path).groups.remove_window_hours == 24
