"""What building a campaign report costs (issue 15 review): the report counted in the database
(`bot.campaigns.report.build_report`: the time series bucketed by SQL, the last campaigns to the list in
one statement) beside, in the same run, the way it was counted before (`old_build_report` below, kept
only here as the baseline: every sent, open and click row loaded into Python, three queries per earlier
campaign).

A campaign of `--deliveries` (100,000 unless given) is written straight into the database with bulk
inserts: opens from a third of them (and a second open from some), clicks from a tenth, some bounced at
RCPT and later, complaints and unsubscribes over two days; plus three earlier campaigns to the same list
(2,000 deliveries each); then ANALYZE, as autovacuum would. Each way builds the report `--repeat` times (3 unless given): the best time,
and the peak of Python memory (tracemalloc) in one more build. The two ways' figures are compared too
(totals, by-day counts, bounce classes, links, the earlier campaigns; each bucketed point on the exact
curve).

    .venv/bin/python benchmarks/report_build.py [--deliveries 100000] [--repeat 3] [--database-url URL]

SQLite in a fresh file unless --database-url names a PostgreSQL server (a throwaway database is made
beside the one named, and dropped). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import tracemalloc
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import distinct, exists, func, insert, select, text  # noqa: E402

from benchmarks.common import count, drop_postgres, fresh_folder, fresh_postgres  # noqa: E402
from bot.addresses import email_hash  # noqa: E402
from bot.campaigns import service  # noqa: E402
from bot.campaigns.report import LINKS_SHOWN, PREVIOUS_SHOWN, Figures, bounce_class, build_report  # noqa: E402
from bot.db.models import Campaign, CampaignEvent, Delivery, Suppression  # noqa: E402

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=4)
EARLIER = 3
EARLIER_DELIVERIES = 2000
CHUNK = 10_000


# -- the baseline: the report as it was counted before ------------------------------------------------
@dataclass
class OldEarlier:
    name: str
    started_at: datetime
    delivered: int
    opens: int
    clicks: int


@dataclass
class OldFigures:
    campaign: str
    state: str
    tracking: bool
    automation: bool
    audience: str
    started_at: datetime | None
    finished_at: datetime | None
    now: datetime
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
    suppressed_before: int = 0
    sent_times: list[datetime] = field(default_factory=list)
    open_times: list[datetime] = field(default_factory=list)
    click_times: list[datetime] = field(default_factory=list)
    bounce_times: list[datetime] = field(default_factory=list)
    unsubscribe_times: list[datetime] = field(default_factory=list)
    complaint_times: list[datetime] = field(default_factory=list)
    bounce_classes: dict[tuple[str, str], int] = field(default_factory=dict)
    links: list[tuple[str, int, int]] = field(default_factory=list)
    earlier: list[OldEarlier] = field(default_factory=list)


async def old_build_report(ctx: Any, campaign: Campaign) -> OldFigures:
    """The report's figures as counted before (ed07b97): every sent, open and click row of the campaign
    loaded into Python, and three queries per earlier campaign. Kept here only, as the baseline."""
    f = OldFigures(
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
            (
                await session.execute(
                    select(func.count(distinct(CampaignEvent.delivery_id))).where(
                        CampaignEvent.campaign_id == cid, CampaignEvent.kind.in_(("open", "click"))
                    )
                )
            ).scalar_one()
        )
        f.delivered = max(0, f.sent - late_hard)
        unsubscribed = (
            await session.execute(
                select(Suppression.created_at)
                .where(
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
                .order_by(Suppression.created_at)
            )
        ).scalars()
        f.unsubscribe_times = list(unsubscribed)
        f.unsubscribes = len(f.unsubscribe_times)
        f.sent_times = list(
            (
                await session.execute(
                    select(Delivery.sent_at)
                    .where(
                        Delivery.campaign_id == cid, Delivery.status == "sent", Delivery.sent_at.is_not(None)
                    )
                    .order_by(Delivery.sent_at)
                )
            ).scalars()
        )
        firsts: dict[str, list[datetime]] = {}
        for kind in ("open", "click", "complaint", "hard_bounce", "soft_bounce"):
            kinds = ("open", "click") if kind == "open" else (kind,)  # opened: the first open or click
            first = (
                select(func.min(CampaignEvent.at))
                .where(CampaignEvent.campaign_id == cid, CampaignEvent.kind.in_(kinds))
                .group_by(CampaignEvent.delivery_id)
            )
            firsts[kind] = sorted((await session.execute(first)).scalars())
        f.open_times, f.click_times, f.complaint_times = firsts["open"], firsts["click"], firsts["complaint"]
        refused = (
            await session.execute(
                select(Delivery.claimed_at, Delivery.last_error).where(
                    Delivery.campaign_id == cid, Delivery.status == "bounced"
                )
            )
        ).all()
        f.bounce_times = sorted(
            [at for at, _ in refused if at is not None] + firsts["hard_bounce"] + firsts["soft_bounce"]
        )
        classes: Counter[tuple[str, str]] = Counter(("hard", bounce_class("hard", err)) for _, err in refused)
        for kind, detail in (
            await session.execute(
                select(CampaignEvent.kind, CampaignEvent.detail).where(
                    CampaignEvent.campaign_id == cid, CampaignEvent.kind.in_(("hard_bounce", "soft_bounce"))
                )
            )
        ).all():
            classes[(kind.removesuffix("_bounce"), bounce_class(kind, detail))] += 1
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
            earlier = (
                await session.execute(
                    select(Campaign)
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
            ).scalars()
            for other in earlier:
                sent = (await service.counts(session, other.id)).get("sent", 0)
                got = dict(
                    (
                        await session.execute(
                            select(CampaignEvent.kind, func.count(distinct(CampaignEvent.delivery_id)))
                            .where(CampaignEvent.campaign_id == other.id)
                            .group_by(CampaignEvent.kind)
                        )
                    ).all()
                )
                assert other.started_at is not None
                opened = (
                    await session.execute(
                        select(func.count(distinct(CampaignEvent.delivery_id))).where(
                            CampaignEvent.campaign_id == other.id, CampaignEvent.kind.in_(("open", "click"))
                        )
                    )
                ).scalar_one()
                f.earlier.append(
                    OldEarlier(
                        other.name,
                        other.started_at,
                        max(0, sent - got.get("hard_bounce", 0)),
                        int(opened),
                        got.get("click", 0),
                    )
                )
    return f


# -- the data ---------------------------------------------------------------------------------------
async def seed(ctx: Any, name: str, started: datetime, deliveries: int) -> Campaign:
    async with ctx.sessions() as session, session.begin():
        campaign = Campaign(
            name=name,
            state="completed",
            template="welcome",
            subject="Hi",
            audience_kind="list",
            audience_name="customers",
            from_address="news@corp.example",
            created_by="marketing@corp.example",
            started_at=started,
            finished_at=started + timedelta(hours=2),
        )
        session.add(campaign)
        await session.flush()
        cid = campaign.id
        rows = []
        for i in range(deliveries):
            bounced = i % 97 == 5
            at = started + timedelta(seconds=i * 7200 / deliveries)
            rows.append(
                {
                    "campaign_id": cid,
                    "email": f"{name}{i}@example.com",
                    "status": "bounced" if bounced else "sent",
                    "sent_at": None if bounced else at,
                    "claimed_at": at,
                    "last_error": f"550 5.1.1 <{name}{i}@example.com> user unknown" if bounced else None,
                    "attributes": {},
                }
            )
        for k in range(0, len(rows), CHUNK):
            await session.execute(insert(Delivery), rows[k : k + CHUNK])
        sent = (
            await session.execute(
                select(Delivery.id, Delivery.email, Delivery.sent_at)
                .where(Delivery.campaign_id == cid, Delivery.status == "sent")
                .order_by(Delivery.id)
            )
        ).all()
        events: list[dict[str, Any]] = []
        suppressions: list[dict[str, Any]] = []
        for n, (did, email, sent_at) in enumerate(sent):
            late = sent_at + timedelta(hours=1 + n % 40, seconds=n % 13)
            hashed = email_hash(email)

            def add(
                kind: str, at: datetime, detail: str | None = None, did: int = did, hashed: str = hashed
            ) -> None:
                events.append(
                    {
                        "campaign_id": cid,
                        "delivery_id": did,
                        "email_hash": hashed,
                        "kind": kind,
                        "detail": detail,
                        "at": at,
                    }
                )

            if n % 3 == 0:
                add("open", late)
                if n % 2:
                    add("open", late + timedelta(hours=5))
            if n % 10 == 0:
                add("click", late + timedelta(minutes=1), f"https://corp.example/offer/{n % 7}")
            if n % 211 == 7:
                add("hard_bounce", late, "5.2.1 mailbox disabled")
            if n % 307 == 11:
                add("soft_bounce", late, "4.2.2 mailbox full")
            if n % 151 == 3:
                add("complaint", late + timedelta(hours=20))
            if n % 101 == 1:
                suppressions.append(
                    {
                        "email_hash": hashed,
                        "email": email,
                        "reason": "unsubscribed",
                        "campaign_id": cid,
                        "created_at": sent_at + timedelta(hours=n % 50),
                    }
                )
        for k in range(0, len(events), CHUNK):
            await session.execute(insert(CampaignEvent), events[k : k + CHUNK])
        for k in range(0, len(suppressions), CHUNK):
            await session.execute(insert(Suppression), suppressions[k : k + CHUNK])
    return campaign


# -- the run ----------------------------------------------------------------------------------------
def agree(new: Figures, old: OldFigures) -> list[str]:
    """Where the two ways' figures differ (nothing: they agree)."""
    differ = [
        name
        for name in (
            "recipients", "sent", "delivered", "hard_bounces", "soft_bounces", "unsubscribes", "complaints",
            "opens", "clicks", "statuses", "suppressed_before", "bounce_classes", "links",
        )
        if getattr(new, name) != getattr(old, name)
    ]  # fmt: skip
    if [(e.name, e.started_at, e.delivered, e.opens, e.clicks) for e in new.earlier] != [
        (e.name, e.started_at, e.delivered, e.opens, e.clicks) for e in old.earlier
    ]:
        differ.append("earlier")
    days: dict[Any, list[int]] = {}
    for n, times in enumerate((old.unsubscribe_times, old.complaint_times)):
        for at in times:
            days.setdefault(at.date(), [0, 0])[n] += 1
    if new.by_day != [(d, u, c) for d, (u, c) in sorted(days.items())]:
        differ.append("by_day")
    for name in ("sent", "open", "click", "bounce", "unsubscribe", "complaint"):
        counted, exact = getattr(new, f"{name}_steps"), sorted(getattr(old, f"{name}_times"))
        last = counted[-1][1] if counted else 0
        if last != len(exact) or any(n != bisect_right(exact, at) for at, n in counted):
            differ.append(f"{name} curve")
    return differ


