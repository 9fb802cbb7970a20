"""One post to a group of 1,000 and 10,000 members, into Postfix's smtp-sink, three ways in the same run:

    python benchmarks/group_fanout.py [--sizes 1000,10000] [--rounds 3] [--policy-requests 5000]

- embedded: Postroom's durable relay (post stored, fan-out from the store, one transaction per member for
  its VERP return path), timed from the SMTP send to the post's last delivery recorded;
- postfix+postroom: a private real Postfix expanding the group from Postroom's SQLite database (the
  manifests' lookup table) and asking Postroom's policy service at RCPT and END-OF-MESSAGE, timed from
  the send to an empty queue;
- postfix alone (the ceiling): the same Postfix expanding a static alias of the same size, no policy.

Each way is timed --rounds times (a new post each round) and its median counts: at 1,000 members the
ceiling is a few tenths of a second, so one run's ratio is mostly the machine's noise.

Then the policy service's latency over one connection (RCPT requests for a members-only group, a mix of
members and outsiders): p50, p99. Needs root and Debian's postfix, postfix-sqlite. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
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
        relay={"enabled": True, "port": relay_port, "connections": 4, "batch_size": 1000},
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


async def embedded(app: Any, relay_port: int, serial: int) -> float:
    from sqlalchemy import select

    from bot.db.models import GroupPost

    t0 = time.perf_counter()
    await asyncio.to_thread(send, relay_port, serial)
    while True:
        async with app.ctx.sessions() as session:
            states = set((await session.execute(select(GroupPost.state))).scalars())
        if states == {"delivered"}:
            return time.perf_counter() - t0
        await asyncio.sleep(0.01)


def queue_empty(instance: PostfixInstance) -> bool:
    out = subprocess.run(
        ["/usr/sbin/postqueue", "-c", str(instance.etc), "-j"], capture_output=True, text=True
    ).stdout
    return not out.strip()


def through_postfix(instance: PostfixInstance, serial: int) -> float:
    t0 = time.perf_counter()
    send(instance.port, serial)
    while not queue_empty(instance):
        time.sleep(0.005)
    return time.perf_counter() - t0


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
    args = parser.parse_args()
    rounds = range(args.rounds)
    why = missing()
    if why:
        raise SystemExit(f"group_fanout needs a real Postfix: {why}.")
    results: dict[str, Any] = {"sizes": {}}
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
                for r in rounds:
                    times["embedded_s"].append(loop.run_until_complete(embedded(app, relay_port, 10 * r + 1)))
                with PostfixInstance(
                    folder / "pr",
                    sink_port=sink.port,
                    alias_maps=lookup_table(folder, f"sqlite:///{folder / 'postroom.db'}"),
                    policy_port=policy_port,
                ) as pf:
                    for r in rounds:  # the policy service answers inside this loop while Postfix asks it
                        times["postfix_postroom_s"].append(
                            loop.run_until_complete(asyncio.to_thread(through_postfix, pf, 10 * r + 2))
                        )
                static = folder / "virtual"
                static.write_text("big@corp.example " + ",".join(["alice@corp.example", *members(n)]) + "\n")
                with PostfixInstance(
                    folder / "pa", sink_port=sink.port, alias_maps=f"texthash:{static}"
                ) as pa:
                    for r in rounds:
                        times["postfix_alone_s"].append(through_postfix(pa, 10 * r + 3))
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
    print(f"policy service: p50 {results['policy_p50_ms']:.2f} ms, p99 {results['policy_p99_ms']:.2f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
