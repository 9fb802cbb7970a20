"""The audit report on email groups: `/audit` on demand, and on a schedule (groups.audit_cron) to HR.

It lists groups with no owner, empty groups, external members, leavers still in any group
(there must never be one once their grace period is over), and manual memberships older than
groups.manual_max_age_days; and the trend: how the counts changed since the last audit from an earlier
day (each audit's counts are kept in `group_health`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from bot.context import Context
from bot.db.models import Group, GroupHealth, Membership, Person, ProviderOp
from bot.events import Card, Message
from bot.groups import drift
from bot.groups.adoption import DriftChoices, item_line
from bot.groups.service import unknown_addresses
from bot.i18n import t
from bot.messengers import Messengers

JOB_ID = "groups.audit-report"  # the job's id, and the name of its handler


@dataclass(frozen=True)
class Counts:
    """What an audit counted: groups, memberships, external memberships, empty groups, groups with no owner."""

    groups: int
    members: int
    external: int
    empty: int
    no_owner: int
    taken_at: datetime | None = None

    def trend(self, before: Counts | None) -> str:
        """The change since `before`, in words (one line)."""
        if before is None:
            # One audit row per day: an audit later today replaces today's, so it has nothing to compare.
            return t("No earlier audit to compare with; the first audit on a later day shows the change.")

        part = change
        parts = [
            part(t("members"), self.members, before.members),
            part(t("external members"), self.external, before.external),
            part(t("empty groups"), self.empty, before.empty),
            part(t("groups with no owner"), self.no_owner, before.no_owner),
        ]
        when = f"{before.taken_at:%Y-%m-%d}" if before.taken_at else "?"
        return t("Since {date}: {changes}.", date=when, changes=t(", ").join(parts))


def change(label: str, now: int, then: int) -> str:
    """“members 2 → 4 (+2)”: a count then and now, with the difference."""
    delta = now - then
    sign = f"+{delta}" if delta > 0 else (f"−{-delta}" if delta < 0 else "±0")
    return t("{label} {then} → {now} ({delta})", label=label, then=then, now=now, delta=sign)


@dataclass
class Report:
    no_owner: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    external: list[tuple[str, str]] = field(default_factory=list)  # (group, member)
    leavers: list[tuple[str, str]] = field(default_factory=list)  # (email, group): must be none
    in_grace: list[tuple[str, str]] = field(default_factory=list)  # (email, removal due)
    old_manual: list[tuple[str, str, str]] = field(default_factory=list)  # (group, member, since)
    unknown: list[tuple[str, str]] = field(default_factory=list)  # (group, member) no source knows
    drift: list[str] = field(default_factory=list)  # changed by hand on a platform, waiting for HR
    pending: int = 0  # changes a platform has not confirmed yet
    groups: int = 0
    members: int = 0
    previous: Counts | None = None  # the last audit from an earlier day (the trend), once looked up

    @property
    def counts(self) -> Counts:
        return Counts(self.groups, self.members, len(self.external), len(self.empty), len(self.no_owner))

    @property
    def clean(self) -> bool:
        return not (
            self.no_owner
            or self.empty
            or self.external
            or self.leavers
            or self.old_manual
            or self.unknown
            or self.drift
            or self.pending
        )

    def message(self, max_age_days: int) -> Message:
        def some(items: list[str], limit: int = 15) -> str:
            if not items:
                return t("none")
            shown = t(", ").join(items[:limit])
            return (
                t("{items} and {count} more", items=shown, count=len(items) - limit)
                if len(items) > limit
                else shown
            )

        fields = (
            (
                t("Leavers still in a group (must be none)"),
                some([t("{email} in {group}", email=e, group=g) for e, g in self.leavers]),
            ),
            (
                t("Leavers in their grace period"),
                some([t("{email} until {due}", email=e, due=d) for e, d in self.in_grace]),
            ),
            (t("Groups with no owner"), some(self.no_owner)),
            (t("Empty groups"), some(self.empty)),
            (
                t("External members"),
                some([t("{email} in {group}", email=m, group=g) for g, m in self.external]),
            ),
            (
                t("Members no HR source or messenger knows"),
                some([t("{email} in {group}", email=m, group=g) for g, m in self.unknown]),
            ),
            (
                t("Manual memberships older than {days} days", days=max_age_days),
                some(
                    [
                        t("{email} in {group} (since {date})", email=m, group=g, date=s)
                        for g, m, s in self.old_manual
                    ]
                ),
            ),
            (t("Changed by hand on the platforms (/drift)"), some(self.drift, 10)),
            (t("Changes a platform has not confirmed yet"), str(self.pending)),
            (t("Change since the last audit"), self.counts.trend(self.previous)),
        )
        headline = (
            t("Email groups audit: all clear.")
            if self.clean
            else t("Email groups audit: some things need a look.")
        )
        if self.leavers:
            headline = t(
                "Email groups audit: {count} leaver membership(s) remain — /sync removes them.",
                count=len(self.leavers),
            )
        return Message(headline, Card(title=t("Email groups audit"), fields=fields))


async def build_report(ctx: Context) -> Report:
    settings = ctx.settings
    now = ctx.now()
    grace = timedelta(hours=settings.groups.leaver_grace_hours)
    report = Report()
    async with ctx.sessions() as session:
        counts = dict(
            (
                await session.execute(select(Membership.group_id, func.count()).group_by(Membership.group_id))
            ).all()
        )
        groups = (
            await session.execute(select(Group.id, Group.address, Group.owners).order_by(Group.address))
        ).all()
        report.groups = len(groups)
        report.members = sum(counts.values())
        for gid, address, owners in groups:
            if not owners:
                report.no_owner.append(address)
            if not counts.get(gid):
                report.empty.append(address)
        rows = (
            await session.execute(
                select(Group.address, Membership.email)
                .join(Membership, Membership.group_id == Group.id)
                .order_by(Group.address, Membership.email)
            )
        ).all()
        for address, email in rows:
            if not settings.is_internal(email):
                report.external.append((address, email))
        unknown = set(await unknown_addresses(session, settings, {email for _address, email in rows}))
        report.unknown = [(address, email) for address, email in rows if email in unknown]
        leavers = (
            await session.execute(
                select(Person.email, Person.left_at, Group.address)
                .join(Membership, (Membership.person_id == Person.id) | (Membership.email == Person.email))
                .join(Group, Group.id == Membership.group_id)
                .where(Person.status == "left")
                .order_by(Person.email, Group.address)
            )
        ).all()
        for email, left_at, address in leavers:
            due = (left_at or now) + grace
            if due <= now:
                report.leavers.append((email, address))
            elif (email, f"{due:%Y-%m-%d %H:%M}") not in report.in_grace:
                report.in_grace.append((email, f"{due:%Y-%m-%d %H:%M}"))
        cutoff = now - timedelta(days=settings.groups.manual_max_age_days)
        old = (
            await session.execute(
                select(Group.address, Membership.email, Membership.added_at)
                .join(Membership, Membership.group_id == Group.id)
                .where(Membership.source == "manual", Membership.added_at < cutoff)
                .order_by(Membership.added_at)
                .limit(500)
            )
        ).all()
        report.old_manual = [(a, e, f"{t:%Y-%m-%d}") for a, e, t in old]
        report.drift = [item_line(d) for d in await drift.items(session)]
        report.pending = (await session.execute(select(func.count()).select_from(ProviderOp))).scalar_one()
    return report


async def previous_counts(ctx: Context, before: datetime) -> Counts | None:
    """The counts of the last audit taken before the day of `before` began (UTC)."""
    day = before.replace(hour=0, minute=0, second=0, microsecond=0)
    async with ctx.sessions() as session:
        row = (
            await session.execute(
                select(GroupHealth)
                .where(GroupHealth.taken_at < day)
                .order_by(GroupHealth.taken_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    if row is None:
        return None
    return Counts(row.groups, row.members, row.external, row.empty, row.no_owner, row.taken_at)


async def audit(ctx: Context) -> Report:
    """The report with its trend, its counts kept for the next one (/audit and the scheduled report)."""
    report = await build_report(ctx)
    now = ctx.now()
    report.previous = await previous_counts(ctx, now)
    c = report.counts
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    async with ctx.sessions() as session, session.begin():
        # One row a day (today's last audit) and two years of them: the trend compares across days.
        await session.execute(
            delete(GroupHealth).where(
                (GroupHealth.taken_at >= day) | (GroupHealth.taken_at < now - timedelta(days=731))
            )
        )
        session.add(
            GroupHealth(
                taken_at=now,
                groups=c.groups,
                members=c.members,
                external=c.external,
                empty=c.empty,
                no_owner=c.no_owner,
            )
        )
    return report


class AuditReport:
    """The report on a schedule (groups.audit_cron) to the HR conversation."""

    def __init__(self, ctx: Context, messengers: Messengers, drift: DriftChoices):
        self.ctx = ctx
        self.messengers = messengers
        self.drift = drift

    async def send(self) -> None:
        await self.drift.scan()  # the platforms read again: this week's drift
        report = await audit(self.ctx)
        await self.messengers.post("hr", lambda: report.message(self.ctx.settings.groups.manual_max_age_days))
