"""Several sending processes share one campaign on PostgreSQL: throughput, duplicates, losses.

    python benchmarks/multi_worker.py [--recipients 20000] [--workers 2]
    (POSTROOM_BENCH_DATABASE_URL, default postgresql+asyncpg://postgres@127.0.0.1:5432/test: a server
    where a throwaway database is created and dropped)

Each process claims batches with `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`, so no
recipient is claimed twice in normal operation. Last line: JSON with recipients, workers,
messages_per_s, duplicated, lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import (
    RecordingSink,
    count,
    fresh_folder,
    recipient,
    run_worker,
    seed_campaign,
    settings_for,
    tally,
)

DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


async def admin(server: str, sql: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(sql))
    await engine.dispose()


async def prepare(db: str, folder: Path, port: int, n: int) -> int:
    from bot.app import build_app
    from bot.campaigns.engine import DeliveryEngine

    app = await build_app(settings_for(folder, db, port))

    core = app.core
    try:
        cid = await seed_campaign(core, n)
        assert await DeliveryEngine(core.ctx).start(cid) == "sending"  # the snapshot, before the clock starts
        return cid
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=count, default=20_000)
    parser.add_argument("--workers", type=count, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--campaign", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(
            run_worker(args.db, Path(args.folder), args.port, args.campaign, connections=4, batch_size=500)
        )
        print(json.dumps(result), flush=True)
        return
    from bot.config import normalise_database_url

    server = normalise_database_url(os.environ.get("POSTROOM_BENCH_DATABASE_URL", DEFAULT_SERVER))
    name = f"postroom_bench_{uuid.uuid4().hex[:8]}"
    db = server.rsplit("/", 1)[0] + "/" + name
    asyncio.run(admin(server, f'CREATE DATABASE "{name}"'))
    folder = fresh_folder("multi")
    try:
        with RecordingSink(folder / "received.txt") as sink:
            cid = asyncio.run(prepare(db, folder, sink.port, args.recipients))
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--db",
                db,
                "--folder",
                str(folder),
                "--port",
                str(sink.port),
                "--campaign",
                str(cid),
            ]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
            results = []
            for p in procs:
                out, _ = p.communicate(timeout=900)
                results.append(json.loads(out.strip().splitlines()[-1]))
            time.sleep(0.5)  # the sink flushes its file every 0.2 s
            sink.stop()
            received = sink.received()
    finally:
        asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    elapsed = max(r["ended"] for r in results) - min(r["started"] for r in results)
    lost, duplicated = tally(received, {recipient(i)["email"] for i in range(args.recipients)})
    rate = len(set(received)) / elapsed
    for i, r in enumerate(results, 1):
        print(f"worker {i}: sent {r['sent']}, ended {r['state']}")
    print(
        f"{args.workers} workers on PostgreSQL: {args.recipients} recipients in {elapsed:.2f} s = {rate:,.0f} msg/s; "
        f"received {len(received)}, lost {lost}, duplicated {duplicated}"
    )
    print(
        json.dumps(
            {
                "recipients": args.recipients,
                "workers": args.workers,
                "messages_per_s": round(rate, 1),
                "duplicated": duplicated,
                "lost": lost,
            }
        )
    )


if __name__ == "__main__":
    main()
