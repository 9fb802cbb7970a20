"""One post to a group of 1,000 and 10,000 members, into Postfix's smtp-sink, three ways in the same run:

    python benchmarks/group_fanout.py [--sizes 1000,10000] [--rounds 3] [--policy-requests 5000]

- embedded: Postroom's durable relay (post stored, fan-out from the store, one transaction per member for
  its VERP return path), timed from the SMTP send to the post's state `delivered` in the store;
- postfix+postroom: a private real Postfix expanding the group from Postroom's SQLite database (the
  manifests' lookup table) and asking Postroom's policy service at RCPT and END-OF-MESSAGE, timed from
  the send to an empty queue;
- postfix alone (the ceiling): the same Postfix expanding a static alias of the same size, no policy.

All three deliver the same 1.1 KB post to the same smtp-sink (copies of 1.3 KB either way: the relay adds
List-Id and its kin, Postfix a Received line), the relay with its default settings. Each way is timed
--rounds times (a new post each round), the three ways in turn round by round so that the shared machine's
load falls on all three alike, and its median counts: at 1,000 members the ceiling is a tenth of a second
or two, so one round's ratio is mostly noise. Waiting costs neither side: the relay's store is read once
its fan-out's count says the copies went out (not every few ms on the event loop that does the work),
Postfix's queue directories are looked at (not `postqueue`, two processes a look, every few ms beside
Postfix), each confirmed once at the end.

Then the policy service's latency over one connection (RCPT requests for a members-only group, a mix of
members and outsiders): p50, p99. Needs root and Debian's postfix, postfix-sqlite. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import Sink, count, free_port

from tests.postfix_instance import PostfixInstance, lookup_table, missing, shared_dir

ORG = {"name": "Example Corp", "domains": ["corp.example"], "postal_address": "1 Example Street"}
MESSAGE = (
    b"From: Alice <alice@corp.example>\r\nTo: big@corp.example\r\nSubject: All hands\r\n"
    b"Message-ID: <bench-%d@corp.example>\r\n\r\n" + b"The all-hands is at 10.\r\n" * 40
)


def sizes(text: str) -> list[int]:
    """An argparse type: group sizes like 1000,10000."""
    try:
        return [count(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"“{text}” is not a list of group sizes like 1000,10000 ({exc})"
        ) from None


def members(n: int) -> list[str]:
    return [f"m{i:06d}@d{i % 20}.corp.example" for i in range(n)]


async def build(folder: Path, sink_port: int, relay_port: int, policy_port: int, n: int) -> Any:
    from sqlalchemy import insert, select

    from bot.app import Runtime, build_app
    from bot.config import load_settings
    from bot.db.models import Group, Membership
    from bot.groups import planner
    from bot.secret_policy import generate_secret

    rules = folder / "groups.yaml"
    rules.write_text("groups:\n  - address: big\n    post: members\n")
    settings = load_settings(
        read_file=False,
        database={"url": f"sqlite+aiosqlite:///{folder / 'postroom.db'}"},
        smtp={"host": "127.0.0.1", "port": sink_port, "connections": 4, "timeout_s": 30},
        org=ORG,
        web={"secret": generate_secret()},
        groups={"rules_file": str(rules)},
        relay={"enabled": True, "port": relay_port},
        postfix={"policy_enabled": True, "policy_port": policy_port},
    )
    app = await build_app(settings)
    async with app.ctx.sessions() as session, session.begin():
        await planner.sync_group_definitions(
            session, app.rules.current(), settings, actor="bench", via="bench"
        )
        gid = (
            await session.execute(select(Group.id).where(Group.address == "big@corp.example"))
        ).scalar_one()
        everyone = ["alice@corp.example", *members(n)]
        for i in range(0, len(everyone), 5000):
            await session.execute(
                insert(Membership),
                [{"group_id": gid, "email": e, "source": "import"} for e in everyone[i : i + 5000]],
            )
    runtime = Runtime(app)
    await runtime.start_mail("127.0.0.1", relay_port, app.mail_routes())
    app.group_mail.fanout.start()
    await app.group_mail.policy.start()
    for path in folder.glob("postroom.db*"):
        path.chmod(0o666)
    return app, runtime


def send(port: int, serial: int) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail("alice@corp.example", ["big@corp.example"], MESSAGE % serial)


async def embedded(app: Any, relay_port: int, serial: int, copies: int) -> float:
    """From the SMTP send to the post's state `delivered` in the store (its last copy's result written).

    The store is asked only once the fan-out's own count says the copies went out (and every 0.25 s
    in case some did not): a database read every few milliseconds on the relay's event loop would be
    the benchmark's load on the very thread it measures."""
    from sqlalchemy import select

    from bot.db.models import GroupPost

    fanout = app.group_mail.fanout
    before = fanout.sent_total
    t0 = time.perf_counter()
    await asyncio.to_thread(send, relay_port, serial)
    asked = time.perf_counter()
    while True:
        if fanout.sent_total - before >= copies or time.perf_counter() - asked > 0.25:
            async with app.ctx.sessions() as session:
                states = set(
                    (
                        await session.execute(
                            select(GroupPost.state).where(
                                GroupPost.message_id == f"<bench-{serial}@corp.example>"
                            )
                        )
                    ).scalars()
                )
            asked = time.perf_counter()
            if states == {"delivered"}:
                return asked - t0
        await asyncio.sleep(0.002)


