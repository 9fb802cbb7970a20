"""A big plan, counted once and told in a bounded summary.

Tryout findings (3,007 staff imported, then `groups: []` and `/rules reload`): the held plan counted every
removal twice ("it removes 6014 of 3007 members (200%) of all-staff@… Changes: 0 to add, 6022 to remove":
a rule membership was removed once because the person no longer matches the rule and again because the
rule is no longer in the file); and `/plan approve` printed 569,300 bytes — a line for every one of ~3,000
people, three times (the approvals post, the card, the reply).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.db.models import Group, Membership, PendingPlan, Person
from bot.events import Message
from tests.conftest import APPROVER, HR, ChatBot, render_message
from tests.lifecycle_kit import RULES, lifecycle_bot, write_rules

PEOPLE = 1600  # memberships: all-staff 1,600, eng and sales 533 each, berlin 320 — a plan of ~3,000
BOUND = 4000  # the most a plan's answer or card may say, whatever the plan's size


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


async def on_record(bot: ChatBot, n: int = PEOPLE) -> None:
    """n people: a third each in Engineering, Sales and Finance; every fifth in Berlin."""
    depts = ("Engineering", "Sales", "Finance")
    async with bot.app.ctx.sessions() as s, s.begin():
        s.add_all(
            Person(
                employee_id=f"E{i:05d}",
                email=f"p{i:05d}@corp.example",
                name=f"Person {i}",
                attributes={"department": depts[i % 3], "location": "Berlin" if i % 5 == 0 else "Paris"},
            )
            for i in range(n)
        )


async def memberships(bot: ChatBot) -> int:
    async with bot.app.ctx.sessions() as s:
        return int((await s.execute(select(func.count()).select_from(Membership))).scalar_one())


def said(m: Message) -> str:
    return render_message(m, "en")


def everything_said(bot: ChatBot) -> list[str]:
    return [said(m) for _kind, _conv, m in bot.console.transcript]


async def test_a_plan_removing_every_rule_membership_counts_each_once_and_says_it_briefly(
    lbot: ChatBot, tmp_path: Path
) -> None:
    await on_record(lbot)
    synced = await lbot.say(HR, "/sync")  # the rules put everyone in their groups
    size = PEOPLE + 534 + 533 + 320
    assert await memberships(lbot) == size, synced
    write_rules(tmp_path, "groups: []\n")
    answer = await lbot.say(HR, "/rules reload")
    assert "plan #1" in answer, answer
    assert len(answer) <= BOUND, len(answer)
    async with lbot.app.ctx.sessions() as s:
        pending = (await s.execute(select(PendingPlan))).scalar_one()
    keys = [(c["group_id"], c["email"]) for c in pending.payload["changes"]]
    assert len(keys) == len(set(keys)) == size, (len(keys), len(set(keys)))
    for text in (answer, said(lbot.cards("approvals")[-1])):
        assert len(text) <= BOUND, len(text)
        assert f"it removes {PEOPLE} of {PEOPLE} members (100%) of all-staff@corp.example" in text, text
        assert "it removes 534 of 534 members (100%) of eng@corp.example" in text, text
        assert "sales@corp.example: 0 to add, 533 to remove" in answer, answer
        assert f"0 to add, {size} to remove" in text, text
        assert "… and " in text and "postroom groups plan 1" in text, text
    assert f"it removes {size} memberships at once" in answer, answer

    # The rules come back before the approver looks: every removal is dropped, said per rule.
    write_rules(tmp_path, RULES)
    approved = await lbot.say(APPROVER, "/plan approve 1")
    assert await memberships(lbot) == size, approved
    assert f"{PEOPLE} people match rule all-staff again, so stay" in approved, approved
    assert "p00001@corp.example" not in approved, approved

    # Emptied again and approved: each membership removed once, told in a bounded answer.
    write_rules(tmp_path, "groups: []\n")
    assert "plan #2" in await lbot.say(HR, "/rules reload")
    approved = await lbot.say(APPROVER, "/plan approve 2")
    assert f"{size} changes applied" in approved, approved
    assert await memberships(lbot) == 0
    for text in everything_said(lbot):
        assert len(text) <= BOUND, (len(text), text[:300])


async def test_the_whole_plan_is_printed_by_postroom_groups_plan(lbot: ChatBot, tmp_path: Path) -> None:
    from bot.groups.membership import whole_plan

    await on_record(lbot, 60)
    await lbot.say(HR, "/sync")
    write_rules(tmp_path, "groups: []\n")
    assert "plan #1" in await lbot.say(HR, "/rules reload")
    text = await whole_plan(lbot.app.ctx, 1)
    lines = [line for line in text.splitlines() if line.startswith("− ")]
    assert len(lines) == len(set(lines)) == 60 + 20 + 20 + 12, text
    assert "− p00059@corp.example from all-staff@corp.example" in text, text


async def test_the_guard_counts_a_membership_removed_twice_in_a_plan_once(lbot: ChatBot) -> None:
    from bot.groups.guard import Guard
    from bot.groups.service import Change, Plan

    await on_record(lbot, 60)
    await lbot.say(HR, "/sync")
    async with lbot.app.ctx.sessions() as s:
        eng = (
            await s.execute(
                select(Membership.email, Membership.group_id)
                .join(Group, Group.id == Membership.group_id)
                .where(Group.local_part == "eng")
                .order_by(Membership.email)
            )
        ).all()[0:4]
        gid = eng[0][1]
        # 4 of eng's 20 (20%, under the 30% share), each removed for two reasons.
        changes = [
            Change("remove", gid, "eng@corp.example", email, "rule:eng", why)
            for email, _g in eng
            for why in ("a reason", "another reason")
        ]
        verdict = await Guard(lbot.app.ctx.settings).review(s, Plan(changes), "reconcile")
    assert verdict.reasons == [] and not verdict.held, verdict.reasons


def _named_and_more(text: str) -> tuple[int, list[int]]:
    """How many changes a text names (its "+ …"/"− …" lines), and the N of each "… and N more" it says."""
    import re

    lines = [line.strip(" │") for line in text.splitlines()]
    named = sum(1 for line in lines if line.startswith(("+ ", "− ")))
    return named, [int(n) for n in re.findall(r"… and (\d+) more\b", text)]


async def test_the_approval_card_counts_the_changes_it_leaves_out(lbot: ChatBot, tmp_path: Path) -> None:
    """Tryout finding: the card cut the plan's text at its bound and said "… and 8 more lines" while 2,974
    changes went unnamed. It now says how many changes it leaves out."""
    await on_record(lbot, 60)
    await lbot.say(HR, "/sync")
    write_rules(tmp_path, "groups: []\n")
    assert "plan #1" in await lbot.say(HR, "/rules reload")
    async with lbot.app.ctx.sessions() as s:
        total = len((await s.execute(select(PendingPlan))).scalar_one().payload["changes"])
    card = said(lbot.cards("approvals")[-1])
    assert "more lines" not in card, card
    named, more = _named_and_more(card)
    assert 0 < named < total and more == [total - named], (named, more, total, card)


def test_a_plan_summary_cut_by_its_bound_counts_the_changes_it_leaves_out() -> None:
    from bot.groups.service import SUMMARY_CHARS, Change, Plan

    reason = "rule eng: department is " + "Engineering or " * 12 + "Research"
    plan = Plan(
        [
            Change("add", 1, "eng@corp.example", f"p{i:03d}@corp.example", "rule:eng", reason)
            for i in range(25)
        ]
    )
    text = plan.summary()
    assert len(text) <= SUMMARY_CHARS and "more lines" not in text, text
    named, more = _named_and_more(text)
    assert 0 < named < 20 and more == [25 - named], (named, more, text)
