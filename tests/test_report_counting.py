"""The campaign report is counted by the database (issue 15 review): its time series come back
bucketed (at most BUCKETS + 1 points per series, however large the campaign), every point lies on the
exact cumulative curve, the by-day counts and totals are exact, and the last campaigns to the same
list are counted in one statement — the same on SQLite and PostgreSQL."""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, insert, select

from bot.addresses import email_hash
from bot.campaigns.report import BUCKETS, Steps, build_report
from bot.db.models import Campaign, CampaignEvent, Delivery, Suppression
from tests.conftest import SENDER

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
N = 3000


async def seed(
    bot, name: str, started: datetime, deliveries: int
) -> tuple[Campaign, dict[str, list[datetime]]]:  # type: ignore[no-untyped-def]
    """A sent campaign written straight into the database, and the exact times of each series."""
    times: dict[str, list[datetime]] = {
        k: [] for k in ("sent", "open", "click", "bounce", "unsub", "complaint")
    }
    async with bot.core.ctx.sessions() as session, session.begin():
        campaign = Campaign(
            name=name,
            state="completed",
            template="welcome",
            subject="Hi",
            audience_kind="list",
            audience_name="customers",
            from_address=SENDER,
            created_by=SENDER,
            started_at=started,
            finished_at=started + timedelta(hours=2),
        )
        session.add(campaign)
        await session.flush()
        rows = []
        for i in range(deliveries):
            bounced = i % 97 == 5
            at = started + timedelta(seconds=i * 7200 / deliveries, microseconds=i % 1000)
            rows.append(
                {
                    "campaign_id": campaign.id,
                    "email": f"{name}{i}@example.com",
                    "status": "bounced" if bounced else "sent",
                    "sent_at": None if bounced else at,
                    "claimed_at": at,
                    "last_error": "550 5.1.1 user unknown" if bounced else None,
                    "attributes": {},
                }
            )
            (times["bounce"] if bounced else times["sent"]).append(at)
        await session.execute(insert(Delivery), rows)
        ids = (
            await session.execute(
                select(Delivery.id, Delivery.email, Delivery.sent_at)
                .where(Delivery.campaign_id == campaign.id, Delivery.status == "sent")
                .order_by(Delivery.id)
            )
        ).all()
        events, suppressions = [], []
        for n, (did, email, sent_at) in enumerate(ids):
            late = sent_at + timedelta(hours=1 + n % 40, seconds=n % 13)

            def add(
                kind: str, at: datetime, detail: str | None = None, did: int = did, email: str = email
            ) -> None:
                events.append(
                    {
                        "campaign_id": campaign.id,
                        "delivery_id": did,
                        "email_hash": email_hash(email),
                        "kind": kind,
                        "detail": detail,
                        "at": at,
                    }
                )

            if n % 3 == 0:
                add("open", late)
                add("open", late + timedelta(hours=5))  # a second open: the first one counts
                times["open"].append(late)
            if n % 10 == 0:
                add("click", late + timedelta(minutes=1), f"https://corp.example/offer/{n % 7}")
                times["click"].append(late + timedelta(minutes=1))
                if n % 3:  # a click without an image load is an open too
                    times["open"].append(late + timedelta(minutes=1))
            if n % 211 == 7:
                add("hard_bounce", late, "5.2.1 mailbox disabled")
                times["bounce"].append(late)
            if n % 151 == 3:
                add("complaint", late + timedelta(hours=20))
                times["complaint"].append(late + timedelta(hours=20))
            if n % 101 == 1:
                at = sent_at + timedelta(hours=n % 50)
                suppressions.append(
                    {
                        "email_hash": email_hash(email),
                        "email": email,
                        "reason": "unsubscribed",
                        "campaign_id": campaign.id,
                        "created_at": at,
                    }
                )
                times["unsub"].append(at)
        await session.execute(insert(CampaignEvent), events)
        await session.execute(insert(Suppression), suppressions)
    return campaign, times


def on_the_exact_curve(counted: Steps, exact: list[datetime]) -> None:
    exact = sorted(exact)
    assert len(counted) <= BUCKETS + 1
    assert (counted[-1][1] if counted else 0) == len(exact)
    for at, n in counted:  # the count by each point is the exact count by then
        assert n == bisect_right(exact, at), (at, n)
    assert [n for _, n in counted] == sorted({n for _, n in counted})  # rising


async def test_a_big_campaign_is_counted_in_the_database_and_its_curves_lie_on_the_exact_ones(bot) -> None:  # type: ignore[no-untyped-def]
    bot.core.ctx.clock = lambda: T0 + timedelta(days=3)
    campaign, times = await seed(bot, "bulk", T0, N)
    f = await build_report(bot.core.ctx, campaign)
    assert f.sent == len(times["sent"]) and f.first_sent_at == min(times["sent"])
    assert f.opens == len(times["open"]) and f.clicks == len(times["click"])
    assert f.complaints == len(times["complaint"]) and f.unsubscribes == len(times["unsub"])
    for counted, exact in (
        (f.sent_steps, times["sent"]),
        (f.open_steps, times["open"]),
        (f.click_steps, times["click"]),
        (f.bounce_steps, times["bounce"]),
        (f.unsubscribe_steps, times["unsub"]),
        (f.complaint_steps, times["complaint"]),
    ):
        on_the_exact_curve(counted, exact)
    assert len(f.sent_steps) < len(times["sent"])  # bucketed, not a point per recipient
    days: dict[object, list[int]] = {}
    for n, kind in enumerate(("unsub", "complaint")):
        for at in times[kind]:
            days.setdefault(at.date(), [0, 0])[n] += 1
    assert f.by_day == [(d, u, c) for d, (u, c) in sorted(days.items())]
    bounced = len([i for i in range(N) if i % 97 == 5])
    assert f.bounce_classes == {
        ("hard", "address"): bounced,
        ("hard", "mailbox"): len(times["bounce"]) - bounced,
    }
    assert sum(people for _, people, _ in f.links) == f.clicks and len(f.links) == 7


async def test_the_last_campaigns_to_the_list_are_counted_in_one_statement(bot) -> None:  # type: ignore[no-untyped-def]
    ctx = bot.core.ctx
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    earlier = []
    for k in range(3):
        campaign, times = await seed(bot, f"c{k}", T0 + timedelta(days=10 * k), 60)
        earlier.append((campaign, times))
    last, _ = earlier[-1]
    first, _ = earlier[1]
    event.listen(ctx.engine.sync_engine, "before_cursor_execute", seen)
    try:
        one = await build_report(ctx, first)  # one campaign to the list before it
        with_one = len(statements)
        statements.clear()
        two = await build_report(ctx, last)  # two before it
        with_two = len(statements)
    finally:
        event.remove(ctx.engine.sync_engine, "before_cursor_execute", seen)
    assert [e.name for e in one.earlier] == ["c0"] and [e.name for e in two.earlier] == ["c1", "c0"]
    assert with_two == with_one  # not 3 more statements per earlier campaign
    _, c1 = earlier[1]
    e = two.earlier[0]
    hard = len([1 for n in range(60 - len([i for i in range(60) if i % 97 == 5])) if n % 211 == 7])
    assert (e.delivered, e.opens, e.clicks) == (len(c1["sent"]) - hard, len(c1["open"]), len(c1["click"]))
