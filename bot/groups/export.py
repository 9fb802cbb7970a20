"""Group membership for mail servers that expand group addresses themselves (Postfix)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from bot.context import Context
from bot.db.models import Group, Membership


async def postfix_virtual(ctx: Context) -> str:
    """A Postfix `virtual_alias_maps` table: `group@domain member1,member2,…`, one group a line.

    A group with no members maps to nothing and is left out (Postfix then rejects its address). A group's
    address among another's members is left out, as the relay and the manifests' lookup leave it out:
    Postfix would expand it without asking that group's posting policy.
    """
    members: dict[str, list[str]] = defaultdict(list)
    async with ctx.sessions() as session:
        groups = set((await session.execute(select(Group.address))).scalars())
        rows = await session.stream(
            select(Group.address, Membership.email)
            .join(Membership, Membership.group_id == Group.id)
            .order_by(Group.address, Membership.email)
        )
        async for address, email in rows:
            if email not in groups:
                members[address].append(email)
    lines = [
        "# Postroom email groups, written by `postroom groups export --format postfix`.",
        "# Regenerate after membership changes, then: postmap <this file>",
    ]
    lines += [f"{address} {','.join(emails)}" for address, emails in sorted(members.items())]
    return "\n".join(lines) + "\n"