async def timed(build: Any, ctx: Any, campaign: Campaign, repeat: int) -> tuple[Any, float, float]:
    """The figures, the best of `repeat` builds' times (s), and one more build's peak Python memory (MB)."""
    best = float("inf")
    figures = None
    for _ in range(repeat):
        start = time.perf_counter()
        figures = await build(ctx, campaign)
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    try:
        await build(ctx, campaign)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return figures, best, peak / 1e6


async def run(url: str, folder: Path, deliveries: int, repeat: int) -> dict[str, Any]:
    from bot.app import build_app
    from tests.conftest import make_settings

    app = await build_app(make_settings(url, 2525, folder))
    ctx = app.ctx
    try:
        ctx.clock = lambda: NOW
        seed_start = time.perf_counter()
        for k in range(EARLIER):
            await seed(ctx, f"earlier{k}", T0 - timedelta(days=30 * (EARLIER - k)), EARLIER_DELIVERIES)
        campaign = await seed(ctx, "bulk", T0, deliveries)
        seeded_s = time.perf_counter() - seed_start
        # The planner's statistics, as autovacuum keeps them on a real database: straight after a bulk
        # load PostgreSQL has none and checks each unsubscribe against every delivery (~9 s either way).
        async with ctx.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()
        old, old_s, old_mb = await timed(old_build_report, ctx, campaign, repeat)
        new, new_s, new_mb = await timed(build_report, ctx, campaign, repeat)
    finally:
        await app.close()
    differ = agree(new, old)
    return {
        "benchmark": "report_build",
        "deliveries": deliveries,
        "opens": new.opens,
        "clicks": new.clicks,
        "earlier_campaigns": len(new.earlier),
        "seed_s": round(seeded_s, 1),
        "new_s": round(new_s, 3),
        "new_peak_mb": round(new_mb, 2),
        "old_s": round(old_s, 3),
        "old_peak_mb": round(old_mb, 2),
        "speedup": round(old_s / new_s, 1),
        "sent_points": {"new": len(new.sent_steps), "old": len(old.sent_times)},
        "agree": not differ,
        "differ": differ,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="report_build.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--deliveries", type=count, default=100_000, help="messages in the campaign")
    parser.add_argument("--repeat", type=count, default=3, help="builds per way (the best time counts)")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    folder = fresh_folder("report_build")
    url = args.database_url or f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    throwaway = fresh_postgres(url) if url.startswith("postgres") else None
    try:
        figures = asyncio.run(run(throwaway or url, folder, args.deliveries, args.repeat))
    finally:
        if throwaway is not None:
            drop_postgres(url, throwaway)
    figures["database"] = "postgresql" if throwaway else "sqlite"
    print(
        f"a report on {figures['deliveries']:,} deliveries ({figures['opens']:,} opened, {figures['clicks']:,} "
        f"clicked, {figures['earlier_campaigns']} earlier campaigns to the list), {figures['database']}:"
    )
    print(f"  counted in the database: {figures['new_s']} s, peak Python memory {figures['new_peak_mb']} MB")
    print(
        f"  baseline, rows loaded into Python: {figures['old_s']} s, peak Python memory {figures['old_peak_mb']} MB"
    )
    print(
        f"  {figures['speedup']}x faster; sent series {figures['sent_points']['new']} points (was "
        f"{figures['sent_points']['old']:,}); the two agree: {figures['agree']}"
        + (f" (differ: {', '.join(figures['differ'])})" if figures["differ"] else "")
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
