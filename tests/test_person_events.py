"""PersonEvents through the core: one effect per event, in order, leavers out of every group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.db.models import Membership, Person
from bot.events import PersonEvent
from tests.conftest import HR

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def event(
    kind: str, event_id: str, at: datetime, email: str | None = "ivan@corp.example", **attrs: str
) -> PersonEvent:
    return PersonEvent(kind, "test", "E900", email, attrs, event_id, at, name="Ivan Petrov")  # type: ignore[arg-type]


async def test_leaver_is_removed_from_every_group_and_redelivery_has_one_effect(bot) -> None:  # type: ignore[no-untyped-def]
    await bot.say(HR, "/newgroup eng")
    await bot.say(HR, "/newgroup all-staff")
    assert (
        await bot.core.handle_person_event(event("joined", "e1", T0, department="Engineering"))
    ).status == "applied"
    await bot.say(HR, "/addgroup eng ivan@corp.example")
    await bot.say(HR, "/addgroup all-staff ivan@corp.example")
    for _ in range(5):
        out = await bot.core.handle_person_event(event("left", "e2", T0 + timedelta(days=1)))
    assert out.status == "duplicate"
    async with bot.core.ctx.sessions() as s:
        assert (
            await s.execute(select(Membership).where(Membership.email == "ivan@corp.example"))
        ).first() is None
        person = (await s.execute(select(Person).where(Person.employee_id == "E900"))).scalar_one()
        assert person.status == "left"
    stale = await bot.core.handle_person_event(
        event("changed", "e0", T0 + timedelta(hours=1), department="Sales")
    )
    assert stale.status == "stale"
    async with bot.core.ctx.sessions() as s:
        assert (
            await s.execute(select(Person.status).where(Person.employee_id == "E900"))
        ).scalar_one() == "left"
