"""The usage review: read a period's sends from the database, classify each (bot/usage/classify.py),
find the groups whose external members grew, and write the report (`/report usage`, the HR digest).

Sources: the post log (`group_posts`, its `group_post_deliveries` for who got each copy), campaigns and
automations (their `deliveries` sent in the period), test sends (the `campaign.test` audit entries).
Work is bounded: at most MAX_READ sends of each source are read, the newest first; the report shows the
top SHOWN of each section with "and N more".
"""

from __future__ import annotations

import calendar
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, not_, select
from sqlalchemy.orm import defer

from bot.addresses import internal_clause
from bot.config import Settings
from bot.context import Context
from bot.db.models import (
    AuditEntry,
    Automation,
    Campaign,
    Delivery,
    Group,
    GroupPost,
    GroupPostDelivery,
    Membership,
)
from bot.events import Card, Message
from bot.groups import report as audit_report
from bot.i18n import sentences, t
from bot.usage.classify import CATEGORIES, KINDS, Flag, Growth, Send, Verdict, classify, kind_label, label

MIN_MONTHS, MAX_MONTHS = 1, 24
MAX_READ = 20_000
SHOWN_SENDS = 15
SHOWN_FLAGS = 10
FIELD_BUDGET = 1800  # characters of one card field's lines (Slack cuts a field at 2,000)
EXAMPLES_FOR = 50  # the posts (newest first) whose evidence names a few external recipients
SENT_POST_STATES = ("sending", "delivered", "accepted", "released")


