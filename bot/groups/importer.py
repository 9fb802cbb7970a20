"""`postroom groups import --from <provider> [--dry-run]`: a platform's existing groups and their members
become Postroom's starting state.

Each platform group on a company domain becomes a Postroom group living on that provider (created
if new; one that lives elsewhere already is left alone and named). Its members become memberships
with the source `import` and the platform's role, through the one membership path: they are on the
platform already, so nothing is pushed back. The guard still decides: a group with external members
(or whose platform allows them) is made `external-allowed`; someone who has left is not imported but
removed from the platform.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from bot.context import Context
from bot.db.models import Group, Person
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
    members: int = 0
    leavers_removed: int = 0
    skipped: list[str] = field(default_factory=list)  # "address: why"
    refused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "Would import" if self.dry_run else "Imported"
        lines = [
            f"{verb} from {self.provider}: {len(self.groups_new)} new groups, {len(self.groups_known)} known already, "
            f"{self.members} memberships"
            + (f", {self.leavers_removed} leavers to remove" if self.leavers_removed else "")
            + "."
        ]
        for item in self.skipped[:50]:
            lines.append(f"  skipped {item}")
        for item in self.refused[:50]:
            lines.append(f"  refused {item}")
        if self.dry_run:
            lines.append("Dry run: nothing was changed. Run it again without --dry-run to import.")
        return "\n".join(lines)


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
        except ProviderError as exc:
            out.skipped.append(f"{g.address}: {exc.sentence}")
    for i in range(0, len(found), CHUNK):
        await _import_chunk(ctx, memberships, name, found[i : i + CHUNK], out)
    return out


async def _import_chunk(
    ctx: Context,
    memberships: Memberships,
    name: str,
    chunk: list[tuple[RemoteGroup, list[RemoteMember]]],
    out: Imported,
) -> None:
    settings = ctx.settings
    providers = memberships.outbox.providers
    async with ctx.sessions() as session, session.begin():
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
            external = bool(remote.external_allowed) or any(
                not settings.is_internal(m.email) for m in members
            )
            if group is not None and providers.name_of(group.provider) != name:
                out.skipped.append(
                    f"{remote.address}: it is in Postroom already and lives on {providers.name_of(group.provider)}"
                )
                continue
            if group is None:
                out.groups_new.append(remote.address)
                if out.dry_run:
                    out.members += len(members)
                    continue
                group = await service.create_group(
                    session,
                    settings,
                    address=remote.address,
                    display_name=(remote.name or None),
                    actor="cli",
                    via=f"provider:{name}",
                    kind="external-allowed" if external else "internal",
                    provider=name,
                )
            else:
                out.groups_known.append(remote.address)
            for m in members:
                pid, status = people.get(m.email, (None, "active"))
                if status == "left":
                    out.leavers_removed += 1
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
                out.members += 1
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
            return
        result = await memberships.execute(
            Plan(changes),
            kind="reconcile",
            source=f"import:{name}",
            actor="cli",
            via=f"provider:{name}",
            session=session,
        )
        out.refused += [f"{c.email} in {c.group_address}: {why}" for c, why in result.plan.refused]
    await memberships.announce(result.held)
