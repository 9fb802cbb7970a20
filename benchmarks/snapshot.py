"""The send snapshot: a campaign's audience written as delivery rows when sending starts.

    python benchmarks/snapshot.py [--recipients 10000,100000] [--old-max 100000] [--database-url URL]

For each size, a fresh database (SQLite in a file, or a throwaway PostgreSQL database beside the one
named) gets that many consented contacts in one list, 1% of them suppressed (half of those erased: the
suppression keeps only the address's hash). Two campaigns to the list, in the same run:

- old: what the engine did before, kept here as the baseline — `stream_audience` (keyset chunks of 1,000
  from `stream_candidates`, each checked against the suppressions) and an `insert` per chunk;
- new: `snapshot_deliveries`, one INSERT … SELECT; and, for the figure a sender sees, the engine's
  `start` (approval check, snapshot, state change, audit, one transaction).

Both must write the same rows (checked). The old path is skipped above `--old-max` recipients (it grows
with the square of the list on PostgreSQL). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import drop_postgres, fresh_folder, fresh_postgres, run_async, seed_campaign, settings_for


def sizes(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"“{text}” is not a list of counts; give them like 10000,100000."
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("give one or more counts of 1 or more, like 10000,100000.")
    return values


async def old_snapshot(session: Any, settings: Any, campaign: Any) -> None:
    """The engine's snapshot before the INSERT … SELECT (main at 102dfd8), verbatim."""
    from sqlalchemy import insert

    from bot.campaigns.audience import stream_audience
    from bot.db.models import Delivery

    async for chunk in stream_audience(session, settings, campaign):
        await session.execute(
            insert(Delivery),
            [
                {
                    "campaign_id": campaign.id,
                    "email": r.email,
                    "name": r.name,
                    "attributes": r.attributes,
                    "status": "pending",
                    "attempts": 0,
                }
                for r in chunk
            ],
        )


async def one_size(folder: Path, url: str, n: int, with_old: bool) -> dict[str, Any]:
    from sqlalchemy import func, insert, select

    from bot.addresses import email_hash
    from bot.app import build_app
    from bot.campaigns.audience import snapshot_deliveries
    from bot.campaigns.engine import DeliveryEngine
    from bot.db.models import Campaign, Delivery, Suppression

    settings = settings_for(folder, url, 25)
    app = await build_app(settings)
    ctx = app.ctx
    figures: dict[str, Any] = {"recipients": n}
    try:
        t0 = time.perf_counter()
        old_id = await seed_campaign(app.core, n, name="old")
        new_id = await seed_campaign(app.core, n, name="new")
        start_id = await seed_campaign(app.core, n, name="start")
        async with ctx.sessions() as session, session.begin():
            rows = []
            for i in range(0, n, 100):
                email = f"person{i:07d}@d{i % 50}.example"
                erased = i % 200 == 0
                rows.append(
                    {"email_hash": email_hash(email), "email": None if erased else email, "reason": "manual"}
                )
            await session.execute(insert(Suppression), rows)
        figures["seed_s"] = round(time.perf_counter() - t0, 1)
        expected = n - len(rows)

        async def timed(campaign_id: int, how: Any) -> float:
            async with ctx.sessions() as session, session.begin():
                campaign = await session.get(Campaign, campaign_id)
                started = time.perf_counter()
                await how(session, settings, campaign)
            return time.perf_counter() - started

        async def written(campaign_id: int) -> list[tuple[str, str | None, Any]]:
            async with ctx.sessions() as session:
                return [
                    tuple(r)
                    for r in await session.execute(
                        select(Delivery.email, Delivery.name, Delivery.attributes)
                        .where(Delivery.campaign_id == campaign_id)
                        .order_by(Delivery.id)
                    )
                ]

        figures["new_s"] = round(await timed(new_id, snapshot_deliveries), 3)
        new_rows = await written(new_id)
        assert len(new_rows) == expected, (len(new_rows), expected)
        if with_old:
            figures["old_s"] = round(await timed(old_id, old_snapshot), 3)
            old_rows = await written(old_id)
            assert old_rows == new_rows, "the old and the new snapshot wrote different rows"
            figures["speedup"] = round(figures["old_s"] / figures["new_s"], 1)
        engine = DeliveryEngine(ctx, worker_id="bench")
        started = time.perf_counter()
        state = await engine.start(start_id)
        figures["start_s"] = round(time.perf_counter() - started, 3)
        assert state == "sending", state
        async with ctx.sessions() as session:
            count = (
                await session.execute(select(func.count()).where(Delivery.campaign_id == start_id))
            ).scalar_one()
        assert count == expected, (count, expected)
        figures["rows"] = expected
    finally:
        await app.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1].strip())
    parser.add_argument("--recipients", type=sizes, default=[10_000, 100_000])
    parser.add_argument("--old-max", type=int, default=100_000, help="skip the old path above this size")
    parser.add_argument(
        "--database-url", default=None, help="PostgreSQL (a throwaway database is made beside it)"
    )
    args = parser.parse_args()
    database = "postgresql" if args.database_url and args.database_url.startswith("postgres") else "sqlite"
    results = []
    for n in args.recipients:
        folder = fresh_folder(f"snapshot-{n}")
        if database == "postgresql":
            url = fresh_postgres(args.database_url)
        else:
            url = f"sqlite+aiosqlite:///{folder / 'postroom.db'}"
        try:
            figures = run_async(one_size(folder, url, n, n <= args.old_max))
        finally:
            if database == "postgresql":
                drop_postgres(args.database_url, url)
        results.append(figures)
        old = (
            f"old {figures['old_s']:.3f} s ({n / figures['old_s']:,.0f} rows/s) → {figures['speedup']}×"
            if "old_s" in figures
            else "old skipped (--old-max)"
        )
        print(
            f"{database} {n:,} recipients ({figures['rows']:,} rows after 1% suppressed): "
            f"new {figures['new_s']:.3f} s ({n / figures['new_s']:,.0f} rows/s), {old}; "
            f"engine start (approval check + snapshot + state, one transaction) {figures['start_s']:.3f} s",
            flush=True,
        )
    print(json.dumps({"database": database, "sizes": results}))


if __name__ == "__main__":
    main()
