"""Kill -9 the sending process at random points, restart it, and count what the sink received.

    python benchmarks/crash_resume.py [--recipients 20000] [--kills 5] [--batch 100]

Each restart resumes the campaign: rows a dead process had claimed are re-claimed once their
lease runs out, so nobody is skipped; what can repeat is what was in flight when it died (at
most one batch per kill). Last line: JSON with recipients, kills, lost, duplicated, in_flight_window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import RecordingSink, count, fresh_folder, recipient, run_worker, seed_campaign, settings_for

LEASE_S = 2.0


def child(args: argparse.Namespace) -> None:
    result = asyncio.run(
        run_worker(
            args.db,
            Path(args.folder),
            args.port,
            args.campaign,
            batch_size=args.batch,
            lease_s=LEASE_S,
            connections=2,
        )
    )
    print(json.dumps(result), flush=True)


async def prepare(db: str, folder: Path, port: int, n: int) -> int:
    from bot.app import build_app

    app = await build_app(settings_for(folder, db, port))

    core = app.core
    try:
        return await seed_campaign(core, n)
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=count, default=20000)
    parser.add_argument("--kills", type=count, default=5)
    parser.add_argument("--batch", type=count, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--campaign", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rng = random.Random(args.seed)
    folder = fresh_folder("crash")
    db = f"sqlite+aiosqlite:///{folder / 'crash.db'}"
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
            "--batch",
            str(args.batch),
        ]
        kills = 0
        for _ in range(args.kills):
            before = len(sink.received())
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            # Somewhere in the send: once this process has delivered something (start-up takes 1 s on a
            # quiet machine, several on a loaded one, and a kill before it would test nothing), and before
            # the end of the send.
            started = time.monotonic() + 120
            while time.monotonic() < started and proc.poll() is None and len(sink.received()) <= before:
                time.sleep(0.02)
            delay = rng.uniform(0.1, 1.5)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                print(
                    f"kill {kills}: SIGKILL {delay:.2f} s into sending; {len(sink.received())} received so far",
                    flush=True,
                )
            else:
                break
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        final = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"final run: {final['state']}", flush=True)
        time.sleep(0.5)  # the sink flushes its file every 0.2 s
        sink.stop()
        received = sink.received()
    expected = {recipient(i)["email"] for i in range(args.recipients)}
    from common import tally

    lost, duplicated = tally(received, expected)
    # A worker has at most one claimed, unrecorded batch in flight when it dies: per kill, a batch.
    window = args.batch * kills
    print(
        f"recipients {args.recipients}, kills {kills}, received {len(received)}, lost {lost}, "
        f"duplicated {duplicated} (in-flight window: {args.batch} per kill, {window} for {kills} kills)"
    )
    if kills < args.kills:
        print(
            f"Only {kills} of the {args.kills} kills asked for were made: the send finished before the next "
            "kill could land. Use more --recipients (or a smaller --batch) for that many kills.",
            flush=True,
        )
    print(
        json.dumps(
            {
                "recipients": args.recipients,
                "kills": kills,
                "kills_requested": args.kills,
                "lost": lost,
                "duplicated": duplicated,
                "in_flight_window": window,
            }
        )
    )


if __name__ == "__main__":
    main()