def months_before(when: datetime, months: int) -> datetime:
    """The same day and time `months` calendar months earlier (the month's last day when it is shorter)."""
    year, month = divmod(when.year * 12 + when.month - 1 - months, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


@dataclass
class GroupHealthNow:
    """One group's members and external members now and at the period's start (from when each member
    was added, and the audited removals since)."""

    address: str
    members: int
    external: int
    members_then: int
    external_then: int
    owners: bool

    def text(self, since: datetime) -> str:
        said = [
            t(
                "{group}: members {members}, external members {external}.",
                group=self.address,
                members=self.members,
                external=self.external,
            )
        ]
        if not self.owners:
            said.append(t("It has no owner."))
        said.append(
            t(
                "Since {date}: {changes}.",
                date=f"{since:%Y-%m-%d}",
                changes=t(", ").join(
                    [
                        audit_report.change(t("members"), self.members, self.members_then),
                        audit_report.change(t("external members"), self.external, self.external_then),
                    ]
                ),
            )
        )
        return sentences(*said)


@dataclass
class Review:
    since: datetime
    until: datetime
    group: str | None
    items: list[tuple[Send, Verdict]] = field(default_factory=list)
    growth: list[Flag] = field(default_factory=list)
    health: audit_report.Counts | None = None
    previous: audit_report.Counts | None = None
    group_health: GroupHealthNow | None = None  # --group: that group's health instead of the company's
    truncated: bool = False
    log_starts: datetime | None = None  # the post log is younger than the period: where it starts
    retention_days: int = 0

    @property
    def flags(self) -> list[Flag]:
        return [v.flag for _s, v in self.items if v.flag is not None] + self.growth

    def message(self) -> Message:
        def more(lines: list[str], limit: int, budget: int = FIELD_BUDGET) -> list[str]:
            """The first `limit` lines that fit `budget` characters (a Slack card field holds 2,000),
            then how many more there are."""
            shown: list[str] = []
            used = 0
            for line in lines[:limit]:
                if shown and used + len(line) + 1 > budget:
                    break
                shown.append(line)
                used += len(line) + 1
            rest = len(lines) - len(shown)
            return shown + [t("… and {count} more", count=rest)] if rest else shown

        sends_n = len(self.items)
        recipients_n = sum(s.recipients for s, _v in self.items)
        sends = t("1 send") if sends_n == 1 else t("{count} sends", count=sends_n)
        recipients = t("1 recipient") if recipients_n == 1 else t("{count} recipients", count=recipients_n)
        flags = self.flags
        scope = t(" for {group}", group=self.group) if self.group else ""
        period = f"{self.since:%Y-%m-%d} – {self.until:%Y-%m-%d}"
        headline = (
            t(
                "Usage review {period}{scope}: {sends} to {recipients}; {count} to look at.",
                period=period,
                scope=scope,
                sends=sends,
                recipients=recipients,
                count=len(flags),
            )
            if flags
            else t(
                "Usage review {period}{scope}: nothing was sent in this period.",
                period=period,
                scope=scope,
            )
            if not sends_n
            else t(
                "Usage review {period}{scope}: {sends} to {recipients}; nothing looks misused.",
                period=period,
                scope=scope,
                sends=sends,
                recipients=recipients,
            )
        )
        per_cat: Counter[str] = Counter()
        per_cat_people: Counter[str] = Counter()
        per_kind: Counter[str] = Counter()
        for s, v in self.items:
            per_cat[v.category] += 1
            per_cat_people[v.category] += s.recipients
            per_kind[s.kind] += 1
        by_use = "\n".join(
            t(
                "{category} — sends: {count}, recipients: {recipients}",
                category=label(c),
                count=per_cat[c],
                recipients=per_cat_people[c],
            )
            for c in CATEGORIES
        )
        by_kind = t(", ").join(f"{kind_label(k)} {per_kind[k]}" for k in KINDS)
        flag_lines = [
            t("{n}. {what} — {ref}", n=i, what=f.what, ref=f.ref)
            + "\n   "
            + t("evidence: {evidence}", evidence=t("; ").join(f.evidence))
            for i, f in enumerate(flags, 1)
        ]
        fixes = "\n".join(dict.fromkeys(t("{what}: {fix}", what=f.what, fix=f.fix) for f in flags))
        # Flagged sends first, then the newest.
        ordered = sorted(self.items, key=lambda sv: (sv[1].flag is None, -sv[0].at.timestamp()))
        send_lines = [
            t(
                "{date} {kind} {ref} “{subject}”: {category} ({reasons})",
                date=f"{s.at:%Y-%m-%d}",
                kind=kind_label(s.kind),
                ref=s.ref,
                subject=s.subject or t("(no subject)"),
                category=label(v.category),
                reasons=t("; ").join(v.reasons),
            )
            for s, v in ordered
        ]
        notes: list[str] = []
        if self.truncated:
            notes.append(t("Only the newest {count} sends of each kind were read.", count=MAX_READ))
        if self.log_starts is not None:
            notes.append(
                t(
                    "The post log keeps {days} days (relay.post_retention_days): posts before {date} are not "
                    "counted.",
                    days=self.retention_days,
                    date=f"{self.log_starts:%Y-%m-%d}",
                )
            )
        health = t("Run /audit for the group health report.")
        if self.group_health is not None:
            health = sentences(self.group_health.text(self.since), t("/audit has the details."))
        elif self.health is not None:
            h = self.health
            health = sentences(
                t(
                    "{groups} groups, {members} members, {external} external members, {empty} empty, "
                    "{no_owner} with no owner.",
                    groups=h.groups,
                    members=h.members,
                    external=h.external,
                    empty=h.empty,
                    no_owner=h.no_owner,
                ),
                h.trend(self.previous),
                t("/audit has the details."),
            )
        fields = (
            (t("By use case"), by_use),
            (t("By kind"), by_kind),
            (
                t("Possible misuse ({count})", count=len(flags)),
                "\n".join(more(flag_lines, SHOWN_FLAGS)) or t("none"),
            ),
            *(((t("How to fix"), fixes),) if fixes else ()),
            (t("Group health (/audit)"), health),
            # Last: where a messenger cuts a long message (DingTalk near 4,000 characters), it cuts here.
            (t("Sends and why"), "\n".join(more(send_lines, SHOWN_SENDS) + notes) or t("none")),
        )
        return Message(headline, Card(title=t("Email usage review"), fields=fields))


async def build(
    ctx: Context, *, since: datetime, until: datetime, group: Group | None = None, admin: bool = False
) -> Review:
    """The review of `since`..`until`; `admin`: the reader is an admin (the fixes name admin-only commands
    to run, not to ask an admin for)."""
    settings = ctx.settings
    domains = [d.lower() for d in settings.org.domains]
    shown_domains = t(", ").join(domains)
    bulk = settings.reports.bulk_recipients
    review = Review(since, until, group.address if group else None)
    retention = settings.relay.post_retention_days
    if until - timedelta(days=retention) > since:
        review.log_starts, review.retention_days = until - timedelta(days=retention), retention

    def add(send: Send) -> None:
        review.items.append((send, classify(send, domains=shown_domains, bulk=bulk, admin=admin)))

    async with ctx.sessions() as session:
        # -- group posts -------------------------------------------------------------------------
        q = (
            select(GroupPost)
            .options(defer(GroupPost.body))  # a held post's message is not the review's business
            .where(
                GroupPost.received_at >= since,
                GroupPost.received_at < until,
                GroupPost.state.in_(SENT_POST_STATES),
            )
            .order_by(GroupPost.received_at.desc())
            .limit(MAX_READ + 1)
        )
        if group is not None:
            q = q.where(GroupPost.group_id == group.id)
        posts = list((await session.execute(q)).scalars())
        if len(posts) > MAX_READ:
            posts, review.truncated = posts[:MAX_READ], True
        ids = [p.id for p in posts]
        got: dict[int, tuple[int, int]] = {}
        for i in range(0, len(ids), 500):
            rows = await session.execute(
                select(
                    GroupPostDelivery.post_id,
                    func.count(),
                    func.sum(case((not_(internal_clause(settings, GroupPostDelivery.email)), 1), else_=0)),
                )
                .where(GroupPostDelivery.post_id.in_(ids[i : i + 500]))
                .group_by(GroupPostDelivery.post_id)
            )
            got.update((pid, (int(n), int(ext or 0))) for pid, n, ext in rows.all())
        # Posts whose copies are no longer listed (Postfix delivered them) count the group's members now.
        group_external: dict[int, list[str]] = {}
        for gid in {p.group_id for p in posts if p.group_id is not None}:
            group_external[gid] = list(
                (
                    await session.execute(
                        select(Membership.email)
                        .where(Membership.group_id == gid, not_(internal_clause(settings, Membership.email)))
                        .order_by(Membership.email)
                        .limit(1000)
                    )
                ).scalars()
            )
        looked_up = 0  # posts whose external recipients were looked up by name (bounded: one query each)
        for p in posts:
            total, external = got.get(p.id, (p.recipient_count, 0))
            examples: tuple[str, ...] = ()
            if p.id not in got and p.group_id is not None:
                external = min(total, len(group_external.get(p.group_id, [])))
            if external and (p.has_unsubscribe or p.has_tracking_links) and looked_up < EXAMPLES_FOR:
                looked_up += 1
                if p.id in got:
                    examples = tuple(
                        (
                            await session.execute(
                                select(GroupPostDelivery.email)
                                .where(
                                    GroupPostDelivery.post_id == p.id,
                                    not_(internal_clause(settings, GroupPostDelivery.email)),
                                )
                                .order_by(GroupPostDelivery.email)
                                .limit(3)
                            )
                        ).scalars()
                    )
                elif p.group_id is not None:
                    examples = tuple(group_external.get(p.group_id, [])[:3])
            add(
                Send(
                    kind="post",
                    ref=f"#{p.id}",
                    at=p.received_at,
                    target=p.group_address,
                    subject=p.subject or "",
                    recipients=total,
                    external=external,
                    has_unsubscribe=p.has_unsubscribe,
                    has_tracking=p.has_tracking_links,
                    has_links=p.has_links,
                    example_external=examples,
                )
            )
        # -- campaigns and automations: their mail sent in the period ----------------------------
        sent = (
            select(
                Delivery.campaign_id,
                func.count(),
                func.sum(case((not_(internal_clause(settings, Delivery.email)), 1), else_=0)),
                func.min(Delivery.sent_at),
            )
            .where(Delivery.sent_at >= since, Delivery.sent_at < until)
            .group_by(Delivery.campaign_id)
        ).subquery()
        q2 = (
            select(Campaign, Automation.trigger, sent.c[1], sent.c[2], sent.c[3])
            .join(sent, sent.c.campaign_id == Campaign.id)
            .outerjoin(Automation, Automation.campaign_id == Campaign.id)
            .order_by(Campaign.id.desc())
            .limit(MAX_READ)
        )
        if group is not None:
            q2 = q2.where(and_(Campaign.audience_kind == "group", Campaign.audience_name == group.address))
        for campaign, trigger, total, external, first in (await session.execute(q2)).all():
            automation = campaign.kind == "automation"
            add(
                Send(
                    kind="automation" if automation else "campaign",
                    ref=campaign.name,
                    at=first,  # its first mail in the period (an automation runs for months)
                    target=_audience(campaign),
                    subject=campaign.subject,
                    recipients=int(total),
                    external=int(external or 0),
                    audience_kind=campaign.audience_kind,
                    trigger=trigger or "",
                )
            )
        # -- test sends --------------------------------------------------------------------------
        tests = (
            await session.execute(
                select(AuditEntry.at, AuditEntry.subject, AuditEntry.detail)
                .where(AuditEntry.action == "campaign.test", AuditEntry.at >= since, AuditEntry.at < until)
                .order_by(AuditEntry.at.desc())
                .limit(MAX_READ)
            )
        ).all()
        names = {s.removeprefix("campaign:") for _at, s, _d in tests}
        campaigns = {
            c.name: c
            for c in (
                await session.execute(select(Campaign).where(Campaign.name.in_(sorted(names)[:MAX_READ])))
            ).scalars()
        }
        for at, subject, _detail in tests:
            c = campaigns.get(subject.removeprefix("campaign:"))
            if c is None:
                continue
            if group is not None and not (c.audience_kind == "group" and c.audience_name == group.address):
                continue
            add(
                Send(
                    kind="test",
                    ref=c.name,
                    at=at,
                    target=_audience(c),
                    subject=c.subject,
                    recipients=1,
                    external=0,
                    audience_kind=c.audience_kind,
                )
            )
        # -- groups whose external members grew --------------------------------------------------
        review.growth = await _growth(session, since, until, settings, group)
    review.items.sort(key=lambda sv: sv[0].at)
    if group is not None:
        async with ctx.sessions() as session:
            review.group_health = await _group_health(session, group, since, settings)
        return review
    report = await audit_report.build_report(ctx)
    review.health = report.counts
    review.previous = await audit_report.previous_counts(ctx, until)
    return review


async def _group_health(session: Any, group: Group, since: datetime, settings: Settings) -> GroupHealthNow:
    def external(email: str) -> bool:
        return not settings.is_internal(email)

    members = (
        await session.execute(
            select(Membership.email, Membership.added_at).where(Membership.group_id == group.id)
        )
    ).all()
    removed = [
        str((before or {}).get("email", "")).lower()
        for (before,) in (
            await session.execute(
                select(AuditEntry.before).where(
                    AuditEntry.action == "membership.remove",
                    AuditEntry.subject == f"group:{group.address}",
                    AuditEntry.at >= since,
                )
            )
        ).all()
    ]
    then = [e for e, added in members if added is None or added <= since] + [e for e in removed if e]
    return GroupHealthNow(
        address=group.address,
        members=len(members),
        external=sum(1 for e, _a in members if external(e)),
        members_then=len(then),
        external_then=sum(1 for e in then if external(e)),
        owners=bool(group.owners),
    )


def _audience(campaign: Campaign) -> str:
    if campaign.audience_kind == "joiners":
        return t("new joiners")
    return campaign.audience_name


def _steps(since: datetime, until: datetime) -> list[datetime]:
    """The period's month boundaries, `since` first and `until` last."""
    points = [since]
    n = 1
    while True:
        year, month = divmod(since.year * 12 + since.month - 1 + n, 12)
        day = min(since.day, calendar.monthrange(year, month + 1)[1])
        nxt = since.replace(year=year, month=month + 1, day=day)
        if nxt >= until - timedelta(days=1):
            break
        points.append(nxt)
        n += 1
    points.append(until)
    return points


async def _growth(
    session: Any, since: datetime, until: datetime, settings: Settings, group: Group | None
) -> list[Flag]:
    """External members of each group at each month boundary: the members now, by when they were added,
    plus those whose removal was audited after the boundary."""
    q = (
        select(Group.id, Group.address, Membership.email, Membership.added_at)
        .join(Membership, Membership.group_id == Group.id)
        .where(not_(internal_clause(settings, Membership.email)))
    )
    if group is not None:
        q = q.where(Group.id == group.id)
    current: dict[str, list[tuple[str, datetime]]] = {}
    for _gid, address, email, added in (await session.execute(q.limit(MAX_READ * 5))).all():
        current.setdefault(address, []).append((email, added))
    removed: dict[str, list[datetime]] = {}
    rq = select(AuditEntry.subject, AuditEntry.before, AuditEntry.at).where(
        AuditEntry.action == "membership.remove", AuditEntry.at >= since
    )
    if group is not None:
        rq = rq.where(AuditEntry.subject == f"group:{group.address}")
    for subject, before, at in (await session.execute(rq.limit(MAX_READ))).all():
        email = str((before or {}).get("email", "")).lower()
        if email and not settings.is_internal(email):
            removed.setdefault(subject.removeprefix("group:"), []).append(at)
    steps = _steps(since, until)
    flags = []
    for address in sorted(set(current) | set(removed)):
        members = current.get(address, [])
        gone = removed.get(address, [])
        counts = [sum(1 for _e, a in members if a <= p) + sum(1 for r in gone if r > p) for p in steps]
        newest = tuple(e for e, a in sorted(members, key=lambda m: m[1], reverse=True) if a >= since)[:3]
        found = Growth(address, counts, newest).flag()
        if found is not None:
            flags.append(found)
    return flags
