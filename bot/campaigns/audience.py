"""Who a campaign reaches: a contact list (narrowed by a segment's expression, bot/campaigns/segments.py)
or a group, minus consent-less contacts and suppressions; for a joiner automation, the company's people.

Streamed in chunks, so memory does not grow with the audience. The segment is a SQL condition with
bound values, applied in the database: set-based, never a filter over rows fetched into Python.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from bot.addresses import email_hash
from bot.campaigns.segments import check, compile_where
from bot.config import Settings
from bot.db.models import (
    Campaign,
    Contact,
    ContactList,
    Group,
    ListMember,
    Membership,
    Person,
    Segment,
    Suppression,
)
from bot.errors import UserError
from bot.i18n import t

CHUNK = 1000


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    attributes: dict[str, Any]


async def resolve_audience(session: AsyncSession, settings: Settings, name: str) -> tuple[str, str]:
    """('list', list name) or ('group', group address) for what a person typed after --to."""
    from bot.groups.service import find_group

    raw = name.strip()
    if not raw:
        raise UserError(t("--to needs a contact list or a group."))
    if "@" not in raw:
        lst = (await session.execute(select(ContactList).where(ContactList.name == raw))).scalar_one_or_none()
        if lst is not None:
            return "list", lst.name
    try:
        group = await find_group(session, raw, settings)
    except UserError:
        lists = (
            (await session.execute(select(ContactList.name).order_by(ContactList.name).limit(20)))
            .scalars()
            .all()
        )
        if lists:
            raise UserError(
                t(
                    "“{text}” is neither a contact list nor a group. Contact lists: {names}.",
                    text=raw[:80],
                    names=", ".join(lists),
                )
            ) from None
        raise UserError(
            t(
                "“{text}” is neither a contact list nor a group. There are no contact lists yet.",
                text=raw[:80],
            )
        ) from None
    return "group", group.address


@dataclass(frozen=True)
class Target:
    """What --to (and --where) name: a list with an optional expression, or a group."""

    kind: str  # list | group | joiners
    name: str
    where: str | None = None
    segment: str | None = None  # the named segment it came from (its definition is copied, so it is bound)


async def resolve_target(session: AsyncSession, settings: Settings, to: str, where: str | None) -> Target:
    """A list, a named segment (its list and expression copied), or a group; --where narrows a list."""
    raw = to.strip()
    segment = None
    if raw and "@" not in raw:
        found = (await session.execute(select(ContactList.id).where(ContactList.name == raw))).first()
        if found is None:
            segment = (await session.execute(select(Segment).where(Segment.name == raw))).scalar_one_or_none()
    if segment is not None:
        expression = segment.expression if not where else f"({segment.expression}) and ({where})"
        return Target("list", segment.list_name, check(expression), segment.name)
    kind, name = await resolve_audience(session, settings, raw)
    if where:
        if kind != "list":
            raise UserError(t("--where narrows a contact list; {name} is a group.", name=name))
        return Target(kind, name, check(where))
    return Target(kind, name)


def audience_filter(campaign: Campaign, now: datetime | None = None) -> ColumnElement[bool]:
    if not campaign.audience_where:
        return true()
    return compile_where(campaign.audience_where, now or datetime.now(UTC))


async def suppressed_among(session: AsyncSession, emails: Iterable[str]) -> set[str]:
    """Which of these addresses are on the suppression list (checked by hash: erased ones too)."""
    by_hash = {email_hash(e): e for e in emails}
    if not by_hash:
        return set()
    found = (
        await session.execute(select(Suppression.email_hash).where(Suppression.email_hash.in_(list(by_hash))))
    ).scalars()
    return {by_hash[h] for h in found}


async def stream_candidates(
    session: AsyncSession, settings: Settings, campaign: Campaign
) -> AsyncIterator[list[Recipient]]:
    """Chunks of recipients before suppression: consented contacts, or a group's members.

    Internal members of a group need no consent record; external members of an
    external-allowed group do, like any contact.
    """
    if campaign.audience_kind == "joiners":
        people = select(Person.id, Person.email, Person.name, Person.attributes).where(
            Person.status == "active"
        )
        last_id = 0
        while True:
            rows = (
                await session.execute(people.where(Person.id > last_id).order_by(Person.id).limit(CHUNK))
            ).all()
            if not rows:
                return
            last_id = rows[-1].id
            yield [Recipient(r.email, r.name, dict(r.attributes or {})) for r in rows]
    if campaign.audience_kind == "list":
        stmt = (
            select(Contact.id, Contact.email, Contact.name, Contact.attributes)
            .join(ListMember, ListMember.contact_id == Contact.id)
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(
                ContactList.name == campaign.audience_name,
                Contact.consent_at.is_not(None),
                audience_filter(campaign),
            )
            .order_by(Contact.id)
        )
        last_id = 0
        while True:
            rows = (await session.execute(stmt.where(Contact.id > last_id).limit(CHUNK))).all()
            if not rows:
                return
            last_id = rows[-1].id
            yield [Recipient(r.email, r.name, dict(r.attributes or {})) for r in rows]
    else:
        group = (
            await session.execute(select(Group).where(Group.address == campaign.audience_name))
        ).scalar_one_or_none()
        if group is None:
            raise UserError(t("The group {address} no longer exists.", address=campaign.audience_name))
        stmt = (
            select(
                Membership.id,
                Membership.email,
                Person.name,
                Person.attributes,
                Person.status,
                Contact.name.label("cname"),
                Contact.attributes.label("cattrs"),
                Contact.consent_at,
            )
            .outerjoin(Person, Person.id == Membership.person_id)
            .outerjoin(Contact, Contact.email == Membership.email)
            .where(Membership.group_id == group.id)
            .order_by(Membership.id)
        )
        last_id = 0
        while True:
            rows = (await session.execute(stmt.where(Membership.id > last_id).limit(CHUNK))).all()
            if not rows:
                return
            last_id = rows[-1].id
            chunk = []
            for r in rows:
                if settings.is_internal(r.email):
                    if r.status == "left":
                        continue
                    chunk.append(Recipient(r.email, r.name or r.cname, dict(r.attributes or r.cattrs or {})))
                elif r.consent_at is not None:
                    chunk.append(Recipient(r.email, r.cname, dict(r.cattrs or {})))
            if chunk:
                yield chunk


async def withdrawn_among(session: AsyncSession, campaign: Campaign, emails: list[str]) -> set[str]:
    """Which of these addresses an automation may no longer mail, checked at send time: a contact who
    left the list or has no consent any more (or fell out of the segment), a joiner who has left."""
    if not emails or campaign.kind != "automation":
        return set()
    if campaign.audience_kind == "joiners":
        still = select(Person.email).where(Person.email.in_(emails), Person.status == "active")
    elif campaign.audience_kind == "list":
        still = (
            select(Contact.email)
            .join(ListMember, ListMember.contact_id == Contact.id)
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(
                Contact.email.in_(emails),
                ContactList.name == campaign.audience_name,
                Contact.consent_at.is_not(None),
                audience_filter(campaign),
            )
        )
    else:
        return set()
    return set(emails) - set((await session.execute(still)).scalars())


async def stream_audience(
    session: AsyncSession, settings: Settings, campaign: Campaign
) -> AsyncIterator[list[Recipient]]:
    async for chunk in stream_candidates(session, settings, campaign):
        suppressed = await suppressed_among(session, (r.email for r in chunk))
        kept = [r for r in chunk if r.email not in suppressed]
        if kept:
            yield kept


@dataclass
class AudienceReport:
    total: int = 0  # after consent and suppression
    without_consent: int = 0
    suppressed: int = 0
    key_sets: dict[frozenset[str], tuple[int, Recipient]] | None = None


async def describe_audience(session: AsyncSession, settings: Settings, campaign: Campaign) -> AudienceReport:
    """Counts for the approval card, and one sample recipient per distinct set of attributes.

    Rendering one sample per attribute set finds every missing template value exactly
    (conditionals included) without rendering the whole audience.
    """
    report = AudienceReport(key_sets={})
    assert report.key_sets is not None
    async for chunk in stream_candidates(session, settings, campaign):
        suppressed = await suppressed_among(session, (r.email for r in chunk))
        report.suppressed += len(suppressed)
        for r in chunk:
            if r.email in suppressed:
                continue
            report.total += 1
            keys = frozenset(k for k, v in r.attributes.items() if v not in (None, ""))
            if r.name:
                keys = keys | {"name"}
            count, sample = report.key_sets.get(keys, (0, r))
            report.key_sets[keys] = (count + 1, sample)
    if campaign.audience_kind == "list":
        report.without_consent = (
            await session.execute(
                select(func.count())
                .select_from(Contact)
                .join(ListMember, ListMember.contact_id == Contact.id)
                .join(ContactList, ContactList.id == ListMember.list_id)
                .where(
                    ContactList.name == campaign.audience_name,
                    Contact.consent_at.is_(None),
                    audience_filter(campaign),
                )
            )
        ).scalar_one()
    return report
