"""HR events in time order, and what a future date can no longer do.

Tryout finding: a `joined` dated now + 23 h (inside `hr.max_future_skew_s`) made every later `left`
for that person "stale", and sending the `left` again was called a "duplicate": the leaver stayed in
every group. The person's event clock now counts at most up to now, a stale event is not recorded as
seen, and a late `left` applies unless the person already left or a newer rehire is on record.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.db.models import Membership, Person
from bot.events import PersonEvent
from tests.conftest import HR

IVAN = "ivan@corp.example"


def event(kind: str, event_id: str, at: datetime, **attrs: str) -> PersonEvent:
    return PersonEvent(kind, "hr-webhook", "E900", IVAN, attrs, event_id, at, name="Ivan Petrov")  # type: ignore[arg-type]


async def groups_of(bot, email: str = IVAN) -> set[int]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return set((await s.execute(select(Membership.group_id).where(Membership.email == email))).scalars())


async def status_of(bot) -> str:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return (await s.execute(select(Person.status).where(Person.employee_id == "E900"))).scalar_one()


async def test_a_joined_dated_in_the_future_does_not_keep_a_leaver_in_groups(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    now = datetime.now(UTC)
    assert (await bot.core.handle_person_event(event("joined", "j1", now + timedelta(hours=23)))).status == (
        "applied"
    )
    await bot.say(HR, f"/addgroup eng {IVAN}")
    assert await groups_of(bot)
    # HR's leave, dated a minute ago (the webhook's delay): it applies, though the joined is dated later.
    out = await bot.core.handle_person_event(event("left", "l1", now - timedelta(minutes=1)))
    assert out.status == "applied", out
    assert await groups_of(bot) == set()
    assert await status_of(bot) == "left"


async def test_a_stale_event_is_not_recorded_so_a_resend_is_not_a_duplicate(bot) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    assert (await bot.core.handle_person_event(event("joined", "j1", now - timedelta(hours=1)))).status == (
        "applied"
    )
    assert (await bot.core.handle_person_event(event("left", "l1", now - timedelta(minutes=30)))).status == (
        "applied"
    )
    # An older change after the leave resurrects nobody — and saying it again is still "stale", not a
    # "duplicate" that HR would take for "done".
    for _ in range(2):
        out = await bot.core.handle_person_event(
            event("changed", "c0", now - timedelta(minutes=50), department="Sales")
        )
        assert out.status == "stale"
    assert await status_of(bot) == "left"


async def test_a_late_left_applies_after_a_later_change_but_not_before_a_newer_rehire(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    now = datetime.now(UTC)
    t0 = now - timedelta(hours=5)
    await bot.core.handle_person_event(event("joined", "j1", t0))
    await bot.core.handle_person_event(event("changed", "c1", t0 + timedelta(hours=2), department="Sales"))
    await bot.say(HR, f"/addgroup eng {IVAN}")
    # The leave (dated between the two) arrives last: a leaver must not stay in groups.
    out = await bot.core.handle_person_event(event("left", "l1", t0 + timedelta(hours=1)))
    assert out.status == "applied", out
    assert await groups_of(bot) == set() and await status_of(bot) == "left"
    # A leave already applied: a second, older one changes nothing.
    assert (await bot.core.handle_person_event(event("left", "l0", t0 + timedelta(minutes=30)))).status == (
        "stale"
    )
    # Rehired: the leave from before the rehire, delivered late, is stale (the rehire is newer).
    rehire = await bot.core.handle_person_event(event("joined", "j2", t0 + timedelta(hours=3)))
    assert rehire.status == "applied" and rehire.before is not None
    await bot.say(HR, f"/addgroup eng {IVAN}")
    late = await bot.core.handle_person_event(event("left", "l-old", t0 + timedelta(hours=2, minutes=30)))
    assert late.status == "stale"
    assert await status_of(bot) == "active" and await groups_of(bot)


async def test_a_left_dated_in_the_future_is_held_until_its_date(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    now = datetime.now(UTC)
    await bot.core.handle_person_event(event("joined", "j1", now - timedelta(days=30)))
    await bot.say(HR, f"/addgroup eng {IVAN}")
    out = await bot.core.handle_person_event(event("left", "l1", now + timedelta(hours=5)))
    assert out.status == "applied"
    assert out.removal_due is not None and out.removal_due == now + timedelta(hours=5)
    assert await groups_of(bot)  # still in their groups until the leave's date
    assert bot.app.scheduler.next_run(f"hr.leaver:{out.person_id}") == now + timedelta(hours=5)
    assert "until" in out.note and "grace period" not in out.note, out.note
    # The date comes: the job removes them.
    assert await bot.app.scheduler.run_now(f"hr.leaver:{out.person_id}")
    assert await groups_of(bot) == set()


async def test_an_approved_rule_addition_is_dropped_when_the_person_no_longer_matches(
    database_url, smtp, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A joiner's addition to a protected rule group waits for an approver; they move to another
    department meanwhile: approving the old plan must not put them in the old department's group."""
    from tests.conftest import APPROVER
    from tests.lifecycle_kit import groups_of as groups_by_name
    from tests.lifecycle_kit import lifecycle_bot

    async for lbot in lifecycle_bot(database_url, smtp.port, tmp_path):
        from sqlalchemy import update

        from bot.db.models import Group

        async with lbot.app.ctx.sessions() as s, s.begin():
            await s.execute(update(Group).where(Group.local_part == "eng").values(protected=True))
        now = datetime.now(UTC)
        joined = await lbot.core.handle_person_event(
            event("joined", "j1", now - timedelta(minutes=10), department="Engineering")
        )
        assert joined.held is not None
        await lbot.core.handle_person_event(
            event("changed", "c1", now - timedelta(minutes=5), department="Sales")
        )
        answer = await lbot.say(APPROVER, f"/plan approve {joined.held}")
        assert "eng" not in await groups_by_name(lbot, IVAN), answer
        assert f"{IVAN} no longer matches rule eng" in answer, answer
