"""Does `/healthz` keep answering while many people open a big campaign's report chart?

`postroom serve`'s web app (uvicorn on loopback, SQLite) with a sent campaign written straight into
the database: `--deliveries` sent messages (60,000 unless given), opens from a third of them and clicks
from a tenth. `--concurrent` clients (20 unless given) each GET `<report link>/chart.png` at once, while
another client asks GET /healthz every 20 ms and records each answer's time. Figures: /healthz's
median and worst answer while the charts were asked for, how the chart requests were answered (200,
or 503 past the render cap), how long the burst took, and the process' peak memory.

    .venv/bin/python benchmarks/report_load.py [--deliveries 60000] [--concurrent 20]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from benchmarks.common import count  # noqa: E402
from bot.addresses import email_hash  # noqa: E402
from bot.app import Runtime, build_app  # noqa: E402
from bot.campaigns.report import REPORT_KIND  # noqa: E402
from bot.db.models import Campaign, CampaignEvent, Delivery  # noqa: E402
from tests.conftest import SENDER, make_settings  # noqa: E402
from tests.smtp import free_port  # noqa: E402

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def poll_healthz(base: str, stop: threading.Event, samples: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=120) as http:
        while not stop.is_set():
            start = time.perf_counter()
            http.get("/healthz")
            samples.append(time.perf_counter() - start)
            time.sleep(0.02)


async def seed(core, deliveries: int) -> int:  # type: ignore[no-untyped-def]
    async with core.ctx.sessions() as session, session.begin():
        campaign = Campaign(
            name="bulk",
            state="completed",
            template="welcome",
            subject="Hi",
            audience_kind="list",
            audience_name="customers",
            from_address=SENDER,
            created_by=SENDER,
            started_at=T0,
            finished_at=T0 + timedelta(hours=2),
        )
        session.add(campaign)
        await session.flush()
        cid = campaign.id
        await session.execute(
            insert(Delivery),
            [
                {
                    "campaign_id": cid,
                    "email": f"p{i}@example.com",
                    "status": "sent",
                    "sent_at": T0 + timedelta(seconds=i * 7200 / deliveries),
                    "attributes": {},
                }
                for i in range(deliveries)
            ],
        )
        ids = (await session.execute(Delivery.__table__.select().with_only_columns(Delivery.id))).scalars()
        rows = []
        for n, did in enumerate(ids):
            if n % 3 == 0:
                rows.append((did, n, "open", None))
            if n % 10 == 0:
                rows.append((did, n, "click", f"https://corp.example/offer/{n % 7}"))
        await session.execute(
            insert(CampaignEvent),
            [
                {
                    "campaign_id": cid,
                    "delivery_id": did,
                    "email_hash": email_hash(f"p{n}@example.com"),
                    "kind": kind,
                    "detail": detail,
                    "at": T0 + timedelta(hours=3, seconds=n),
                }
                for did, n, kind, detail in rows
            ],
        )
    return cid


async def main(deliveries: int, concurrent: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        settings = make_settings(
            f"sqlite+aiosqlite:///{folder / 'bench.db'}", 2525, folder, web={"port": port}
        )
        core = await build_app(settings)
        runtime = Runtime(core)
        cid = await seed(core, deliveries)
        token = core.ctx.signer.sign_expiring(REPORT_KIND, str(cid), ttl_s=3600)
        await runtime.start_web("127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        samples: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll_healthz, args=(base, stop, samples))
        try:
            async with httpx.AsyncClient(base_url=base, timeout=300) as http:
                await http.get("/healthz")
                poller.start()
                await asyncio.sleep(0.3)
                start = time.perf_counter()
                got = await asyncio.gather(
                    *(http.get(f"/report/{token}/chart.png") for _ in range(concurrent))
                )
                burst_s = time.perf_counter() - start
                await asyncio.sleep(0.3)
        finally:
            stop.set()
            if poller.is_alive():
                poller.join()
            await runtime.stop()
    statuses = Counter(r.status_code for r in got)
    result = {
        "benchmark": "report_load",
        "deliveries": deliveries,
        "concurrent": concurrent,
        "chart_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "burst_s": round(burst_s, 2),
        "healthz_median_s": round(statistics.median(samples), 4),
        "healthz_worst_s": round(max(samples), 3),
        "healthz_samples": len(samples),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(f"{concurrent} concurrent GETs of a {deliveries}-delivery campaign's chart: {dict(statuses)}")
    print(f"the burst took {burst_s:.2f} s; peak memory {result['peak_rss_mb']} MB")
    print(
        f"GET /healthz meanwhile ({len(samples)} asked): median {result['healthz_median_s']} s, "
        f"worst {result['healthz_worst_s']} s"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--deliveries", type=count, default=60000, help="sent messages in the campaign")
    parser.add_argument("--concurrent", type=count, default=20, help="chart requests at once")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.deliveries, args.concurrent))))
