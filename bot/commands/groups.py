"""/newgroup, /addgroup, /removegroup, /groups, /members"""

from __future__ import annotations

from sqlalchemy import func, select

from bot.addresses import normalise
from bot.commandline import Arg, Flag, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request, outsider
from bot.db.models import Group, Membership, Person, RuleException
from bot.errors import PermissionDenied, Refusal, UserError, with_usage
from bot.events import Message
from bot.groups import service
from bot.groups.membership import Memberships, Refused
from bot.groups.providers.base import ProviderError
from bot.groups.providers.registry import LABELS, LOCAL, NAMES
from bot.i18n import t

NEWGROUP = Spec(
    ("newgroup",),
    (Arg("address"), Arg("display name", required=False, rest=True)),
    (Flag("provider", help="where the group lives: local, google, microsoft, wecom, ldap, mailman"),),
    summary="Create an internal email group (HR, admins).",
    roles=("hr",),
)
ADDGROUP = Spec(
    ("addgroup",),
    (Arg("group"), Arg("member", many=True)),
    (
        Flag(
            "unknown-ok", takes_value=False, help="also add company addresses no HR source or messenger knows"
        ),
    ),
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
    summary="All groups, or one person's groups and how each membership came about (anyone in the company).",
)
MEMBERS = Spec(("members",), (Arg("group"),), summary="Who is in a group (as the group's visibility allows).")
SPECS = (NEWGROUP, ADDGROUP, REMOVEGROUP, GROUPS, MEMBERS)


def _members_from_args(raw: list[str], spec: Spec) -> list[str]:
    emails: list[str] = []
    for item in raw:
        for piece in item.replace(",", " ").split():
            try:
                emails.append(normalise(piece))
            except UserError as exc:
                raise with_usage(exc, spec.usage) from None
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
    return req.has("hr") or req.owns(group.owners)


