"""HR's choice about drift (bot/groups/drift.py), per item, per group or all at once:

- *adopt*: the platform's change becomes Postroom's — someone added by hand becomes a manual member
  (they are on the platform already: nothing is pushed), someone removed by hand is removed (and kept
  out of a rule group by a rule exception, as a removal by hand in chat would be);
- *overwrite*: Postroom's membership is pushed over the platform's change.

Either way it is a plan executed through the one membership path and its guard, audited with the
source `provider:<name>`: an external address is not adopted into an internal group, and a leaver
removed on the platform is never put back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select

from bot import audit
from bot.context import Context
from bot.db.models import Membership, Person, ProviderDrift
from bot.errors import UserError
from bot.groups import drift
from bot.groups.drift import DriftItem, Scan
from bot.groups.membership import Memberships
from bot.groups.providers.registry import LABELS
from bot.groups.service import Change, Plan
from bot.i18n import t


def item_line(d: DriftItem) -> str:
    platform = LABELS.get(d.provider, d.provider)
    if d.kind == "added":
        text = t(
            "#{id} {group}: {email} is on {platform} but not in Postroom (added by hand there)",
            id=d.id,
            group=d.group,
            email=d.email,
            platform=platform,
        )
    else:
        text = t(
            "#{id} {group}: {email} is in Postroom but not on {platform} (removed by hand there)",
            id=d.id,
            group=d.group,
            email=d.email,
            platform=platform,
        )
    if d.left:
        text += " — " + t("they have left")
    return text


@dataclass
class Decided:
    done: list[str]
    refused: list[str]
    held: int | None


class DriftChoices:
    def __init__(self, ctx: Context, memberships: Memberships):
        self.ctx = ctx
        self.memberships = memberships

    async def scan(self) -> Scan:
        return await drift.scan(self.ctx, self.memberships.outbox.providers)

    async def recorded(self) -> list[DriftItem]:
        async with self.ctx.sessions() as session:
            return await drift.items(session)

    def describe(self, found: Scan | list[DriftItem]) -> str:
        """The drift in words, for /sync --dry-run, /drift and the audit report ("" when there is none)."""
        items = found.items if isinstance(found, Scan) else found
        lines = []
        if items:
            lines.append(
                t(
                    "Changed by hand on the platforms ({count}); /drift adopt <#|group|all> makes them Postroom's, "
                    "/drift overwrite <#|group|all> puts Postroom's back:",
                    count=len(items),
                )
            )
            lines += ["  " + item_line(d) for d in items[:50]]
            if len(items) > 50:
                lines.append("  " + t("… and {count} more", count=len(items) - 50))
        if isinstance(found, Scan):
            for group, why in sorted(found.failed.items()):
                lines.append(t("Could not read {group} on its platform: {why}", group=group, why=why))
        return "\n".join(lines)

    async def select(self, selectors: list[str]) -> list[DriftItem]:
        """Items named by number (#3), by group (eng, eng@corp.example) or all."""
        items = await self.recorded()
        if not items:
            raise UserError(t("No drift is recorded: /sync --dry-run reads the platforms again."))
        chosen: dict[int, DriftItem] = {}
        for raw in selectors:
            word = raw.strip().lower().lstrip("#")
            if word == "all":
                chosen.update((d.id, d) for d in items)
                continue
            if word.isdigit():
                match = [d for d in items if d.id == int(word)]
            else:
                match = [d for d in items if d.group == word or d.group.split("@", 1)[0] == word]
            if not match:
                raise UserError(t("“{text}” names no recorded drift: /drift lists it.", text=raw[:60]))
            chosen.update((d.id, d) for d in match)
        return [chosen[k] for k in sorted(chosen)]

    async def decide(self, items: list[DriftItem], choice: str, *, actor: str, via: str) -> Decided:
        done: list[str] = []
        refused: list[str] = []
        held: int | None = None
        by_provider: dict[str, list[DriftItem]] = {}
        for d in items:
            by_provider.setdefault(d.provider, []).append(d)
        for provider, mine in by_provider.items():
            async with self.ctx.sessions() as session:
                people = dict(
                    (
                        await session.execute(
                            select(Person.email, Person.id).where(Person.email.in_([d.email for d in mine]))
                        )
                    ).all()
                )
                sources = {
                    (g, e): s
                    for g, e, s in (
                        await session.execute(
                            select(Membership.group_id, Membership.email, Membership.source).where(
                                Membership.email.in_([d.email for d in mine])
                            )
                        )
                    ).all()
                }
            platform = LABELS.get(provider, provider)
            changes = []
            for d in mine:
                pid = people.get(d.email)
                if choice == "adopt":
                    reason = t(
                        "changed by hand on {platform}; adopted by {who}", platform=platform, who=actor
                    )
                    if d.kind == "added":
                        changes.append(
                            Change(
                                "add", d.group_id, d.group, d.email, "manual", reason, pid, "imported", d.role
                            )
                        )
                    else:
                        changes.append(Change("remove", d.group_id, d.group, d.email, "manual", reason, pid))
                else:
                    reason = t(
                        "changed by hand on {platform}; overwritten by {who}", platform=platform, who=actor
                    )
                    if d.kind == "added":
                        changes.append(
                            Change(
                                "remove",
                                d.group_id,
                                d.group,
                                d.email,
                                f"provider:{provider}",
                                reason,
                                pid,
                                "overwrite",
                            )
                        )
                    else:
                        source = sources.get((d.group_id, d.email), "manual")
                        changes.append(
                            Change(
                                "add", d.group_id, d.group, d.email, source, reason, pid, "overwrite", d.role
                            )
                        )
            out = await self.memberships.execute(
                Plan(changes),
                kind="command",
                source=f"provider:{provider}",
                actor=actor,
                via=f"provider:{provider}",
            )
            settled = {(c.group_id, c.email) for c in out.plan.changes}
            held = out.held if out.held is not None else held
            async with self.ctx.sessions() as session, session.begin():
                for d in mine:
                    if (d.group_id, d.email) not in settled:
                        continue
                    await session.execute(delete(ProviderDrift).where(ProviderDrift.id == d.id))
                    audit.record(
                        session,
                        actor=actor,
                        via=f"provider:{provider}",
                        action=f"drift.{choice}",
                        subject=f"group:{d.group}",
                        before={"email": d.email, "kind": d.kind, "provider": provider},
                    )
                    done.append(item_line(d))
            refused += [t("{email} — {why}", email=c.email, why=why) for c, why in out.plan.refused]
        return Decided(done, refused, held)
