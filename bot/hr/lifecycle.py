"""Joiners, movers and leavers: what a `PersonEvent` does, whatever its source.

An event has one effect however often it is delivered (its id is kept), and events for one
person apply in order: one older than the last applied for that person changes nothing.
A leaver is removed from every group — manual memberships too — through the same
plan → policy → apply → audit path as every other change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from bot import audit
from bot.addresses import normalise
from bot.db.models import Group, Membership, Person, ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.events import PersonEvent
from bot.groups import service as groups

if TYPE_CHECKING:
    from bot.core import Core


@dataclass
class Outcome:
    status: str  # applied | duplicate | stale
    person: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


async def apply_person_event(core: Core, event: PersonEvent) -> Outcome:
    ctx = core.ctx
    if event.kind not in ("joined", "changed", "left"):
        raise UserError(f"“{event.kind}” is not an HR event type (joined, changed, left).")
    async with ctx.sessions() as session, session.begin():
        fresh = await insert_ignore(session, ProcessedEvent, [{"source": f"person:{event.source}",
                                                               "event_id": event.event_id[:300]}],
                                    ["source", "event_id"])
        if not fresh:
            return Outcome("duplicate")
        person = (await session.execute(select(Person).where(Person.employee_id == event.external_id))).scalar_one_or_none()
        email = normalise(event.email) if event.email else (person.email if person else None)
        if email is None:
            raise UserError(f"The {event.kind} event for {event.external_id} has no email address, and the person "
                            "is not known yet.")
        if person is None:
            person = (await session.execute(select(Person).where(Person.email == email))).scalar_one_or_none()
        if person is not None and person.last_event_at is not None and event.at <= person.last_event_at:
            return Outcome("stale", email)
        if person is None:
            person = Person(employee_id=event.external_id, email=email, name=event.name,
                            attributes=dict(event.attributes), source=event.source, last_event_at=event.at)
            session.add(person)
            await session.flush()
        before = {"status": person.status, "email": person.email, "attributes": person.attributes}
        person.last_event_at = event.at
        person.employee_id = person.employee_id or event.external_id
        outcome = Outcome("applied", email)
        if event.kind == "left":
            person.status = "left"
            person.left_at = event.at
            rows = (await session.execute(
                select(Group, Membership.email).join(Membership, Membership.group_id == Group.id)
                .where(or_(Membership.person_id == person.id, Membership.email == person.email))
            )).all()
            plan = groups.Plan()
            for group, member_email in rows:
                plan.changes.append(groups.Change("remove", group.id, group.address, member_email, "leaver",
                                                  f"{email} left ({event.source})", person.id))
            await groups.apply(session, plan, actor=f"hr:{event.source}", via=event.source)
            outcome.removed = [c.group_address for c in plan.changes]
        else:
            person.status = "active"
            person.left_at = None
            if event.email:
                person.email = email
            if event.name:
                person.name = event.name
            person.attributes = {**(person.attributes or {}), **dict(event.attributes)}
        audit.record(session, actor=f"hr:{event.source}", via=event.source, action=f"person.{event.kind}",
                     subject=f"person:{person.employee_id or email}", before=before,
                     after={"status": person.status, "email": person.email, "attributes": person.attributes},
                     detail=f"event {event.event_id}")
    return outcome
