"""The one guard every membership plan passes, whatever started it.

It *refuses* what must never happen — an external address into an internal group (invariant 4),
a leaver into any group — and *holds* for an approver what is too big or too sensitive to happen
on one person's word:

- a change to a `protected` group;
- a plan removing more than `groups.max_remove_share` of a group (and at least
  `groups.guard_min_removals` people), or more than `groups.max_remove_count` memberships at once;
  the share also counts what was removed from the group over the last `groups.remove_window_hours`
  (default 24), against the group's size when that window began — removing a few at a time does not
  get round it (removals of leavers, of addresses gone external and of approved plans are not counted);
- a plan adding more than `groups.max_add_count` people to one group, outside a reconcile (a
  reconcile adds what the rules say; a pasted list into all-staff@ is what this brake is for).

What kind of plan it is decides the exemptions, never where the code that asks happens to live:

A removal because the person left (their status says so: cause "left") or because their address
moved outside the company (cause "address-out") is never held and never counted by a brake:
invariants 3 and 4 want them out at once, protected group or not. (A person merely missing from a
CSV snapshot is not known to have left: those removals count, which is how a bad export that drops
half the company is stopped.)

- `person`: one person's joiner, mover or leaver event. It is never held for the count brake, but the
  share brake and its rolling window apply (movers sent one event at a time are removals like any
  other). Only the changes in the groups that trip a guard are held; the rest apply.
- `command`: a person typing /addgroup or /removegroup. Held whole.
- `reconcile`: /sync, /rules reload and a CSV snapshot. Held whole (a bad rule or a bad export
  must not half-apply), exempt from the mass-addition brake.
- `reviewed`: an approver has already seen it (an approved held plan, a snapshot reviewed as a
  whole before its events are applied): refusals are checked again, nothing is held.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.addresses import routing_refusal
from bot.config import Settings
from bot.db.models import AuditEntry, Group, Membership, Person
from bot.groups.service import Change, Plan
from bot.i18n import t

Kind = Literal["person", "command", "reconcile", "reviewed"]
UNSTOPPABLE = ("left", "address-out")  # causes of removals no guard may hold


@dataclass
class Verdict:
    plan: Plan  # what may apply now; refused changes are in plan.refused with the sentence why
    held: list[Change] = field(default_factory=list)  # what waits for an approver
    reasons: list[str] = field(default_factory=list)  # why it waits (empty: nothing waits)


def external_refusal(email: str, group_address: str, settings: Settings) -> str:
    routed = routing_refusal(email, settings)
    if routed:
        return t(
            "{why}, and {group} is an internal group: it can't join it.", why=routed, group=group_address
        )
    return t(
        "{email} is outside {domains}, and {group} is an internal group: external people can't join it. "
        "To mail external audiences, use a campaign (/help campaign).",
        email=email,
        domains=", ".join(settings.org.domains),
        group=group_address,
    )


class Guard:
    def __init__(self, settings: Settings):
        self.settings = settings

    async def review(self, session: AsyncSession, plan: Plan, kind: Kind) -> Verdict:
        allowed = await self._refuse(session, plan)
        verdict = Verdict(allowed)
        if kind == "reviewed" or not allowed.changes:
            return verdict
        tripped, reasons = await self._tripped(session, allowed.changes, kind)
        if not reasons:
            return verdict
        verdict.reasons = reasons
        # A person's change waits only where it trips (the rest of it applies now); any other plan waits
        # whole. Removals of leavers and of addresses gone external never wait.
        verdict.held = [
            c
            for c in allowed.changes
            if c.cause not in UNSTOPPABLE and (kind != "person" or c.group_id in tripped)
        ]
        held = {id(c) for c in verdict.held}
        allowed.changes = [c for c in allowed.changes if id(c) not in held]
        return verdict

    # -- never -----------------------------------------------------------------------------------
    async def _refuse(self, session: AsyncSession, plan: Plan) -> Plan:
        out = Plan(unchanged=list(plan.unchanged), refused=list(plan.refused))
        adds = [c for c in plan.changes if c.op == "add"]
        kinds: dict[int, str] = {}
        if adds:
            ids = {c.group_id for c in adds}
            kinds = dict((await session.execute(select(Group.id, Group.kind).where(Group.id.in_(ids)))).all())
        left = await leavers(session, adds)
        for c in plan.changes:
            if (
                c.op == "add"
                and kinds.get(c.group_id) == "internal"
                and not self.settings.is_internal(c.email)
            ):
                out.refused.append((c, external_refusal(c.email, c.group_address, self.settings)))
            elif c.op == "add" and (c.email in left or c.person_id in left):
                out.refused.append(
                    (
                        c,
                        t(
                            "{email} has left the company, and leavers are never added by rules: not added to "
                            "{group}.",
                            email=c.email,
                            group=c.group_address,
                        )
                        if c.source.startswith("rule:")
                        else t(
                            "{email} has left the company: leavers can't be added to groups.", email=c.email
                        ),
                    )
                )
            else:
                out.changes.append(c)
        return out

    # -- not without an approver -----------------------------------------------------------------
    async def _tripped(
        self, session: AsyncSession, changes: list[Change], kind: Kind
    ) -> tuple[set[int], list[str]]:
        """The groups whose changes trip a guard, and every reason, in words."""
        g = self.settings.groups
        tripped: set[int] = set()
        reasons: list[str] = []
        address = {c.group_id: c.group_address for c in changes}
        stoppable = [c for c in changes if c.cause not in UNSTOPPABLE]
        protected = set()
        if stoppable:
            ids = sorted({c.group_id for c in stoppable})
            protected = set(
                (
                    await session.execute(
                        select(Group.id).where(Group.id.in_(ids), Group.protected.is_(True))
                    )
                ).scalars()
            )
        for gid in sorted(protected, key=lambda i: address[i]):
            tripped.add(gid)
            reasons.append(t("it changes the protected group {group}", group=address[gid]))
        # The share and the rolling window apply to every plan, one person's too: movers sent one event
        # at a time must not empty a group a few at a time. (Leavers' removals are not stoppable.)
        # Distinct memberships: two changes removing the same one are one removal.
        removes = Counter(
            gid for gid, _email in {(c.group_id, c.email) for c in stoppable if c.op == "remove"}
        )
        if removes:
            sizes = dict(
                (
                    await session.execute(
                        select(Membership.group_id, func.count())
                        .where(Membership.group_id.in_(list(removes)))
                        .group_by(Membership.group_id)
                    )
                ).all()
            )
            window = await _window(session, {gid: address[gid] for gid in removes}, g.remove_window_hours)
            for gid, n in sorted(removes.items(), key=lambda item: address[item[0]]):
                size = sizes.get(gid, 0)
                if n >= g.guard_min_removals and size and n / size > g.max_remove_share:
                    tripped.add(gid)
                    reasons.append(
                        t(
                            "it removes {count} of {size} members ({share}) of {group}, more than the {limit} "
                            "allowed without approval",
                            count=n,
                            size=size,
                            share=f"{n / size:.0%}",
                            group=address[gid],
                            limit=f"{g.max_remove_share:.0%}",
                        )
                    )
                elif gid in window:
                    earlier, gone = window[gid]
                    count = earlier + n
                    start = size + gone  # the group's size before the window's removals
                    if count >= g.guard_min_removals and count / start > g.max_remove_share:
                        tripped.add(gid)
                        reasons.append(
                            t(
                                "with the {earlier} removed from {group} in the last {hours} hours, it makes "
                                "{count} of the {size} members it had ({share}), more than the {limit} allowed "
                                "without approval",
                                earlier=earlier,
                                group=address[gid],
                                hours=f"{g.remove_window_hours:g}",
                                count=count,
                                size=start,
                                share=f"{count / start:.0%}",
                                limit=f"{g.max_remove_share:.0%}",
                            )
                        )
            total = sum(removes.values())
            if kind != "person" and total > g.max_remove_count:
                tripped.update(removes)
                reasons.append(
                    t(
                        "it removes {count} memberships at once, more than the {limit} allowed without approval",
                        count=total,
                        limit=g.max_remove_count,
                    )
                )
        if kind != "reconcile":
            adds = Counter(c.group_id for c in changes if c.op == "add")
            for gid, n in sorted(adds.items(), key=lambda item: address[item[0]]):
                if n > g.max_add_count:
                    tripped.add(gid)
                    reasons.append(
                        t(
                            "it adds {count} people to {group}, more than the {limit} allowed at once without "
                            "approval",
                            count=n,
                            group=address[gid],
                            limit=g.max_add_count,
                        )
                    )
        return tripped, reasons


async def _window(session: AsyncSession, groups: dict[int, str], hours: float) -> dict[int, tuple[int, int]]:
    """Per group with removals in the last `hours`: how many count for the brake, and how many were removed
    in all — the group's size before the window's removals is its size now plus that (additions meanwhile
    are not subtracted: a group filled and emptied within the window is still emptied). Removals of
    leavers and of addresses gone external do not count, nor those of an approved plan — nor any before
    it: its approver saw them in its reasons."""
    if hours <= 0 or not groups:
        return {}
    since = datetime.now(UTC) - timedelta(hours=hours)
    by_subject = {f"group:{a}": gid for gid, a in groups.items()}
    rows = await session.execute(
        select(AuditEntry.subject, AuditEntry.before)
        .where(
            AuditEntry.subject.in_(sorted(by_subject)),
            AuditEntry.action == "membership.remove",
            AuditEntry.at > since,
        )
        .order_by(AuditEntry.id)
    )
    counted: Counter[int] = Counter()
    gone: Counter[int] = Counter()
    for subject, before in rows.all():
        gid = by_subject[subject]
        gone[gid] += 1
        cause = before.get("cause", "") if isinstance(before, dict) else ""
        if cause == "approved":
            counted[gid] = 0
        elif cause not in UNSTOPPABLE:
            counted[gid] += 1
    return {gid: (counted[gid], gone[gid]) for gid in counted if counted[gid]}


async def leavers(session: AsyncSession, adds: list[Change]) -> set[object]:
    """The emails and person ids among these adds that belong to people who have left."""
    if not adds:
        return set()
    emails = sorted({c.email for c in adds})
    ids = sorted({c.person_id for c in adds if c.person_id is not None})
    found: set[object] = set()
    for i in range(0, max(len(emails), len(ids)), 500):
        cond: ColumnElement[bool] = Person.email.in_(emails[i : i + 500])
        if ids[i : i + 500]:
            cond = cond | Person.id.in_(ids[i : i + 500])
        rows = await session.execute(select(Person.id, Person.email).where(cond, Person.status == "left"))
        for pid, email in rows.all():
            found.update((pid, email))
    return found
