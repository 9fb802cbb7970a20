"""`/campaign report` and `/automation report`: what happened to a campaign, as figures with their
denominators, and a chart (PNG) drawn to be read.

Rates are over messages delivered to the mail server (sent less later hard bounces); bounce shares are
over attempts. The common benchmarks (20% opens, 3% click-through) are compared only once the figures
mean something: at least `MIN_DELIVERED` delivered and `SETTLE` after the send ended (most opens and
clicks come in the first two days); before that the report says when. Opens are inflated by
mail-privacy proxies (Apple Mail Privacy Protection fetches every image), so clicks are the engagement
figure to trust; and a click implies an open, so a delivery that clicked counts as opened (a reader
who blocks images still clicks).

The chart is two steps apart: `chart_data` (pure: figures in, series and axes out, testable) and
`draw` (matplotlib). Counts are cumulative over a time axis from the send's start, at least
`MIN_SPAN` long, so a four-recipient send that took 0.2 s reads as "all four went out at once", not
as a spike; each line stops at the report time (marked "now") and the rest of the axis stays empty; every series has its own colour, marker and line style and is listed in the legend with its
total, zero included; an empty panel says why it is empty.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import os
import re
import secrets
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from sqlalchemy import (
    Float,
    Integer,
    Select,
    String,
    distinct,
    exists,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from bot import i18n
from bot.campaigns import service
from bot.campaigns.notes import state_name, status_name
from bot.campaigns.report_cache import Busy, report_renders
from bot.context import Context
from bot.db.models import Campaign, CampaignEvent, Delivery, Suppression
from bot.errors import Refusal
from bot.events import Card, Image, Message
from bot.i18n import t
from bot.links import UnsetSecret
from bot.mail.dsn import STATUS_RE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OPEN_BENCHMARK = 0.20
CLICK_BENCHMARK = 0.03
COMPLAINT_LIMIT = 0.003  # the bulk-sender rules' spam-rate ceiling
MIN_DELIVERED = 100  # below this a rate moves by whole percents per person: no benchmark verdict
SETTLE = timedelta(hours=48)  # most opens and clicks arrive within two days of a send
MIN_SPAN = timedelta(seconds=60)  # the chart's time axis is never shorter than this
LINKS_SHOWN = 10
MAX_MARKS = 40  # markers per series on the chart
PREVIOUS_SHOWN = 3
FONT = Path(__file__).resolve().parents[1] / "fonts" / "PostroomCJKSC-Regular.otf"
FONT_FAMILY = "Postroom CJK SC"  # bot/fonts/README.md: a subset of Noto Sans CJK SC, SIL OFL 1.1


@dataclass
class Earlier:
    """A previous campaign to the same audience, for comparison."""

    name: str
    started_at: datetime
    delivered: int
    opens: int
    clicks: int


Steps = tuple[tuple[datetime, int], ...]
"""A cumulative count as the points where it rose: (when, how many by then), ascending. Built from
the database it has at most BUCKETS + 1 points however large the campaign (each bucket's last time and
the count by then, so every point lies on the exact curve); `steps` makes it from exact times."""


def steps(times: list[datetime]) -> Steps:
    """Exact steps from a list of times (one point per time)."""
    return tuple((at, n) for n, at in enumerate(sorted(times), 1))


def _total(s: Steps) -> int:
    return s[-1][1] if s else 0


@dataclass
class Figures:
    campaign: str
    state: str
    recipients: int = 0
    sent: int = 0
    delivered: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    unsubscribes: int = 0
    complaints: int = 0
    opens: int = 0
    clicks: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    suppressed_before: int = (
        0  # already suppressed when their turn came: not mailed, not this campaign's doing
    )
    tracking: bool = True
    automation: bool = False
    audience: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    now: datetime | None = None
    first_sent_at: datetime | None = None  # exact (a Steps point is its bucket's last time)
    sent_steps: Steps = ()
    open_steps: Steps = ()  # first open or click per recipient
    click_steps: Steps = ()  # first click per recipient
    bounce_steps: Steps = ()  # hard and soft, first per recipient
    unsubscribe_steps: Steps = ()
    complaint_steps: Steps = ()  # first per recipient
    by_day: list[tuple[date, int, int]] = field(default_factory=list)  # (UTC day, unsubscribes, complaints)
    bounce_classes: dict[tuple[str, str], int] = field(default_factory=dict)  # (hard|soft, class) -> n
    links: list[tuple[str, int, int]] = field(default_factory=list)  # (url, people, clicks)
    earlier: list[Earlier] = field(default_factory=list)
    # which build these are: a chart drawn from them is kept under it (report_cache), never mistaken
    # for one drawn from another build of the same campaign
    build: int = field(default_factory=itertools.count().__next__, compare=False)

    @property
    def attempted(self) -> int:
        return self.sent + self.statuses.get("bounced", 0)

    def rate(self, n: int) -> float:
        return n / self.delivered if self.delivered else 0.0

    def ended_at(self) -> datetime | None:
        """When the send ended (an automation: when it first sent; its figures settle from there)."""
        if self.automation:
            return self.first_sent_at or (self.sent_steps[0][0] if self.sent_steps else None)
        if self.state == "sending" or self.state == "paused":
            return None
        return self.finished_at or (self.sent_steps[-1][0] if self.sent_steps else None)

    def benchmark_wait(self) -> str | None:
        """Why the figures can't be compared with the benchmarks yet, or None when they can."""
        ended = self.ended_at()
        now = self.now or datetime.now(UTC)
        reasons = []
        if self.delivered < MIN_DELIVERED:
            reasons.append(
                t(
                    "{delivered} delivered is fewer than {minimum}, so one person moves a rate by whole "
                    "percents",
                    delivered=self.delivered,
                    minimum=MIN_DELIVERED,
                )
            )
        if ended is None:
            reasons.append(t("the send has not ended; compare 48 h after it ends"))
        elif now - ended < SETTLE:
            reasons.append(
                t(
                    "most opens and clicks come in the first 48 h: compare after {when} UTC",
                    when=f"{ended + SETTLE:%Y-%m-%d %H:%M}",
                )
            )
        return t("; ").join(reasons) if reasons else None

    def text(self) -> str:
        lines = [
            t("Report for “{name}” ({state}): 1 recipient.", name=self.campaign, state=state_name(self.state))
            if self.recipients == 1
            else t(
                "Report for “{name}” ({state}): {count} recipients.",
                name=self.campaign,
                state=state_name(self.state),
                count=self.recipients,
            )
        ]
        attempted = self.attempted
        lines.append(
            "  "
            + t(
                "sent {sent}, delivered {delivered} of {attempted} attempts ({share})",
                sent=self.sent,
                delivered=self.delivered,
                attempted=attempted,
                share=_pct(self.delivered, attempted),
            )
        )
        lines.append(
            "  "
            + t(
                "hard bounces {hard} of {attempted} attempts ({share}), soft bounces {soft}",
                hard=self.hard_bounces,
                attempted=attempted,
                share=_pct(self.hard_bounces, attempted),
                soft=self.soft_bounces,
            )
        )
        if self.bounce_classes:
            lines.append("  " + t("bounces by class: {classes}", classes=self._classes()))
        complaints = "  " + t(
            "unsubscribes {unsubscribes} of {delivered} delivered ({unsubscribe_rate}), complaints "
            "{complaints} ({complaint_rate})",
            unsubscribes=self.unsubscribes,
            delivered=self.delivered,
            unsubscribe_rate=_pct(self.unsubscribes, self.delivered),
            complaints=self.complaints,
            complaint_rate=_pct(self.complaints, self.delivered),
        )
        if self.rate(self.complaints) > COMPLAINT_LIMIT:
            complaints += "  " + t("⚠ above the 0.3% spam-rate ceiling")
        lines.append(complaints)
        if self.tracking:
            lines.append(
                "  "
                + t(
                    "opens {opens} of {delivered} delivered ({open_rate}); clicks {clicks} of {delivered} "
                    "delivered ({click_rate} click-through)",
                    opens=self.opens,
                    clicks=self.clicks,
                    delivered=self.delivered,
                    open_rate=_pct(self.opens, self.delivered),
                    click_rate=_pct(self.clicks, self.delivered),
                )
            )
            if self.opens:
                lines.append(
                    "  "
                    + t(
                        "{clicks} of {opens} openers clicked ({share})",
                        clicks=self.clicks,
                        opens=self.opens,
                        share=_pct(self.clicks, self.opens),
                    )
                )
            if self.delivered:  # nothing delivered: no rate to compare
                lines.append("  " + self._benchmarks())
            lines.append(
                "  "
                + t(
                    "Note: opens are inflated by mail-privacy proxies (Apple Mail Privacy Protection "
                    "loads every image), so clicks are the engagement figure to trust."
                )
            )
            if self.links:
                lines.append("  " + t("clicks per link:"))
                lines += [
                    "    "
                    + t(
                        "{url} — {people}, {clicks}",
                        url=shown_url(url),
                        people=_people(people),
                        clicks=_clicks(n),
                    )
                    for url, people, n in self.links
                ]
        else:
            lines.append("  " + t("opens and clicks: not tracked for this campaign."))
        days = self.by_day
        if days:
            lines.append("  " + t("unsubscribes and complaints by day:"))
            lines += [
                "    "
                + t(
                    "{day}: {unsubscribes}, {complaints}",
                    day=f"{day:%Y-%m-%d}",
                    unsubscribes=t("1 unsubscribe") if u == 1 else t("{count} unsubscribes", count=u),
                    complaints=t("1 complaint") if c == 1 else t("{count} complaints", count=c),
                )
                for day, u, c in days
            ]
        if self.earlier:
            lines.append("  " + t("the last campaigns to {audience}:", audience=self.audience))
            for e in self.earlier:
                lines.append(
                    "    "
                    + t(
                        "{name} ({day}): {delivered} delivered, opens {open_rate}, clicks {click_rate}",
                        name=e.name,
                        day=f"{e.started_at:%Y-%m-%d}",
                        delivered=e.delivered,
                        open_rate=_pct(e.opens, e.delivered),
                        click_rate=_pct(e.clicks, e.delivered),
                    )
                )
        if self.suppressed_before:
            lines.append(
                "  "
                + (
                    t("1 contact was suppressed already when its turn came: not mailed, not counted here.")
                    if self.suppressed_before == 1
                    else t(
                        "{count} contacts were suppressed already when their turn came: not mailed, not "
                        "counted here.",
                        count=self.suppressed_before,
                    )
                )
            )
        others = {k: v for k, v in self.statuses.items() if k not in ("sent", "bounced", "suppressed")}
        if others:
            lines.append(
                "  "
                + t(
                    "not sent: {counts}",
                    counts=", ".join(f"{status_name(k)} {v}" for k, v in sorted(others.items())),
                )
            )
        return "\n".join(lines)

    def _benchmarks(self) -> str:
        wait = self.benchmark_wait()
        if wait is not None:
            return t("Benchmarks (20% opens, 3% clicks) not compared yet: {why}.", why=wait)
        o, c = self.rate(self.opens), self.rate(self.clicks)
        opens = (
            t("opens {rate} — above the common 20% benchmark", rate=f"{o:.1%}")
            if o > OPEN_BENCHMARK
            else t("opens {rate} — below the common 20% benchmark", rate=f"{o:.1%}")
        )
        clicks = (
            t("clicks {rate} — above the common 3% benchmark", rate=f"{c:.1%}")
            if c > CLICK_BENCHMARK
            else t("clicks {rate} — below the common 3% benchmark", rate=f"{c:.1%}")
        )
        return t("Benchmarks: {opens}; {clicks}.", opens=opens, clicks=clicks)

    def _classes(self) -> str:
        parts = []
        for kind in ("hard", "soft"):
            found = sorted(
                ((k, n) for (h, k), n in self.bounce_classes.items() if h == kind), key=lambda x: -x[1]
            )
            if found:
                label = t("hard") if kind == "hard" else t("soft")
                parts.append(f"{label}: " + ", ".join(f"{bounce_class_name(k)} {n}" for k, n in found))
        return "; ".join(parts)