# Where a message can be in a Postfix queue, in the order it moves (maildrop only for sendmail(1)).
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def queued(instance: PostfixInstance) -> bool:
    """Whether a queue file is left: a look at the queue directories (no process started), in the order a
    message moves through them, so one moving on between two looks is still seen."""
    for name in QUEUES:
        for _root, _dirs, files in os.walk(instance.folder / "queue" / name):
            if files:
                return True
    return False


def queue_empty(instance: PostfixInstance) -> bool:
    """What `postqueue -j` says (it starts two processes: asked once at the end, not in the loop)."""
    out = subprocess.run(
        ["/usr/sbin/postqueue", "-c", str(instance.etc), "-j"], capture_output=True, text=True
    ).stdout
    return not out.strip()


def through_postfix(instance: PostfixInstance, serial: int) -> float:
    """From the SMTP send to an empty queue (every copy delivered and the queue file removed): the queue
    directories looked at every 2 ms, then `postqueue -j` to confirm (not counted in the time)."""
    t0 = time.perf_counter()
    send(instance.port, serial)
    while True:
        while queued(instance):
            time.sleep(0.002)
        took = time.perf_counter() - t0
        if queue_empty(instance):
            return took


async def policy_latency(port: int, requests: int) -> tuple[float, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples = []
    for i in range(requests):
        sender = "alice@corp.example" if i % 2 else f"stranger{i}@example.com"
        payload = (
            "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\n"
            f"sender={sender}\nrecipient=big@corp.example\ninstance=b{i}\n\n"
        ).encode()
        t0 = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        await reader.readuntil(b"\n\n")
        samples.append(time.perf_counter() - t0)
    writer.close()
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=sizes, default=[1000, 10000])
    parser.add_argument("--rounds", type=count, default=3)
    parser.add_argument("--policy-requests", type=count, default=5000)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the relay's event-loop thread during the embedded rounds and print where its time went "
        "(the figures of such a run are slower than without)",
    )
    args = parser.parse_args()
    rounds = range(args.rounds)
    why = missing()
    if why:
        raise SystemExit(f"group_fanout needs a real Postfix: {why}.")
    results: dict[str, Any] = {"sizes": {}}
    profile = cProfile.Profile() if args.profile else None
    with Sink() as sink:
        print(f"sink: {sink.kind} on 127.0.0.1:{sink.port}")
        for n in args.sizes:
            folder = shared_dir(f"postroom-bench-{n}-")
            relay_port, policy_port = free_port(), free_port()
            loop = asyncio.new_event_loop()
            app, runtime = loop.run_until_complete(build(folder, sink.port, relay_port, policy_port, n))
            row: dict[str, Any] = {}
            try:
                times: dict[str, list[float]] = {
                    "embedded_s": [],
                    "postfix_postroom_s": [],
                    "postfix_alone_s": [],
                }
                static = folder / "virtual"
                static.write_text("big@corp.example " + ",".join(["alice@corp.example", *members(n)]) + "\n")
                cpu: list[float] = []
                with (
                    PostfixInstance(
                        folder / "pr",
                        sink_port=sink.port,
                        alias_maps=lookup_table(folder, f"sqlite:///{folder / 'postroom.db'}"),
                        policy_port=policy_port,
                    ) as pf,
                    PostfixInstance(
                        folder / "pa", sink_port=sink.port, alias_maps=f"texthash:{static}"
                    ) as pa,
                ):
                    # The three ways in turn, round by round: a change in the machine's load (it is shared)
                    # falls on all three, not on one way's rounds.
                    for r in rounds:
                        c0 = time.thread_time()
                        if profile is not None:
                            profile.enable()
                        times["embedded_s"].append(
                            loop.run_until_complete(embedded(app, relay_port, 10 * r + 1, n + 1))
                        )
                        if profile is not None:
                            profile.disable()
                        cpu.append(time.thread_time() - c0)
                        # the policy service answers on this loop while Postfix asks it
                        times["postfix_postroom_s"].append(
                            loop.run_until_complete(asyncio.to_thread(through_postfix, pf, 10 * r + 2))
                        )
                        times["postfix_alone_s"].append(through_postfix(pa, 10 * r + 3))
                # The relay's event loop thread (SMTP server, fan-out, SQLAlchemy) does the embedded way's work.
                row["embedded_cpu_us_per_copy"] = round(statistics.median(cpu) / (n + 1) * 1e6, 1)
                row["embedded_shares"] = [
                    round(a / e, 2)
                    for e, a in zip(times["embedded_s"], times["postfix_alone_s"], strict=True)
                ]
                for key, taken in times.items():
                    row[key] = statistics.median(taken)
                    row[key.replace("_s", "_runs_s")] = [round(x, 3) for x in taken]
                if n == args.sizes[-1]:
                    p50, p99 = loop.run_until_complete(policy_latency(policy_port, args.policy_requests))
                    results["policy_p50_ms"], results["policy_p99_ms"] = round(p50, 3), round(p99, 3)
            finally:
                loop.run_until_complete(runtime.stop_services())
                loop.run_until_complete(app.close())
                loop.close()
                shutil.rmtree(folder, ignore_errors=True)
            copies = n + 1
            ceiling = copies / row["postfix_alone_s"]
            for key in ("embedded_s", "postfix_postroom_s", "postfix_alone_s"):
                rate = copies / row[key]
                row[key.replace("_s", "_per_s")] = round(rate, 1)
                row[key.replace("_s", "_share")] = round(rate / ceiling, 2)
                row[key] = round(row[key], 3)
            results["sizes"][n] = row
            print(
                f"{copies:>6} copies: embedded relay {row['embedded_s']:.2f} s ({row['embedded_per_s']:,.0f}/s, "
                f"{row['embedded_share']:.2f} of the ceiling); Postfix + Postroom's lookup and policy "
                f"{row['postfix_postroom_s']:.2f} s ({row['postfix_postroom_per_s']:,.0f}/s, "
                f"{row['postfix_postroom_share']:.2f}); Postfix alone, static alias {row['postfix_alone_s']:.2f} s "
                f"({row['postfix_alone_per_s']:,.0f}/s, the ceiling)"
            )
            print(
                f"        embedded relay's share round by round {row['embedded_shares']}; the relay's event-loop "
                f"thread spent {row['embedded_cpu_us_per_copy']:.0f} µs of CPU per copy"
            )
    print(f"policy service: p50 {results['policy_p50_ms']:.2f} ms, p99 {results['policy_p99_ms']:.2f} ms")
    if profile is not None:
        print(
            "where the relay's event-loop thread spent its time in the embedded rounds (cProfile, own time):"
        )
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    print(json.dumps(results))


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    # Stopped with SIGTERM: unwind, so the private Postfix instances and smtp-sink are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
