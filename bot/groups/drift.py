"""Drift: what a platform's membership says that Postroom's does not, because someone changed the group
by hand in the platform. Found by comparing the platform's real membership with Postroom's, leaving
out every address with a change still on its way (the outbox); recorded for HR, who adopt or
overwrite each item (bot/groups/adoption.py). Nothing here changes a membership.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.context import Context
from bot.db.models import Group, Membership, Person, ProviderDrift, ProviderOp
from bot.groups.providers.base import ProviderError, RemoteMember
from bot.groups.providers.registry import LOCAL, Providers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftItem:
    id: int
    group_id: int
    group: str
    provider: str
    email: str
    kind: str  # added (on the platform only) | removed (in Postroom only)
    role: str = "member"
    left: bool = False  # the address belongs to someone who has left


@dataclass
class Scan:
    items: list[DriftItem] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # group -> why its platform could not be read
    groups: int = 0


async def compare(
    session: AsyncSession, group_id: int, remote: list[RemoteMember]
) -> list[tuple[str, str, str]]:
    """(email, kind, role) for each difference nobody in Postroom asked for."""
    rows = {
        e: (s, r)
        for e, s, r in (
            await session.execute(
                select(Membership.email, Membership.state, Membership.role).where(
                    Membership.group_id == group_id
                )
            )
        ).all()
    }
    in_flux = set(
        (await session.execute(select(ProviderOp.email).where(ProviderOp.group_id == group_id))).scalars()
    )
    there = {m.email.lower(): m.role for m in remote}
    found = [(e, "added", role) for e, role in sorted(there.items()) if e not in rows and e not in in_flux]
    found += [
        (e, "removed", role)
        for e, (state, role) in sorted(rows.items())
        if state == "active" and e not in there and e not in in_flux
    ]
    return found


async def record(
    session: AsyncSession, group_id: int, provider: str, found: list[tuple[str, str, str]]
) -> None:
    """The group's drift is what was just found: new items added, resolved ones dropped."""
    known = {
        d.email: d
        for d in (
            await session.execute(select(ProviderDrift).where(ProviderDrift.group_id == group_id))
        ).scalars()
    }
    seen = set()
    for email, kind, role in found:
        seen.add(email)
        item = known.get(email)
        if item is None:
            session.add(
                ProviderDrift(group_id=group_id, provider=provider, email=email, kind=kind, role=role)
            )
        elif item.kind != kind:
            item.kind, item.role = kind, role
    gone = [e for e in known if e not in seen]
    if gone:
        await session.execute(
            delete(ProviderDrift).where(ProviderDrift.group_id == group_id, ProviderDrift.email.in_(gone))
        )
    await session.flush()


async def items(session: AsyncSession, ids: list[int] | None = None) -> list[DriftItem]:
    query = (
        select(ProviderDrift, Group.address)
        .join(Group, Group.id == ProviderDrift.group_id)
        .order_by(Group.address, ProviderDrift.email)
    )
    if ids is not None:
        query = query.where(ProviderDrift.id.in_(ids))
    rows = (await session.execute(query)).all()
    emails = sorted({d.email for d, _ in rows})
    left: set[str] = set()
    for i in range(0, len(emails), 500):
        left.update(
            (
                await session.execute(
                    select(Person.email).where(Person.email.in_(emails[i : i + 500]), Person.status == "left")
                )
            ).scalars()
        )
    return [
        DriftItem(d.id, d.group_id, address, d.provider, d.email, d.kind, d.role, d.email in left)
        for d, address in rows
    ]


async def scan(ctx: Context, providers: Providers, group_ids: list[int] | None = None) -> Scan:
    """Read every platform group's membership and record what differs; a platform that cannot be read
    is named, and its groups' earlier findings stay."""
    out = Scan()
    async with ctx.sessions() as session:
        groups = (await session.execute(select(Group.id, Group.address, Group.provider))).all()
    for gid, address, own in groups:
        name = providers.name_of(own)
        if name == LOCAL or (group_ids is not None and gid not in group_ids):
            continue
        out.groups += 1
        try:
            remote = await providers.get(name).members(address)
        except ProviderError as exc:
            out.failed[address] = exc.sentence
            continue
        except Exception as exc:  # a platform's own failure changes nobody's data (invariant 8)
            log.exception("reading %s on %s failed", address, name)
            out.failed[address] = f"{type(exc).__name__}"
            continue
        async with ctx.sessions() as session, session.begin():
            await record(session, gid, name, await compare(session, gid, remote))
    async with ctx.sessions() as session:
        out.items = await items(session)
    return out
