"""/newgroup, /addgroup, /removegroup, /groups, /members"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.addresses import normalise
from bot.commands.parser import Arg, Parsed, Spec
from bot.db.models import Group, Membership
from bot.errors import PermissionDenied, UserError
from bot.events import Message
from bot.groups import service

if TYPE_CHECKING:
    from bot.core import Core, Request

NEWGROUP = Spec(("newgroup",), (Arg("address"), Arg("display name", required=False, rest=True)),
                summary="Create an internal email group (HR, admins).", roles=("hr",))
ADDGROUP = Spec(("addgroup",), (Arg("group"), Arg("member", many=True)),
                summary="Add people to a group (HR, admins, the group's owners).", roles=("hr", "owners"))
REMOVEGROUP = Spec(("removegroup",), (Arg("group"), Arg("member", many=True)),
                   summary="Remove people from a group (HR, admins, the group's owners).", roles=("hr", "owners"))
GROUPS = Spec(("groups",), (Arg("member", required=False),),
              summary="All groups, or one person's groups and how each membership came about.")
MEMBERS = Spec(("members",), (Arg("group"),), summary="Who is in a group.")


def register(core: Core) -> None:
    core.command(NEWGROUP)(newgroup)
    core.command(ADDGROUP)(addgroup)
    core.command(REMOVEGROUP)(removegroup)
    core.command(GROUPS)(groups)
    core.command(MEMBERS)(members)


def _members_from_args(raw: list[str], spec: Spec) -> list[str]:
    emails: list[str] = []
    for item in raw:
        for piece in item.replace(",", " ").split():
            try:
                emails.append(normalise(piece))
            except UserError as exc:
                raise UserError(exc.sentence, spec.usage) from None
    if not emails:
        raise UserError(f"/{spec.name} needs at least one member.", spec.usage)
    seen: set[str] = set()
    for e in emails:
        if e in seen:
            raise UserError(f"{e} is given twice.", spec.usage)
        seen.add(e)
    if len(emails) > 500:
        raise UserError("Give at most 500 members at once; for more, use an import.", spec.usage)
    return emails


def _may_manage(req: Request, group: Group) -> bool:
    return req.has("hr") or req.email in (group.owners or [])


async def newgroup(core: Core, req: Request, p: Parsed) -> Message:
    async with core.ctx.sessions() as session, session.begin():
        try:
            group = await service.create_group(
                session, core.ctx.settings, address=p.arg("address"), display_name=p.opt("display name"),
                actor=req.email, via=req.via,
            )
        except UserError as exc:
            raise UserError(exc.sentence, NEWGROUP.usage) from None
    label = f" ({group.display_name})" if group.display_name else ""
    return Message(f"Created the internal group {group.address}{label}. Add people with /addgroup {group.local_part} <email>.")


async def _change(core: Core, req: Request, p: Parsed, spec: Spec, op: str) -> Message:
    emails = _members_from_args(p.many("member"), spec)
    settings = core.ctx.settings
    async with core.ctx.sessions() as session, session.begin():
        try:
            group = await service.find_group(session, p.arg("group"), settings)
        except UserError as exc:
            raise UserError(exc.sentence, spec.usage) from None
        if not _may_manage(req, group):
            raise PermissionDenied(
                f"/{spec.name} is for HR, admins and the owners of {group.address}; you are none of these."
            )
        if op == "add":
            plan = await service.plan_add(session, group, emails, source="manual", reason=f"added by {req.email}")
            plan = await service.check_policy(session, plan, settings)
            if plan.refused:
                # One refusal refuses the whole command: nothing changes.
                raise UserError(plan.refused[0][1])
        else:
            plan = await service.plan_remove(session, group, emails, source="manual",
                                             reason=f"removed by {req.email}")
        if not plan.changes:
            raise UserError(("; ".join(plan.unchanged) or "Nothing to change") + ": nothing changed.", spec.usage)
        await service.apply(session, plan, actor=req.email, via=req.via)
        count = await service.member_count(session, group.id)
    done = ", ".join(c.email for c in plan.changes)
    verb = "Added" if op == "add" else "Removed"
    prep = "to" if op == "add" else "from"
    text = f"{verb} {done} {prep} {group.address}; it now has {count} member{'s' if count != 1 else ''}."
    if plan.unchanged:
        text += " Unchanged: " + "; ".join(plan.unchanged) + "."
    return Message(text)


async def addgroup(core: Core, req: Request, p: Parsed) -> Message:
    return await _change(core, req, p, ADDGROUP, "add")


async def removegroup(core: Core, req: Request, p: Parsed) -> Message:
    return await _change(core, req, p, REMOVEGROUP, "remove")


async def groups(core: Core, req: Request, p: Parsed) -> Message:
    who = p.opt("member")
    async with core.ctx.sessions() as session:
        if who is not None:
            try:
                email = normalise(who)
            except UserError as exc:
                raise UserError(exc.sentence, GROUPS.usage) from None
            if email != req.email and not req.has("hr"):
                raise PermissionDenied("Only HR and admins can look up someone else's groups.")
            rows = (
                await session.execute(
                    select(Group.address, Membership.source, Membership.role, Membership.added_by, Membership.added_at)
                    .join(Membership, Membership.group_id == Group.id)
                    .where(Membership.email == email)
                    .order_by(Group.address)
                )
            ).all()
            if not rows:
                return Message(f"{email} is in no group.")
            lines = [f"{email} is in {len(rows)} group{'s' if len(rows) != 1 else ''}:"]
            for r in rows:
                how = _source_text(r.source, r.added_by)
                lines.append(f"  {r.address} — {how}, since {r.added_at:%Y-%m-%d}" + (f" ({r.role})" if r.role != "member" else ""))
            return Message("\n".join(lines))
        from sqlalchemy import func

        rows = (
            await session.execute(
                select(Group.address, Group.display_name, Group.kind, func.count(Membership.id))
                .outerjoin(Membership, Membership.group_id == Group.id)
                .group_by(Group.id, Group.address, Group.display_name, Group.kind)
                .order_by(Group.address)
            )
        ).all()
    if not rows:
        return Message("There are no groups yet. /newgroup creates one.")
    lines = [f"{len(rows)} group{'s' if len(rows) != 1 else ''}:"]
    for address, display, kind, n in rows:
        extra = f" “{display}”" if display else ""
        kind_text = "" if kind == "internal" else " [external members allowed]"
        lines.append(f"  {address}{extra} — {n} member{'s' if n != 1 else ''}{kind_text}")
    return Message("\n".join(lines))


def _source_text(source: str, added_by: str | None) -> str:
    if source == "manual":
        return f"added by hand by {added_by}" if added_by else "added by hand"
    if source.startswith("rule:"):
        return f"by the rule “{source[5:]}”"
    if source == "import":
        return "from an import"
    return source


async def members(core: Core, req: Request, p: Parsed) -> Message:
    async with core.ctx.sessions() as session:
        try:
            group = await service.find_group(session, p.arg("group"), core.ctx.settings)
        except UserError as exc:
            raise UserError(exc.sentence, MEMBERS.usage) from None
        rows = (
            await session.execute(
                select(Membership.email, Membership.source, Membership.role)
                .where(Membership.group_id == group.id)
                .order_by(Membership.email)
            )
        ).all()
    is_member = any(r.email == req.email for r in rows)
    allowed = (
        req.has("hr")
        or req.email in (group.owners or [])
        or (group.visibility == "company" and core.ctx.settings.is_internal(req.email))
        or (group.visibility == "members" and is_member)
    )
    if not allowed:
        raise PermissionDenied(f"The members of {group.address} are visible to its owners and HR only.")
    if not rows:
        return Message(f"{group.address} has no members yet.")
    shown = rows[:200]
    lines = [f"{group.address} has {len(rows)} member{'s' if len(rows) != 1 else ''}:"]
    lines += [f"  {r.email}" + ("" if r.source == "manual" else f" ({_source_text(r.source, None)})") for r in shown]
    if len(rows) > len(shown):
        lines.append(f"  … and {len(rows) - len(shown)} more")
    return Message("\n".join(lines))
