"""`postroom groups import --from <provider> [--dry-run]`: a platform's existing groups and their members
become Postroom's starting state.

Each platform group on a company domain becomes a Postroom group living on that provider (created
if new; one that lives elsewhere already is left alone and named). Its members become memberships
with the source `import` and the platform's role, through the one membership path: they are on the
platform already, so nothing is pushed back. The guard still decides: a new group is made
`external-allowed` only where the platform allows external members and it has some (`decide_kind`),
and every such group is named, in the dry run and in the real run; someone who has left is not
imported but removed from the platform. A group that fails on its own (deleted on the platform
meanwhile, a name Postroom cannot take) is named and skipped; the others are imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from bot.config import Settings
from bot.context import Context
from bot.db.models import Group, Person
from bot.errors import UserError
from bot.groups import service
from bot.groups.membership import Memberships
from bot.groups.providers.base import ProviderError, RemoteGroup, RemoteMember
from bot.groups.service import Change, Plan

CHUNK = 100  # groups per transaction


@dataclass
class Imported:
    provider: str
    dry_run: bool
    groups_new: list[str] = field(default_factory=list)
    groups_known: list[str] = field(default_factory=list)
    members: int = 0  # memberships the guard lets in (refused ones are listed, not counted)
    leavers_removed: int = 0
    skipped: list[str] = field(default_factory=list)  # "address: why"
    refused: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)  # "address: why" of new groups made external-allowed
    kept_internal: list[str] = field(default_factory=list)  # "address: why" of new groups kept internal
    held: int | None = None  # the plan waiting for an approver, if the guard held the import

    def summary(self) -> str:
        verb = "Would import" if self.dry_run else "Imported"
        lines = [
            f"{verb} from {self.provider}: {len(self.groups_new)} new groups, {len(self.groups_known)} known already, "
            f"{self.members} memberships"
            + (f", {self.leavers_removed} leavers to remove" if self.leavers_removed else "")
            + "."
        ]
        becomes = "would become" if self.dry_run else "is now"
        for item in self.opened:  # every one of them, however many: opening a group is not a detail
            address, why = item.split(": ", 1)
            lines.append(f"  {address} {becomes} external-allowed: {why}")
        for item in self.kept_internal[:50]:
            address, why = item.split(": ", 1)
            lines.append(f"  {address} stays internal: {why}")
        for item in self.skipped[:50]:
            lines.append(f"  skipped {item}")
        for item in self.refused[:50]:
            lines.append(f"  refused {item}")
        if self.held is not None:
            lines.append(f"  The guard holds part of it for an approver (plan #{self.held}).")
        if self.dry_run:
            lines.append("Dry run: nothing was changed. Run it again without --dry-run to import.")
        return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def decide_kind(
    remote: RemoteGroup, members: list[RemoteMember], settings: Settings, label: str
) -> tuple[str, str]:
    """A new group's kind, and why (empty when there is nothing to say).

    A platform's permission alone does not open a Postroom group: `allowExternalMembers` is often on
    by a console default, and an external-allowed group lets any outside address in by one command.
    So a group becomes external-allowed only where the platform allows external members *and* it has
    some (or, on a platform without such a setting, where it has some). External members of a group
    whose platform does not allow them are left to the guard, which refuses them."""
    outside = sorted(m.email for m in members if not settings.is_internal(m.email))
    listed = ", ".join(outside[:5]) + (", …" if len(outside) > 5 else "")
    if remote.external_allowed is None:
        if outside:
            return "external-allowed", f"it has {_plural(len(outside), 'external member')} ({listed})."
        return "internal", ""
    if remote.external_allowed and outside:
        return (
            "external-allowed",
            f"{label} allows external members and it has {_plural(len(outside), 'external member')} ({listed}).",
        )
    if remote.external_allowed:
        return (
            "internal",
            f"{label} allows external members there, but it has none; set `kind: external-allowed` "
            "in the rules file if it should take them.",
        )
    if outside:
        return (
            "internal",
            f"it has {_plural(len(outside), 'external member')} ({listed}), but {label} does not allow "
            "external members there: they are not imported.",
        )
    return "internal", ""


async def import_groups(ctx: Context, memberships: Memberships, name: str, *, dry_run: bool) -> Imported:
    provider = memberships.outbox.providers.get(name)
    out = Imported(name, dry_run)
    found: list[tuple[RemoteGroup, list[RemoteMember]]] = []
    for g in await provider.list_groups():
        if not ctx.settings.is_internal(g.address):
            out.skipped.append(
                f"{g.address}: not on one of the company's domains ({', '.join(ctx.settings.org.domains)})"
            )
            continue
        try:
            found.append((g, await provider.members(g.address)))
        except ProviderError as exc:  # deleted meanwhile (404), or refused: named, and the others go on
            out.skipped.append(f"{g.address}: {exc.sentence}")
    for i in range(0, len(found), CHUNK):
        await _import_chunk(ctx, memberships, name, provider.label or name, found[i : i + CHUNK], out)
    return out


async def _import_chunk(
    ctx: Context,
    memberships: Memberships,
    name: str,
    label: str,
    chunk: list[tuple[RemoteGroup, list[RemoteMember]]],
    out: Imported,
) -> None:
    """One transaction per chunk. A dry run does the same (groups created, the guard asked) and rolls
    it back, so what it prints is what the real run would do."""
    settings = ctx.settings
    providers = memberships.outbox.providers
    held: int | None = None
    async with ctx.sessions() as session, session.begin() as tx:
        existing = {
            g.address: g
            for g in (
                await session.execute(select(Group).where(Group.address.in_([g.address for g, _ in chunk])))
            ).scalars()
        }
        emails = sorted({m.email for _, ms in chunk for m in ms})
        people: dict[str, tuple[int, str]] = {}
        for j in range(0, len(emails), 500):
            rows = await session.execute(
                select(Person.email, Person.id, Person.status).where(Person.email.in_(emails[j : j + 500]))
            )
            people.update((e, (pid, status)) for e, pid, status in rows.all())
        changes: list[Change] = []
        for remote, members in chunk:
            group = existing.get(remote.address)
            if group is not None and providers.name_of(group.provider) != name:
                out.skipped.append(
                    f"{remote.address}: it is in Postroom already and lives on {providers.name_of(group.provider)}"
                )
                continue
            if group is None:
                kind, why = decide_kind(remote, members, settings, label)
                try:  # create_group checks everything before it writes: a refusal leaves nothing behind
                    group = await service.create_group(
                        session,
                        settings,
                        address=remote.address,
                        display_name=(remote.name or None),
                        actor="cli",
                        via=f"provider:{name}",
                        kind=kind,
                        provider=name,
                    )
                except UserError as exc:  # a name Postroom cannot take (a Refusal is one too)
                    out.skipped.append(f"{remote.address}: {exc}")
                    continue
                out.groups_new.append(remote.address)
                if why:
                    (out.opened if kind == "external-allowed" else out.kept_internal).append(
                        f"{remote.address}: {why}"
                    )
            else:
                out.groups_known.append(remote.address)
            for m in members:
                pid, status = people.get(m.email, (None, "active"))
                if status == "left":
                    changes.append(
                        Change(
                            "remove",
                            group.id,
                            group.address,
                            m.email,
                            f"provider:{name}",
                            f"{m.email} has left; found on {name} by the import",
                            pid,
                            "overwrite",
                        )
                    )
                    continue
                changes.append(
                    Change(
                        "add",
                        group.id,
                        group.address,
                        m.email,
                        "import",
                        f"imported from {name}",
                        pid,
                        "imported",
                        m.role,
                    )
                )
        if out.dry_run:
            verdict = await memberships.review(session, Plan(changes), "reconcile")
            let_in, refused = verdict.plan.changes + verdict.held, verdict.plan.refused
        else:
            result = await memberships.execute(
                Plan(changes),
                kind="reconcile",
                source=f"import:{name}",
                actor="cli",
                via=f"provider:{name}",
                session=session,
            )
            let_in, refused, held = result.plan.changes + result.waiting, result.plan.refused, result.held
        out.members += sum(1 for c in let_in if c.op == "add")
        out.leavers_removed += sum(1 for c in let_in if c.op == "remove")
        out.refused += [f"{c.email} in {c.group_address}: {why}" for c, why in refused]
        if out.dry_run:
            await tx.rollback()
    if held is not None:
        out.held = held
        await memberships.announce(held)