class GroupCommands:
    def __init__(self, ctx: Context, memberships: Memberships):
        self.ctx = ctx
        self.memberships = memberships

    def register(self, table: CommandTable) -> None:
        table.command(NEWGROUP, self.newgroup)
        table.command(ADDGROUP, self.addgroup)
        table.command(REMOVEGROUP, self.removegroup)
        table.command(GROUPS, self.groups)
        table.command(MEMBERS, self.members)

    async def newgroup(self, req: Request, p: Parsed) -> Message:
        providers = self.memberships.outbox.providers
        chosen = p.flag("provider")
        if chosen is not None:
            chosen = chosen.strip().lower()
            if chosen not in NAMES:
                raise UserError(
                    t(
                        "“{text}” is not a provider: use one of {names}.",
                        text=chosen[:40],
                        names=", ".join(NAMES),
                    ),
                    NEWGROUP.usage,
                )
            if chosen != LOCAL and chosen not in providers.configured():
                raise UserError(
                    t(
                        "The provider {provider} is not configured: fill in [providers.{provider}] "
                        "(manifests/{provider}/README.md).",
                        provider=chosen,
                    ),
                    NEWGROUP.usage,
                )
        name = providers.name_of(chosen)
        async with self.ctx.sessions() as session, session.begin():
            try:
                group = await service.create_group(
                    session,
                    self.ctx.settings,
                    address=p.arg("address"),
                    display_name=p.opt("display name"),
                    actor=req.email,
                    via=req.via,
                    provider=chosen,
                )
            except UserError as exc:
                raise with_usage(exc, NEWGROUP.usage) from None
            if name != LOCAL:
                # The platform first answers; if it refuses, the group is not created in Postroom either.
                try:
                    await providers.get(name).create_group(group.address, group.display_name, False, [])
                except ProviderError as exc:
                    raise UserError(
                        t(
                            "{platform} did not create {address}, so neither did Postroom: {why}",
                            platform=LABELS[name],
                            address=group.address,
                            why=exc.sentence,
                        )
                    ) from None
        if name != LOCAL:
            return Message(
                t(
                    "Created the internal group {address} on {platform}. Add people with /addgroup {local} <email>.",
                    address=group.address,
                    platform=LABELS[name],
                    local=group.local_part,
                )
            )
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

    async def addgroup(self, req: Request, p: Parsed) -> Message:
        return await self._change(req, p, ADDGROUP, "add")

    async def removegroup(self, req: Request, p: Parsed) -> Message:
        return await self._change(req, p, REMOVEGROUP, "remove")

    async def _change(self, req: Request, p: Parsed, spec: Spec, op: str) -> Message:
        emails = _members_from_args(p.many("member"), spec)
        settings = self.ctx.settings
        async with self.ctx.sessions() as session:
            try:
                group = await service.find_group(session, p.arg("group"), settings)
            except UserError as exc:
                raise with_usage(exc, spec.usage) from None
            if not _may_manage(req, group):
                raise PermissionDenied(
                    t(
                        "/{command} is for HR, admins and the owners of {group}; you are none of these.",
                        command=spec.name,
                        group=group.address,
                    )
                )
            if op == "add":
                unknown = (
                    []
                    if p.switch("unknown-ok")
                    else await service.unknown_addresses(session, settings, emails)
                )
                if unknown:
                    raise Refusal(
                        t(
                            "No HR source or messenger knows {emails}: check the spelling, or add --unknown-ok "
                            "to add them anyway (/audit lists such members).",
                            emails=", ".join(unknown[:10]),
                        )
                    )
                plan = await service.plan_add(
                    session, group, emails, source="manual", reason=t("added by {email}", email=req.email)
                )
            else:
                plan = await service.plan_remove(
                    session, group, emails, source="manual", reason=t("removed by {email}", email=req.email)
                )
        if not plan.changes:
            if plan.unchanged:
                raise Refusal(t("{reasons}: nothing changed.", reasons=t("; ").join(plan.unchanged)))
            raise Refusal(t("Nothing to change: nothing changed."))
        # One refusal refuses the whole command: nothing changes, and the answer says so and names each
        # refused address with its reason.
        try:
            out = await self.memberships.execute(
                plan, kind="command", source=f"/{spec.name}", actor=req.email, via=req.via, whole=True
            )
        except Refused as exc:
            reasons = list(dict.fromkeys(why for _change, why in exc.refused))
            if len(reasons) == 1:
                raise Refusal(
                    t("Nothing was added to {group}: {why}", group=group.address, why=reasons[0])
                ) from None
            raise Refusal(
                "\n".join(
                    [
                        t(
                            "Nothing was added to {group}: {count} addresses were refused.",
                            group=group.address,
                            count=len(reasons),
                        )
                    ]
                    + ["  " + why for why in reasons[:20]]
                    + ["  " + t("… and {count} more", count=len(reasons) - 20)] * (len(reasons) > 20)
                )
            ) from None
        async with self.ctx.sessions() as session:
            count = await service.member_count(session, group.id)
        done = ", ".join(c.email for c in plan.changes)
        if out.held is not None:
            why = t("; ").join(out.reasons)
            return Message(
                t(
                    "Adding {emails} to {group} waits for an approver (plan #{id}): {reasons}.",
                    emails=done,
                    group=group.address,
                    id=out.held,
                    reasons=why,
                )
                if op == "add"
                else t(
                    "Removing {emails} from {group} waits for an approver (plan #{id}): {reasons}.",
                    emails=done,
                    group=group.address,
                    id=out.held,
                    reasons=why,
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
            if await self._kept_out(group.id, [c.email for c in out.plan.removes]):
                text += " " + t(
                    "The rules would put them back: they stay out of {group} (a rule exception) until someone "
                    "adds them again with /addgroup.",
                    group=group.address,
                )
        if plan.unchanged:
            text += " " + t("Unchanged: {items}.", items=t("; ").join(plan.unchanged))
        return Message(text)

    async def _kept_out(self, group_id: int, emails: list[str]) -> bool:
        async with self.ctx.sessions() as session:
            found = await session.execute(
                select(RuleException.id).where(
                    RuleException.group_id == group_id, RuleException.email.in_(emails)
                )
            )
            return found.first() is not None

    async def groups(self, req: Request, p: Parsed) -> Message:
        who = p.opt("member")
        if not req.colleague:
            raise outsider(req, "groups")
        async with self.ctx.sessions() as session:
            if who is not None:
                try:
                    email = normalise(who)
                except UserError as exc:
                    raise with_usage(exc, GROUPS.usage) from None
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
                kept_out = (
                    await session.execute(
                        select(Group.address, RuleException.created_by, RuleException.created_at)
                        .join(RuleException, RuleException.group_id == Group.id)
                        .join(Person, Person.id == RuleException.person_id)
                        .where(Person.email == email)
                        .order_by(Group.address)
                    )
                ).all()
                if not rows:
                    lines = [t("{email} is in no group.", email=email)]
                else:
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
                for address, by, at in kept_out:
                    lines.append(
                        "  "
                        + t(
                            "kept out of {group} although a rule puts them in (removed by {email} on {date}); "
                            "/addgroup lifts it",
                            group=address,
                            email=by,
                            date=f"{at:%Y-%m-%d}",
                        )
                    )
                return Message("\n".join(lines))
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

    async def members(self, req: Request, p: Parsed) -> Message:
        async with self.ctx.sessions() as session:
            try:
                group = await service.find_group(session, p.arg("group"), self.ctx.settings)
            except UserError as exc:
                raise with_usage(exc, MEMBERS.usage) from None
            rows = (
                await session.execute(
                    select(Membership.email, Membership.source, Membership.role, Membership.state)
                    .where(Membership.group_id == group.id)
                    .order_by(Membership.email)
                )
            ).all()
        is_member = any(r.email == req.email for r in rows)
        allowed = (
            req.has("hr")
            or req.owns(group.owners)
            or (group.visibility == "company" and req.colleague)
            # an external member of a group open to them sees it; a leaver in their grace period does not
            or (
                group.visibility == "members"
                and is_member
                and (req.colleague or not self.ctx.settings.is_internal(req.email))
            )
        )
        if not allowed and req.left:
            raise outsider(req, "members")
        if not allowed:
            raise PermissionDenied(_visibility_rule(group))
        if not rows:
            return Message(t("{group} has no members yet.", group=group.address))
        shown = rows[:200]
        lines = [
            t("{group} has {count} member:", group=group.address, count=len(rows))
            if len(rows) == 1
            else t("{group} has {count} members:", group=group.address, count=len(rows))
        ]
        lines += [
            f"  {r.email}"
            + ("" if r.source == "manual" else f" ({_source_text(r.source, None)})")
            + (
                ""
                if r.state == "active"
                else " — "
                + (
                    t("being added on its platform")
                    if r.state == "adding"
                    else t("being removed on its platform")
                )
            )
            for r in shown
        ]
        if len(rows) > len(shown):
            lines.append("  " + t("… and {count} more", count=len(rows) - len(shown)))
        return Message("\n".join(lines))


def _visibility_rule(group: Group) -> str:
    """Who may list this group's members, as the refusal says it: the group's real rule."""
    if group.visibility == "company":
        return t(
            "The members of {group} are visible to people in the company, its owners, HR and admins.",
            group=group.address,
        )
    if group.visibility == "members":
        return t(
            "The members of {group} are visible to its members, its owners, HR and admins only.",
            group=group.address,
        )
    return t("The members of {group} are visible to its owners, HR and admins only.", group=group.address)


def _source_text(source: str, added_by: str | None) -> str:
    if source == "manual":
        return t("added by hand by {email}", email=added_by) if added_by else t("added by hand")
    if source.startswith("rule:"):
        return t("by the rule “{rule}”", rule=source[5:])
    if source == "import":
        return t("from an import")
    return source
