"""Named segments: a contact list and an expression (bot/campaigns/segments.py), with how many contacts
match now and a sample — shown before anything is submitted."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete as sql_delete
from sqlalchemy import select

from bot import audit
from bot.campaigns import service
from bot.campaigns.audience import CHUNK, check_fields, suppressed_among
from bot.campaigns.segments import check, compile_where
from bot.context import Context
from bot.db.models import Contact, ContactList, ListMember, Segment
from bot.errors import Refusal, UserError
from bot.i18n import t

SAMPLE = 5


@dataclass
class Matched:
    count: int = 0
    sample: list[str] = field(default_factory=list)
    suppressed: int = 0  # matched but on the suppression list: no campaign would mail them


async def match(ctx: Context, list_name: str, expression: str | None) -> Matched:
    """How many consented contacts on the list the expression matches now and the first few, counted
    as the campaign preview counts: a suppressed address is left out (and counted apart)."""
    condition = compile_where(expression, ctx.now()) if expression else Contact.id.is_not(None)
    base = (
        select(Contact.id, Contact.email)
        .join(ListMember, ListMember.contact_id == Contact.id)
        .join(ContactList, ContactList.id == ListMember.list_id)
        .where(ContactList.named(list_name), Contact.consent_at.is_not(None), condition)
        .order_by(Contact.id)
    )
    found = Matched()
    last_id = 0
    async with ctx.sessions() as session:
        while True:
            rows = (await session.execute(base.where(Contact.id > last_id).limit(CHUNK))).all()
            if not rows:
                break
            last_id = rows[-1].id
            suppressed = await suppressed_among(session, (r.email for r in rows))
            found.suppressed += len(suppressed)
            for r in rows:
                if r.email not in suppressed:
                    found.count += 1
                    if len(found.sample) < SAMPLE:
                        found.sample.append(r.email)
    return found


async def _get(session, name: str) -> Segment:
    service.check_name(name)
    seg = (
        (await session.execute(select(Segment).where(Segment.named(name)).order_by(Segment.id)))
        .scalars()
        .first()
    )
    if seg is None:
        raise UserError(t("There is no segment “{name}”. /segment list shows them.", name=name))
    return seg


async def create(
    ctx: Context, name: str, list_name: str, where: str, *, actor: str, via: str
) -> tuple[Segment, Matched]:
    service.check_name(name)
    expression = check(where)
    async with ctx.sessions() as session, session.begin():
        spelt = (
            await session.execute(select(ContactList.name).where(ContactList.named(list_name)))
        ).scalar_one_or_none()
        if spelt is None:
            raise UserError(t("There is no contact list “{name}”. /lists shows them.", name=list_name[:60]))
        list_name = spelt  # as the list is spelt, whatever case was typed
        if (await session.execute(select(Segment.id).where(Segment.named(name)))).first() is not None:
            raise Refusal(t("A segment named “{name}” already exists; /segment edit changes it.", name=name))
        if (await session.execute(select(ContactList.id).where(ContactList.named(name)))).first() is not None:
            raise UserError(
                t("“{name}” is a contact list already; give the segment another name.", name=name)
            )
        await check_fields(session, list_name, expression)
        seg = Segment(name=name, list_name=list_name, expression=expression, created_by=actor)
        session.add(seg)
        audit.record(
            session,
            actor=actor,
            via=via,
            action="segment.create",
            subject=f"segment:{name}",
            detail=expression,
        )
    return seg, await match(ctx, list_name, expression)


async def edit(ctx: Context, name: str, where: str, *, actor: str, via: str) -> tuple[Segment, Matched]:
    expression = check(where)
    async with ctx.sessions() as session, session.begin():
        seg = await _get(session, name)
        await check_fields(session, seg.list_name, expression)
        before = seg.expression
        seg.expression = expression
        audit.record(
            session,
            actor=actor,
            via=via,
            action="segment.edit",
            subject=f"segment:{name}",
            before={"expression": before},
            after={"expression": expression},
        )
    return seg, await match(ctx, seg.list_name, expression)


async def show(ctx: Context, name: str) -> tuple[Segment, Matched]:
    async with ctx.sessions() as session:
        seg = await _get(session, name)
    return seg, await match(ctx, seg.list_name, seg.expression)


async def listing(ctx: Context) -> list[Segment]:
    async with ctx.sessions() as session:
        return list((await session.execute(select(Segment).order_by(Segment.name).limit(100))).scalars())


async def delete(ctx: Context, name: str, *, actor: str, via: str) -> str:
    async with ctx.sessions() as session, session.begin():
        seg = await _get(session, name)
        await session.execute(sql_delete(Segment).where(Segment.id == seg.id))
        audit.record(
            session,
            actor=actor,
            via=via,
            action="segment.delete",
            subject=f"segment:{name}",
            detail=seg.expression,
        )
    return seg.name
