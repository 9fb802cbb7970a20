"""The audience review behind /campaign submit and preview (`describe_audience`: counts after consent and
suppression, one sample per attribute set), against the keyset-paged reading it replaced, in the same run.

    python benchmarks/audience_review.py [--recipients 10000,100000] [--database-url URL]

- now: one SELECT read through one cursor in chunks of 1,000 (bot/campaigns/audience.py `_streamed`);
- baseline: the same chunks read as keyset pages (`WHERE id > last ORDER BY id LIMIT 1000`), kept here
  only to measure against: PostgreSQL joined and sorted the audience again for every page.
Both must count the same audience (checked). With --database-url a throwaway PostgreSQL database is made
beside the one named and dropped after. Last line: JSON, one entry per size.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from common import drop_postgres, fresh_folder, fresh_postgres, run_async, seed_campaign, settings_for


async def keyset_total(session: Any, campaign: Any) -> int:
    """The baseline: the list audience in keyset pages, each page's suppressions looked up, and the same
    work per recipient as describe_audience (a Recipient, its attribute set counted)."""
    from sqlalchemy import select

    from bot.campaigns.audience import Recipient, audience_filter, suppressed_among
    from bot.db.models import Contact, ContactList, ListMember

    stmt = (
        select(Contact.id, Contact.email, Contact.name, Contact.attributes)
        .join(ListMember, ListMember.contact_id == Contact.id)
        .join(ContactList, ContactList.id == ListMember.list_id)
        .where(
            ContactList.name == campaign.audience_name,
            Contact.consent_at.is_not(None),
            audience_filter(campaign),
        )
        .order_by(Contact.id)
    )
    total, last_id = 0, 0
    key_sets: dict[frozenset[str], tuple[int, Any]] = {}
    while True:
        rows = (await session.execute(stmt.where(Contact.id > last_id).limit(1000))).all()
        if not rows:
            return total
        last_id = rows[-1].id
        suppressed = await suppressed_among(session, (r.email for r in rows))
        for r in (Recipient(r.email, r.name, dict(r.attributes or {})) for r in rows):  # as describe_audience
            if r.email in suppressed:
                continue
            total += 1
            keys = frozenset(k for k, v in r.attributes.items() if v not in (None, ""))
            if r.name:
                keys = keys | {"name"}
            seen, sample = key_sets.get(keys, (0, r))
            key_sets[keys] = (seen + 1, sample)


async def one_size(folder: Path, url: str, n: int) -> dict[str, Any]:
    from bot.app import build_app
    from bot.campaigns.audience import describe_audience
    from bot.db.models import Campaign

    app = await build_app(settings_for(folder, url, 25))
    try:
        cid = await seed_campaign(app.core, n)
        async with app.core.ctx.sessions() as session:
            campaign = await session.get(Campaign, cid)
            t0 = time.perf_counter()
            report = await describe_audience(session, app.core.ctx.settings, campaign)
            now_s = time.perf_counter() - t0
        async with app.core.ctx.sessions() as session:
            campaign = await session.get(Campaign, cid)
            t0 = time.perf_counter()
            total = await keyset_total(session, campaign)
            old_s = time.perf_counter() - t0
        assert total == report.total == n, (total, report.total, n)
        return {
            "recipients": n,
            "now_s": round(now_s, 3),
            "baseline_s": round(old_s, 3),
            "ratio": round(old_s / now_s, 2),
        }
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", default="10000,100000")
    parser.add_argument(
        "--database-url", default="", help="a PostgreSQL server: a throwaway database beside it"
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.recipients.split(",")]
    results = []
    for n in sizes:
        folder = fresh_folder(f"audience-{n}")
        if args.database_url:
            url = fresh_postgres(args.database_url)
            try:
                figures = run_async(one_size(folder, url, n))
            finally:
                drop_postgres(args.database_url, url)
        else:
            figures = run_async(one_size(folder, f"sqlite+aiosqlite:///{folder / 'postroom.db'}", n))
        kind = "PostgreSQL" if args.database_url else "SQLite"
        print(
            f"{kind}, {n:,} recipients: review {figures['now_s']:.2f} s; keyset pages (baseline) "
            f"{figures['baseline_s']:.2f} s; baseline/now {figures['ratio']:.1f}x"
        )
        results.append(figures)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(json.dumps({"database": "PostgreSQL" if args.database_url else "SQLite", "sizes": results}))


if __name__ == "__main__":
    main()