def _people(n: int) -> str:
    return t("1 person") if n == 1 else t("{count} people", count=n)


def _clicks(n: int) -> str:
    return t("1 click") if n == 1 else t("{count} clicks", count=n)


URL_SHOWN = 120  # characters of a clicked link shown in a report
_UNSEEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})  # control, format (bidi), unassigned…


def _escaped(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def shown_url(url: str) -> str:
    """A clicked link as a report shows it: control, bidi and other invisible format characters written
    out as \\uXXXX (a U+202E would show the rest reversed), and cut at URL_SHOWN characters with "…"."""
    out = "".join(_escaped(c) if unicodedata.category(c) in _UNSEEN else c for c in url)
    return out if len(out) <= URL_SHOWN else out[: URL_SHOWN - 1] + "…"


def _pct(n: int, of: int) -> str:
    return f"{n / of:.1%}" if of else "—"


def bounce_class(kind: str, detail: str | None) -> str:
    """The class of a bounce from its enhanced status code (RFC 3463): address, mailbox, routing,
    policy, or other."""
    m = STATUS_RE.search(detail or "")
    if m is None:
        return "other"
    return {"1": "address", "2": "mailbox", "4": "routing", "5": "protocol", "7": "policy"}.get(
        m.group(2), "other"
    )


def bounce_class_name(klass: str) -> str:
    return {
        "address": t("unknown or bad address"),
        "mailbox": t("mailbox full or disabled"),
        "routing": t("routing or network"),
        "protocol": t("mail protocol"),
        "policy": t("refused by policy (spam, blocking, authentication)"),
    }.get(klass, t("other"))


# -- counting in the database ----------------------------------------------------------------------
# Every figure is counted by the database, never by loading a campaign's rows into Python: a report on
# a 100,000-recipient campaign moves a few hundred rows (benchmarks/report_build.py). The time series
# are bucketed there too: BUCKETS equal slices from the send's start to the report time (finer than
# the chart's plot area is wide), each bucket giving its count and its last time.
BUCKETS = 400


class _Seconds(FunctionElement[Any]):
    """A timestamp as seconds since the epoch, the same number on both databases."""

    inherit_cache = True
    type = Float()


@compiles(_Seconds)
def _seconds_default(element: _Seconds, compiler: Any, **kw: Any) -> str:
    return f"EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})"


@compiles(_Seconds, "sqlite")
def _seconds_sqlite(element: _Seconds, compiler: Any, **kw: Any) -> str:
    # stored as UTC text (UtcDateTime); julianday reads its fractional seconds
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


class _Bucket(FunctionElement[Any]):
    """The bucket of a number of bucket widths: floor(x) clamped to 0..BUCKETS, with x written once
    (SQLite would compute it again for each place it appears). SQLite has no floor() unless built with
    its math functions; CAST truncates there, which is floor for x >= 0 (PostgreSQL's CAST would round)."""

    inherit_cache = True
    type = Integer()


@compiles(_Bucket)
def _bucket_default(element: _Bucket, compiler: Any, **kw: Any) -> str:
    return f"CAST(FLOOR(GREATEST(0, LEAST({BUCKETS}, {compiler.process(element.clauses, **kw)}))) AS INTEGER)"


@compiles(_Bucket, "sqlite")
def _bucket_sqlite(element: _Bucket, compiler: Any, **kw: Any) -> str:
    return f"CAST(max(0, min({BUCKETS}, {compiler.process(element.clauses, **kw)})) AS INTEGER)"


class _UtcDay(FunctionElement[Any]):
    """The UTC calendar day of a timestamp."""

    inherit_cache = True
    type = String()


@compiles(_UtcDay)
def _day_default(element: _UtcDay, compiler: Any, **kw: Any) -> str:
    return f"CAST(CAST(timezone('UTC', {compiler.process(element.clauses, **kw)}) AS DATE) AS VARCHAR)"


@compiles(_UtcDay, "sqlite")
def _day_sqlite(element: _UtcDay, compiler: Any, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"


@dataclass
class _Counted:
    steps: Steps
    first: datetime | None  # exact
    days: dict[date, int]  # UTC day -> how many


async def _count(session: AsyncSession, times: Select[Any], origin: datetime, width_s: float) -> _Counted:
    """`times` (a select of one column labelled "at") counted in one statement: cumulatively in BUCKETS
    buckets of `width_s` from `origin` (a time outside them counts in the first or the last), by UTC
    day, and the first of them. Rows per (bucket, day): at most a few hundred."""
    at = times.subquery().c.at
    bucket = _Bucket((_Seconds(at) - origin.timestamp()) / width_s).label("bucket")
    day = _UtcDay(at).label("day")
    # grouped by the columns' names: each computed once a row
    by: tuple[Any, ...] = (literal_column("bucket"), literal_column("day"))
    rows = (
        await session.execute(
            select(bucket, day, func.count(), func.max(at), func.min(at))
            .where(at.is_not(None))
            .group_by(*by)
            .order_by(*by)
        )
    ).all()
    buckets: dict[int, tuple[int, datetime]] = {}
    days: dict[date, int] = {}
    for b, d, count, last, _ in rows:
        n, latest = buckets.get(b, (0, last))
        buckets[b] = (n + int(count), max(latest, last))
        on = date.fromisoformat(str(d))
        days[on] = days.get(on, 0) + int(count)
    out, n = [], 0
    for b in sorted(buckets):
        n += buckets[b][0]
        out.append((buckets[b][1], n))
    first = min((cast(datetime, r[4]) for r in rows), default=None)
    return _Counted(tuple(out), first, days)


def _firsts(campaign_id: int, *kinds: str) -> Select[Any]:
    """Each recipient's first event of `kinds`."""
    return (
        select(func.min(CampaignEvent.at).label("at"))
        .where(CampaignEvent.campaign_id == campaign_id, CampaignEvent.kind.in_(kinds))
        .group_by(CampaignEvent.delivery_id)
    )


def _distinct_recipients(campaign: Any, *kinds: str) -> Any:
    """How many recipients of `campaign` (a column: correlated) have an event of `kinds`."""
    return (
        select(func.count(distinct(CampaignEvent.delivery_id)))
        .where(CampaignEvent.campaign_id == campaign, CampaignEvent.kind.in_(kinds))
        .scalar_subquery()
    )


async def build_report(ctx: Context, campaign: Campaign) -> Figures:
    f = Figures(
        campaign=campaign.name.removeprefix(service.AUTOMATION_PREFIX),
        state=campaign.state,
        tracking=bool(ctx.settings.campaigns.tracking and campaign.tracking),
        automation=campaign.kind == "automation",
        audience=campaign.audience_name,
        started_at=campaign.started_at,
        finished_at=campaign.finished_at,
        now=ctx.now(),
    )
    cid = campaign.id
    async with ctx.sessions() as session:
        f.statuses = await service.counts(session, cid)
        # A delivery skipped because its address was suppressed already (a bounce or an unsubscribe from
        # elsewhere) is no recipient of this campaign and none of its doing: shown apart.
        f.suppressed_before = f.statuses.get("suppressed", 0)
        f.recipients = sum(f.statuses.values()) - f.suppressed_before
        f.sent = f.statuses.get("sent", 0)
        events = dict(
            (
                await session.execute(
                    select(CampaignEvent.kind, func.count(distinct(CampaignEvent.delivery_id)))
                    .where(CampaignEvent.campaign_id == cid)
                    .group_by(CampaignEvent.kind)
                )
            ).all()
        )
        late_hard = events.get("hard_bounce", 0)
        f.hard_bounces = f.statuses.get("bounced", 0) + late_hard
        f.soft_bounces = events.get("soft_bounce", 0)
        f.complaints = events.get("complaint", 0)
        f.clicks = events.get("click", 0)
        # A click implies an open (the images were blocked, or fetched by a proxy we never saw): a
        # delivery that clicked counts as opened, so no more people click than open.
        f.opens = int(
            (await session.execute(select(_distinct_recipients(cid, "open", "click")))).scalar_one()
        )
        f.delivered = max(0, f.sent - late_hard)
        sent = Delivery.campaign_id == cid, Delivery.status == "sent", Delivery.sent_at.is_not(None)
        now = f.now or datetime.now(UTC)
        origin = min(campaign.started_at or campaign.created_at or now, now)
        width_s = max((now - origin).total_seconds(), MIN_SPAN.total_seconds()) / BUCKETS
        unsubscribed = (
            Suppression.campaign_id == cid,
            Suppression.reason == "unsubscribed",
            # from a message of its own that reached them before they left
            exists(
                select(Delivery.id).where(
                    Delivery.campaign_id == cid,
                    Delivery.email == Suppression.email,
                    Delivery.status == "sent",
                    Delivery.sent_at <= Suppression.created_at,
                )
            ),
        )

        async def count(times: Select[Any]) -> _Counted:
            return await _count(session, times, origin, width_s)

        unsubscribes = await count(select(Suppression.created_at.label("at")).where(*unsubscribed))
        f.unsubscribe_steps = unsubscribes.steps
        f.unsubscribes = _total(f.unsubscribe_steps)
        sent_at = await count(select(Delivery.sent_at.label("at")).where(*sent))
        f.sent_steps, f.first_sent_at = sent_at.steps, sent_at.first
        f.open_steps = (await count(_firsts(cid, "open", "click"))).steps  # the first open or click
        f.click_steps = (await count(_firsts(cid, "click"))).steps
        complaints = await count(_firsts(cid, "complaint"))
        f.complaint_steps = complaints.steps
        refused = Delivery.campaign_id == cid, Delivery.status == "bounced"
        f.bounce_steps = (
            await count(
                union_all(
                    select(Delivery.claimed_at.label("at")).where(*refused),
                    _firsts(cid, "hard_bounce"),
                    _firsts(cid, "soft_bounce"),
                )
                .subquery()
                .select()
            )
        ).steps
        days = {
            d: [unsubscribes.days.get(d, 0), complaints.days.get(d, 0)]
            for d in set(unsubscribes.days) | set(complaints.days)
        }
        f.by_day = [(d, u, c) for d, (u, c) in sorted(days.items())]
        classes: Counter[tuple[str, str]] = Counter()
        for err, n in (
            await session.execute(
                select(Delivery.last_error, func.count()).where(*refused).group_by(Delivery.last_error)
            )
        ).all():
            classes[("hard", bounce_class("hard", err))] += int(n)
        for kind, detail, n in (
            await session.execute(
                select(CampaignEvent.kind, CampaignEvent.detail, func.count())
                .where(
                    CampaignEvent.campaign_id == cid, CampaignEvent.kind.in_(("hard_bounce", "soft_bounce"))
                )
                .group_by(CampaignEvent.kind, CampaignEvent.detail)
            )
        ).all():
            classes[(kind.removesuffix("_bounce"), bounce_class(kind, detail))] += int(n)
        f.bounce_classes = dict(classes)
        f.links = [
            (str(url), int(people), int(n))
            for url, people, n in (
                await session.execute(
                    select(
                        CampaignEvent.detail, func.count(distinct(CampaignEvent.delivery_id)), func.count()
                    )
                    .where(CampaignEvent.campaign_id == cid, CampaignEvent.kind == "click")
                    .group_by(CampaignEvent.detail)
                    .order_by(func.count(distinct(CampaignEvent.delivery_id)).desc(), CampaignEvent.detail)
                    .limit(LINKS_SHOWN)
                )
            ).all()
            if url
        ]
        if campaign.started_at is not None and not f.automation:
            # the last campaigns to the same audience, each one's figures counted in the same statement
            other = Campaign.id
            sent_there = (
                select(func.count())
                .where(Delivery.campaign_id == other, Delivery.status == "sent")
                .scalar_subquery()
            )
            rows = (
                await session.execute(
                    select(
                        Campaign.name,
                        Campaign.started_at,
                        sent_there,
                        _distinct_recipients(other, "hard_bounce"),
                        _distinct_recipients(other, "open", "click"),
                        _distinct_recipients(other, "click"),
                    )
                    .where(
                        Campaign.audience_kind == campaign.audience_kind,
                        Campaign.audience_name == campaign.audience_name,
                        Campaign.kind == "campaign",
                        Campaign.id != cid,
                        Campaign.started_at.is_not(None),
                        Campaign.started_at < campaign.started_at,
                    )
                    .order_by(Campaign.started_at.desc())
                    .limit(PREVIOUS_SHOWN)
                )
            ).all()
            f.earlier = [
                Earlier(name, started, max(0, int(n_sent) - int(hard)), int(opened), int(clicked))
                for name, started, n_sent, hard, opened, clicked in rows
            ]
    return f


# -- the chart's data: pure ------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    key: str  # sent | bounced | unsubscribed | complained | opened | clicked
    label: str  # with its total, for the legend
    total: int
    xs: tuple[float, ...]  # a cumulative step line, from 0 to the axis' end
    ys: tuple[int, ...]
    marks: tuple[tuple[float, int], ...]  # one marker where each count rose
    colour: str
    marker: str
    linestyle: str
    linewidth: float
    zorder: int


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    series: tuple[Series, ...]
    y_ticks: tuple[int, ...]  # whole numbers: counts of people
    y_top: float
    empty: str | None = None  # a sentence instead of the plot, when there is nothing to draw
    note: str | None = None  # a sentence under the plot (e.g. "every message bounced")


@dataclass(frozen=True)
class ChartData:
    title: str
    x_label: str
    unit: str  # seconds | minutes | hours | days
    x_max: float  # the axis' end (at least MIN_SPAN)
    panels: tuple[Panel, ...]
    now_x: float = 0.0  # the report time on the axis: every series stops here, the rest stays empty


STYLE = {  # colour-blind-safe (Okabe–Ito), and told apart by marker and line style too
    "sent": ("#0072B2", "o", "-", 2.0, 3),
    "bounced": ("#D55E00", "x", "--", 1.8, 4),
    "unsubscribed": ("#CC79A7", "v", "-.", 1.8, 5),
    "complained": ("#000000", "D", ":", 1.8, 6),
    "opened": ("#009E73", "o", "-", 3.0, 3),
    "clicked": ("#E69F00", "s", "--", 1.8, 4),  # drawn over opened, dashed: both stay visible
}


def _unit(span_s: float) -> tuple[float, str]:
    if span_s < 120:
        return 1.0, "seconds"
    if span_s < 2 * 3600:
        return 60.0, "minutes"
    if span_s < 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def _unit_label(unit: str, t0: datetime) -> str:
    when = f"{t0:%Y-%m-%d %H:%M:%S}"
    return {
        "seconds": t("seconds since the send started ({when} UTC)", when=when),
        "minutes": t("minutes since the send started ({when} UTC)", when=when),
        "hours": t("hours since the send started ({when} UTC)", when=when),
        "days": t("days since the send started ({when} UTC)", when=when),
    }[unit]


def integer_ticks(top: int, most: int = 6) -> tuple[int, ...]:
    """Whole-number ticks from 0 to at least `top`, at most `most` of them, at a 1-2-5 step."""
    top = max(1, top)
    step = 1
    for magnitude in (10**e for e in range(0, 10)):
        for k in (1, 2, 5):
            step = k * magnitude
            if math.ceil(top / step) + 1 <= most:
                last = step * math.ceil(top / step)
                return tuple(range(0, last + 1, step))
    return (0, top)


def _series(key: str, label: str, counted: Steps, t0: datetime, scale: float, x_max: float) -> Series:
    """A cumulative line from 0 to `x_max` (the report time: nothing is known past it)."""
    points = [min(x_max, max(0.0, (at - t0).total_seconds() / scale)) for at, _ in counted]
    ys = tuple(n for _, n in counted)
    total = _total(counted)
    colour, marker, linestyle, width, z = STYLE[key]
    return Series(
        key=key,
        label=f"{label} ({total})",
        total=total,
        xs=(0.0, *points, x_max),
        ys=(0, *ys, total),
        marks=_marks(points, ys),
        colour=colour,
        marker=marker,
        linestyle=linestyle,
        linewidth=width,
        zorder=z,
    )


def _marks(points: list[float], ys: tuple[int, ...], most: int = MAX_MARKS) -> tuple[tuple[float, int], ...]:
    """A marker where each count rose; for a large send, `most` of them spread evenly over the count (a
    marker per recipient would be a smear, and slow to draw): the first point to reach each share."""
    pairs = list(zip(points, ys, strict=True))
    if len(pairs) <= most:
        return tuple(pairs)
    total, k = pairs[-1][1], 0
    marks: list[tuple[float, int]] = []
    for i in range(most):
        target = int(i * total / most) + 1
        while pairs[k][1] < target:
            k += 1
        if not marks or marks[-1] != pairs[k]:
            marks.append(pairs[k])
    return tuple(marks) + (pairs[-1],)


def _panel(title: str, ylabel: str, series: tuple[Series, ...], **extra: str | None) -> Panel:
    ticks = integer_ticks(max((s.total for s in series), default=1))
    return Panel(title, ylabel, series, ticks, ticks[-1] * 1.08 + 0.1, **extra)


def chart_data(f: Figures) -> ChartData:
    """What the chart shows, in the current language: axes, series and empty states."""
    now = f.now or datetime.now(UTC)
    every = [
        at
        for counted in (
            f.sent_steps,
            f.bounce_steps,
            f.unsubscribe_steps,
            f.complaint_steps,
            f.open_steps,
            f.click_steps,
        )
        for at, _ in counted
    ]
    t0 = min([x for x in (f.started_at, f.first_sent_at, *every) if x is not None], default=now)
    end = max([now, *every])
    span = max((end - t0).total_seconds(), MIN_SPAN.total_seconds())
    scale, unit = _unit(span)
    x_max = span / scale
    now_x = (end - t0).total_seconds() / scale
    title = (
        t("“{name}”: 1 recipient", name=f.campaign)
        if f.recipients == 1
        else t("“{name}”: {count} recipients", name=f.campaign, count=f.recipients)
    )

    def series(key: str, label: str, counted: Steps) -> Series:
        return _series(key, label, counted, t0, scale, now_x)

    if f.attempted == 0:
        words = (
            t("Sending has started; nothing has gone out yet.")
            if f.state in ("sending", "paused")
            else t("Nothing was sent.")
        )
        delivery = _panel(t("Delivery"), t("recipients (cumulative)"), (), empty=words)
    else:
        delivery = _panel(
            t("Delivery"),
            t("recipients (cumulative)"),
            (
                series("sent", t("sent"), f.sent_steps),
                series("bounced", t("bounced"), f.bounce_steps),
                series("unsubscribed", t("unsubscribed"), f.unsubscribe_steps),
                series("complained", t("complained"), f.complaint_steps),
            ),
            note=t("Every message bounced: nothing was delivered.") if f.delivered == 0 else None,
        )
    if not f.tracking:
        engagement = _panel(
            t("Engagement"), t("recipients (cumulative)"), (), empty=t("Opens and clicks are not tracked.")
        )
    elif f.delivered == 0:
        engagement = _panel(
            t("Engagement"),
            t("recipients (cumulative)"),
            (),
            empty=t("Nothing was delivered, so nothing could be opened or clicked.")
            if f.attempted
            else t("Nothing was delivered yet."),
        )
    else:
        engagement = _panel(
            t("Engagement"),
            t("recipients (cumulative)"),
            (series("opened", t("opened"), f.open_steps), series("clicked", t("clicked"), f.click_steps)),
            note=t("No opens or clicks recorded yet.") if not (f.open_steps or f.click_steps) else None,
        )
    return ChartData(title, _unit_label(unit, t0), unit, x_max, (delivery, engagement), now_x)


# -- drawing ------------------------------------------------------------------------------------
def draw(data: ChartData, path: Path | BinaryIO) -> None:
    with drawing():
        figure(data).savefig(path, format="png")


@contextmanager
def drawing() -> Iterator[None]:
    """Where a chart is laid out and saved: matplotlib's Agg backend and the report's fonts (rc_context
    changes matplotlib's process-wide rcParams: one drawing at a time; text is laid out when saved, so
    the fonts must hold until then)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    with _DRAWING, matplotlib.rc_context(cast(Any, _fonts())):
        yield


_DRAWING = threading.Lock()


def _fonts() -> dict[str, Any]:
    from matplotlib import font_manager

    families = ["DejaVu Sans"]
    if FONT.exists():  # CJK glyphs (campaign names, the zh_CN labels) fall back to the bundled font
        if FONT_FAMILY not in {f.name for f in font_manager.fontManager.ttflist}:
            font_manager.fontManager.addfont(str(FONT))
        families.append(FONT_FAMILY)
    return {"font.family": families, "axes.unicode_minus": False}


def figure(data: ChartData) -> Figure:
    """The chart as a matplotlib Figure (not yet drawn; `draw` makes it inside `drawing()`, for the
    fonts). Each panel's legend sits right of its plot area, never over it: a small send's cumulative
    lines peak top-left, where a legend inside would hide them."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator

    fig = Figure(figsize=(8, 6.4), dpi=100)
    fig.suptitle(data.title, fontsize=13)
    axes = fig.subplots(len(data.panels), 1)
    for ax, panel in zip(axes, data.panels, strict=True):
        ax.set_title(panel.title, fontsize=11, loc="left")
        ax.set_xlim(-data.x_max * 0.015, data.x_max)  # a count that rose at 0 stays off the axis
        ax.set_xlabel(data.x_label)
        if panel.empty is not None:
            ax.set_yticks([])
            ax.text(0.5, 0.5, panel.empty, ha="center", va="center", transform=ax.transAxes, fontsize=11)
            continue
        ax.set_ylabel(panel.ylabel)
        ax.set_ylim(-panel.y_top * 0.04, panel.y_top)  # a series at 0 stays visible above the axis
        ax.yaxis.set_major_locator(FixedLocator(list(panel.y_ticks)))
        ax.grid(axis="y", alpha=0.3)
        if data.now_x < data.x_max:  # the lines stop at the report time: mark it
            ax.axvline(data.now_x, color="#999999", linewidth=0.8, linestyle=":", zorder=1)
            ax.annotate(
                t("now"),
                (data.now_x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                ha="left",
                va="top",
                fontsize=8,
                color="#666666",
            )
        for s in panel.series:
            ax.step(
                s.xs,
                s.ys,
                where="post",
                color=s.colour,
                linestyle=s.linestyle,
                linewidth=s.linewidth,
                zorder=s.zorder,
                label=s.label,
                marker=None,
            )
            if s.marks:
                mx, my = zip(*s.marks, strict=True)
                ax.plot(mx, my, linestyle="none", marker=s.marker, color=s.colour, zorder=s.zorder + 0.5)
        # The legend's entries show the line and the marker of each series.
        handles = [
            Line2D(
                [],
                [],
                color=s.colour,
                linestyle=cast(Any, s.linestyle),
                linewidth=s.linewidth,
                marker=s.marker,
            )
            for s in panel.series
        ]
        ax.legend(
            handles,
            [s.label for s in panel.series],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),  # right of the plot area: no data is hidden
            fontsize=9,
            ncols=1,
            frameon=False,
            borderaxespad=0.0,
        )
        if panel.note:
            ax.text(
                0.98,
                0.08,
                panel.note,
                ha="right",
                va="bottom",
                transform=ax.transAxes,
                fontsize=10,
                bbox={"facecolor": "white", "edgecolor": "#999999", "alpha": 0.9},
            )
    fig.tight_layout()
    return fig


async def cached_report(ctx: Context, campaign: Campaign) -> Figures:
    """The campaign's figures, built at most once per campaign every report_cache.TTL_S and under its
    render cap: the report page and its chart share one build. Figures hold numbers and times only (the
    words are made in the reader's language when shown), so one build serves every language."""
    return cast(
        Figures, await report_renders(ctx).get(("figures", campaign.id), lambda: build_report(ctx, campaign))
    )


async def chart_png(ctx: Context, campaign: Campaign, figures: Figures) -> bytes:
    """The chart of `figures` as PNG bytes in the current language, drawn in a worker thread at most
    once per (campaign, language, build of the figures) and under the render cap (Busy past it)."""
    data = chart_data(figures)  # here, not in the thread: the labels are in the reader's language

    async def make() -> bytes:
        buffer = io.BytesIO()
        await asyncio.get_running_loop().run_in_executor(None, draw, data, buffer)
        return buffer.getvalue()

    key = ("png", campaign.id, i18n.current(), figures.build)
    return cast(bytes, await report_renders(ctx).get(key, make))


async def render_chart(ctx: Context, campaign: Campaign, figures: Figures) -> Path | None:
    """The chart as a PNG under campaigns.reports_dir; None when matplotlib is missing; Busy when every
    render slot is taken. Written into a temporary file beside it and renamed into place, so a crash
    mid-write never leaves a truncated PNG; report PNGs older than campaigns.report_files_days are
    pruned then."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    png = await chart_png(ctx, campaign, figures)
    folder = Path(ctx.settings.campaigns.reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in campaign.name)[:80]
    now = ctx.now()
    path = (folder / f"{safe}-{now:%Y%m%d-%H%M%S}.png").resolve()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _write_atomically, png, path)
    await loop.run_in_executor(None, prune_reports, folder, now, ctx.settings.campaigns.report_files_days)
    return path


def _write_atomically(png: bytes, path: Path) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temp.write_bytes(png)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


# What the report writer names (render_chart): "<name>-YYYYmmdd-HHMMSS.png", and its temporary files.
_REPORT_FILE = re.compile(r"\.?(?:[^/]{1,80})-(\d{8}-\d{6})\.png(?:\.[0-9a-f]{8}\.tmp)?")


def prune_reports(folder: Path, now: datetime, days: float) -> int:
    """Delete the report PNGs (and left-over temporary files) whose time stamp is older than `days`;
    nothing else in the folder (privacy exports live there too). How many went."""
    gone = 0
    cutoff = now - timedelta(days=days)
    for entry in folder.iterdir():
        found = _REPORT_FILE.fullmatch(entry.name)
        if found is None or not entry.is_file() or entry.is_symlink():
            continue
        try:
            stamp = datetime.strptime(found[1], "%Y%m%d-%H%M%S").replace(tzinfo=now.tzinfo)
        except ValueError:
            continue
        if stamp < cutoff:
            entry.unlink(missing_ok=True)
            gone += 1
    return gone


REPORT_KIND = "r"  # the signed report page's token kind (bot/links.py)
UNSENT = ("draft", "pending_approval", "approved", "scheduled", "rejected")  # states before a first send


async def refuse_unsent(ctx: Context, campaign: Campaign) -> None:
    """Refuse the report of a campaign or automation that never sent: nothing to report, and a report
    of "0 recipients" from now on would only mislead. (An automation edited back to draft after sending
    keeps its report: its history is real.)"""
    if campaign.state not in UNSENT:
        return
    async with ctx.sessions() as session:
        if sum((await service.counts(session, campaign.id)).values()):
            return
    raise Refusal(
        t(
            "“{name}” is {state}; it has no report until it is sent.",
            name=campaign.name.removeprefix(service.AUTOMATION_PREFIX),
            state=state_name(campaign.state),
        )
    )


def report_url(ctx: Context, campaign: Campaign) -> str | None:
    """The signed, expiring report page for `campaign`, in the current language (the requester's: the
    page and its chart speak it; the language is signed with the rest, so it can't be swapped); None
    without web.secret (nothing can be signed)."""
    try:
        token = ctx.signer.sign_expiring(
            REPORT_KIND,
            str(campaign.id),
            i18n.current(),
            ttl_s=int(ctx.settings.campaigns.report_link_hours * 3600),
        )
    except UnsetSecret:
        return None
    return f"{ctx.settings.web.base_url}/report/{token}"


async def report_message(ctx: Context, campaign: Campaign, figures: Figures | None = None) -> Message:
    """The report as a chat answer: the figures as text, the chart as a picture beside it, and a card
    linking the report page."""
    if figures is None:
        figures = await build_report(ctx, campaign)  # whoever asks in chat gets this moment's figures…
        report_renders(ctx).put(("figures", campaign.id), figures)  # …and so does the page they link to
    text = figures.text()
    try:
        chart = await render_chart(ctx, campaign, figures)
    except Busy as exc:  # the chart waits its turn like the page's: the text goes now
        chart = None
        text += "\n" + t(
            "The chart is not attached: too many reports are being drawn right now; try again in "
            "{seconds} s, or open the report page.",
            seconds=exc.retry_after_s,
        )
    url = report_url(ctx, campaign)
    title = t("Report: “{name}”", name=figures.campaign)
    card = (
        Card(
            title=title,
            link=(t("The report with its chart, in a browser"), url),
            footer=t("The link works for {hours} h.", hours=f"{ctx.settings.campaigns.report_link_hours:g}"),
        )
        if url
        else None
    )
    images = (Image(str(chart), title),) if chart else ()
    return Message(text, card=card, images=images)
