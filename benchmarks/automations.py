"""Automations at scale: the daily trigger scan over 100,000 contacts with renewal dates, and the sends it
makes, beside the same engine sending a one-off campaign to a segment of the same contacts.

    python benchmarks/automations.py [--contacts 100000] [--spread-days 60] [--database-url URL]

Each contact has a `renewal_date` spread over the next `--spread-days` days; the automation fires
`renewal_date - 14d` (with the default 3 days' catch-up: four days' worth of contacts are due). The scan is
one INSERT … SELECT over the list (set-based); the rescan — the same day again, or after a restart — must
find nothing new. The sends go through the delivery engine to a loopback sink (Postfix's smtp-sink when
installed). Baseline: the engine sending a campaign to `renewal_date` in the same days (a segment), which
snapshots and sends the same number of messages. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, date, datetime, timedelta

from common import Sink, count, drop_postgres, fresh_folder, fresh_postgres, run_async, settings_for

TODAY = date(2027, 3, 1)


async def main_run(folder, url: str, port: int, contacts: int, spread: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert, select

    from bot.app import build_app
    from bot.campaigns import service
    from bot.campaigns.engine import DeliveryEngine
    from bot.db.models import Approval, Automation, Campaign, Contact, ContactList, Delivery, ListMember

    settings = settings_for(folder, url, port, connections=4, batch_size=1000)
    app = await build_app(settings)
    ctx = app.ctx
    now = datetime(TODAY.year, TODAY.month, TODAY.day, 6, 0, tzinfo=UTC)
    ctx.clock = lambda: now
    try:
        async with ctx.sessions() as session, session.begin():
            lst = ContactList(name="customers")
            session.add(lst)
            await session.flush()
            for start in range(0, contacts, 5000):
                rows = [
                    {
                        "id": i + 1,
                        "email": f"person{i:07d}@d{i % 50}.example",
                        "name": f"Person{i} Example",
                        "attributes": {
                            "city": ("Berlin", "Lisbon", "Austin")[i % 3],
                            "ref": f"R{i:08d}",
                            "renewal_date": (TODAY + timedelta(days=i % spread)).isoformat(),
                        },
                        "consent_at": now - timedelta(days=30),
                        "consent_source": "benchmark",
                        "created_at": now - timedelta(days=30),
                        "updated_at": now,
                    }
                    for i in range(start, min(contacts, start + 5000))
                ]
                await session.execute(insert(Contact), rows)
                await session.execute(
                    insert(ListMember), [{"list_id": lst.id, "contact_id": r["id"]} for r in rows]
                )
        shown = await app.automations.create(
            "renew",
            on="renewal_date - 14d",
            template="news",
            subject="Your renewal, {{ first_name }}",
            delay=None,
            to="customers",
            where=None,
            cap="1000000",
            tracking=True,
            actor="sam@corp.example",
            via="bench",
        )

        async def approve(campaign_id: int) -> None:
            async with ctx.sessions() as session, session.begin():
                c = await session.get(Campaign, campaign_id)
                assert c is not None
                digest = service.current_hash(ctx, c)
                c.content_hash, c.state, c.submitted_by = digest, "approved", "sam@corp.example"
                session.add(
                    Approval(
                        campaign_id=c.id,
                        approver="maria@corp.example",
                        decision="approved",
                        content_hash=digest,
                        expires_at=now + timedelta(days=365),
                    )
                )

        await approve(shown.campaign.id)
        engine = DeliveryEngine(ctx)
        assert await engine.start(shown.campaign.id) == "sending"
        # Move today 14 days on, so that renewal dates from TODAY+14 on come due (plus catch-up).
        now = now + timedelta(days=14 + ctx.settings.automations.catch_up_days)
        t0 = time.perf_counter()
        made = await app.automations.scan_one("renew")
        scan_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = await app.automations.scan_one("renew")
        rescan_s = time.perf_counter() - t0
        assert again == 0, again
        t0 = time.perf_counter()
        result = await DeliveryEngine(ctx).run(shown.campaign.id)
        send_s = time.perf_counter() - t0
        async with ctx.sessions() as session:
            sent = (
                await session.execute(
                    select(Delivery.id).where(
                        Delivery.campaign_id == shown.campaign.id, Delivery.status == "sent"
                    )
                )
            ).all()
        assert result.state == "idle" and len(sent) == made, (result, len(sent), made)

        # Baseline: a one-off campaign to a segment of the same contacts, through the same engine.
        hi = (now.date() + timedelta(days=14)).isoformat()
        lo = (now.date() + timedelta(days=14 - ctx.settings.automations.catch_up_days)).isoformat()
        async with ctx.sessions() as session, session.begin():
            campaign = Campaign(
                name="baseline",
                template="news",
                subject="Your renewal, {{ first_name }}",
                audience_kind="list",
                audience_name="customers",
                audience_where=f'renewal_date >= "{lo}" and renewal_date <= "{hi}"',
                from_address="news@corp.example",
                from_name="Example Corp",
                created_by="sam@corp.example",
            )
            session.add(campaign)
            await session.flush()
            baseline_id = campaign.id
        await approve(baseline_id)
        t0 = time.perf_counter()
        engine = DeliveryEngine(ctx)
        assert await engine.start(baseline_id) == "sending"
        done = await engine.run(baseline_id)
        baseline_s = time.perf_counter() - t0
        assert done.state == "completed", done
        async with ctx.sessions() as session:
            baseline_sent = (await service.counts(session, baseline_id)).get("sent", 0)
        _ = Automation  # the automation row is read by scan_one
    finally:
        await app.close()
    return {
        "contacts": contacts,
        "due": made,
        "scan_s": round(scan_s, 3),
        "rescan_s": round(rescan_s, 3),
        "send_s": round(send_s, 3),
        "messages_per_s": round(made / send_s, 1) if send_s else 0.0,
        "baseline_messages": baseline_sent,
        "baseline_messages_per_s": round(baseline_sent / baseline_s, 1) if baseline_s else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="automations.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=count, default=100_000)
    parser.add_argument(
        "--spread-days", type=count, default=60, help="renewal dates spread over this many days"
    )
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    folder = fresh_folder("automations")
    url = args.database_url or f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    throwaway = fresh_postgres(url) if url.startswith("postgres") else None
    try:
        with Sink() as sink:
            figures = run_async(
                main_run(folder, throwaway or url, sink.port, args.contacts, args.spread_days)
            )
    finally:
        if throwaway is not None:
            drop_postgres(url, throwaway)
    figures["sink"] = sink.kind
    figures["database"] = "postgresql" if throwaway else "sqlite"
    print(
        f"{figures['contacts']:,} contacts; the daily scan made {figures['due']:,} reminders in {figures['scan_s']} s "
        f"(target < 5 s); the same scan again made none in {figures['rescan_s']} s"
    )
    print(
        f"sent {figures['due']:,} in {figures['send_s']} s = {figures['messages_per_s']:,} msg/s; baseline, the engine "
        f"sending a campaign to the same segment: {figures['baseline_messages_per_s']:,} msg/s ({sink.kind})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
