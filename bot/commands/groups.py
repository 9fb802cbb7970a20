"""/newgroup, /addgroup, /removegroup, /groups, /members"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.addresses import normalise
from bot.commands.parser import Arg, Parsed, Spec
from bot.db.models import Group, Membership
from bot.errors import PermissionDenied, UserError
from bot.events import Message
from bot.groups import planner, service
from bot.i18n import t

if TYPE_CHECKING:
    from bot.core import Core, Request

NEWGROUP = Spec(
    ("newgroup",),
    (Arg("address"), Arg("display name", required=False, rest=True)),
    summary="Create an internal email group (HR, admins).",
    roles=("hr",),
)
ADDGROUP = Spec(
    ("addgroup",),
    (Arg("group"), Arg("member", many=True)),
    summary="Add people to a group (HR, admins, the group's owners).",
    roles=("hr", "owners"),
)
REMOVEGROUP = Spec(
    ("removegroup",),
    (Arg("group"), Arg("member", many=True)),
    summary="Remove people from a group (HR, admins, the group's owners).",
    roles=("hr", "owners"),
)
GROUPS = Spec(
    ("groups",),
    (Arg("member", required=False),),
    summary="All groups, or one person's groups and how each membership came about.",
)
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
        raise UserError(t("/{command} needs at least one member.", command=spec.name), spec.usage)
    seen: set[str] = set()
    for e in emails:
        if e in seen:
            raise UserError(t("{email} is given twice.", email=e), spec.usage)
        seen.add(e)
    if len(emails) > 500:
        raise UserError(t("Give at most 500 members at once; for more, use an import."), spec.usage)
    return emails


def _may_manage(req: Request, group: Group) -> bool:
    return req.has("hr") or req.email in (group.owners or [])


async def newgroup(core: Core, req: Request, p: Parsed) -> Message:
    async with core.ctx.sessions() as session, session.begin():
        try:
            group = await service.create_group(
                session,
                core.ctx.settings,
                address=p.arg("address"),
                display_name=p.opt("display name"),
                actor=req.email,
                via=req.via,
            )
        except UserError as exc:
            raise UserError(exc.sentence, NEWGROUP.usage) from None
    if group.display_name:
        return Message(
            t(
                "Created the internal group {address} ({name}). Add people with /addgroup {local} <email>.",
                address=group.address,
                name=group.display_name,
                local=group.local_part,
            )
        )
    return Message(
        t(
            "Created the internal group {address}. Add people with /addgroup {local} <email>.",
            address=group.address,
            local=group.local_part,
        )
    )


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
                t(
                    "/{command} is for HR, admins and the owners of {group}; you are none of these.",
                    command=spec.name,
                    group=group.address,
                )
            )
        if op == "add":
            plan = await service.plan_add(
                session, group, emails, source="manual", reason=t("added by {email}", email=req.email)
            )
            plan = await service.check_policy(session, plan, settings)
            if plan.refused:
                # One refusal refuses the whole command: nothing changes.
                raise UserError(plan.refused[0][1])
        else:
            plan = await service.plan_remove(
                session, group, emails, source="manual", reason=t("removed by {email}", email=req.email)
            )
        if not plan.changes:
            if plan.unchanged:
                raise UserError(
                    t("{reasons}: nothing changed.", reasons=t("; ").join(plan.unchanged)), spec.usage
                )
            raise UserError(t("Nothing to change: nothing changed."), spec.usage)
        held = None
        if group.protected:  # as on every other path: a protected group changes only with an approver
            held = await planner.hold(
                session,
                source=f"/{spec.name}",
                actor=req.email,
                via=req.via,
                reasons=[t("it changes the protected group {group}", group=group.address)],
                summary=plan.summary(),
                changes=plan.changes,
            )
        else:
            await service.apply(session, plan, actor=req.email, via=req.via)
        count = await service.member_count(session, group.id)
    done = ", ".join(c.email for c in plan.changes)
    if held is not None:
        await planner.announce_hold(core, held)
        return Message(
            t(
                "{group} is protected: adding {emails} waits for an approver (plan #{id}).",
                group=group.address,
                emails=done,
                id=held.id,
            )
            if op == "add"
            else t(
                "{group} is protected: removing {emails} waits for an approver (plan #{id}).",
                group=group.address,
                emails=done,
                id=held.id,
            )
        )
    if op == "add":
        text = (
            t(
                "Added {emails} to {group}; it now has {count} member.",
                emails=done,
                group=group.address,
                count=count,
            )
            if count == 1
            else t(
                "Added {emails} to {group}; it now has {count} members.",
                emails=done,
                group=group.address,
                count=count,
            )
        )
    else:
        text = (
            t(
                "Removed {emails} from {group}; it now has {count} member.",
                emails=done,
                group=group.address,
                count=count,
            )
            if count == 1
            else t(
                "Removed {emails} from {group}; it now has {count} members.",
                emails=done,
                group=group.address,
                count=count,
            )
        )
    if plan.unchanged:
        text += " " + t("Unchanged: {items}.", items=t("; ").join(plan.unchanged))
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
                raise PermissionDenied(t("Only HR and admins can look up someone else's groups."))
            rows = (
                await session.execute(
                    select(
                        Group.address,
                        Membership.source,
                        Membership.role,
                        Membership.added_by,
                        Membership.added_at,
                    )
                    .join(Membership, Membership.group_id == Group.id)
                    .where(Membership.email == email)
                    .order_by(Group.address)
                )
            ).all()
            if not rows:
                return Message(t("{email} is in no group.", email=email))
            lines = [
                t("{email} is in {count} group:", email=email, count=len(rows))
                if len(rows) == 1
                else t("{email} is in {count} groups:", email=email, count=len(rows))
            ]
            for r in rows:
                how = _source_text(r.source, r.added_by)
                lines.append(
                    "  "
                    + t(
                        "{group} — {how}, since {date}",
                        group=r.address,
                        how=how,
                        date=f"{r.added_at:%Y-%m-%d}",
                    )
                    + (f" ({r.role})" if r.role != "member" else "")
                )
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
        return Message(t("There are no groups yet. /newgroup creates one."))
    lines = [
        t("{count} group:", count=len(rows)) if len(rows) == 1 else t("{count} groups:", count=len(rows))
    ]
    for address, display, kind, n in rows:
        extra = f" “{display}”" if display else ""
        kind_text = "" if kind == "internal" else " " + t("[external members allowed]")
        size = t("{count} member", count=n) if n == 1 else t("{count} members", count=n)
        lines.append(f"  {address}{extra} — {size}{kind_text}")
    return Message("\n".join(lines))


def _source_text(source: str, added_by: str | None) -> str:
    if source == "manual":
        return t("added by hand by {email}", email=added_by) if added_by else t("added by hand")
    if source.startswith("rule:"):
        return t("by the rule “{rule}”", rule=source[5:])
    if source == "import":
        return t("from an import")
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
        raise PermissionDenied(
            t("The members of {group} are visible to its owners and HR only.", group=group.address)
        )
    if not rows:
        return Message(t("{group} has no members yet.", group=group.address))
    shown = rows[:200]
    lines = [
        t("{group} has {count} member:", group=group.address, count=len(rows))
        if len(rows) == 1
        else t("{group} has {count} members:", group=group.address, count=len(rows))
    ]
    lines += [
        f"  {r.email}" + ("" if r.source == "manual" else f" ({_source_text(r.source, None)})") for r in shown
    ]
    if len(rows) > len(shown):
        lines.append("  " + t("… and {count} more", count=len(rows) - len(shown)))
    return Message("\n".join(lines))
