"""A personalised campaign to a big audience through the real engine into Postfix's smtp-sink, against the
ceiling measured in the same run: Postfix's smtp-source sending as many messages of the same size over as
many connections into the same kind of sink.

    python benchmarks/million.py [--recipients 20000] [--connections 4] [--database-url URL]

Contacts are seeded first (not timed). The clock starts when the approved campaign is started (the
audience snapshot, then sending) and the sink's own counter (smtp-sink -c, read by a small process beside
it) says when the first and the last message arrived. The message size for the ceiling is measured, not
guessed: a 200-recipient run of the same template into a dumping sink, less the headers smtp-source adds
itself. With --database-url a throwaway PostgreSQL database is made beside the one named and dropped after.

Targets (issue 13): 1,000,000 recipients in under 600 s end to end on SQLite and on PostgreSQL,
ratio_to_ceiling >= 0.8 at 20,000, time to the first message under 5 s at 1,000,000, peak RSS <= 150 MB.
Last line: JSON with recipients, seconds_to_first_message, seconds_total, messages_per_s,
ceiling_messages_per_s, ratio_to_ceiling, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    count,
    drop_postgres,
    free_port,
    fresh_folder,
    fresh_postgres,
    run_async,
    seed_campaign,
    settings_for,
    wait_port,
)

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"

# Reads smtp-sink -c's running counter ("sess=1 quit=0 mesg=42\r" after each event; unbuffered by stdbuf) from its stdin and
# writes, once the counter reaches the target, the monotonic times of the first and the last message. It
# keeps reading to the end, so the sink never blocks on a full pipe.
COUNTER = r"""
import sys, time, json
target, out = int(sys.argv[1]), sys.argv[2]
first = None
tail = b""
done = False
while True:
    chunk = sys.stdin.buffer.read1(65536)
    if not chunk:
        break
    if done:
        continue
    now = time.monotonic()
    records = (tail + chunk).split(b"\r")
    tail = records.pop()
    for record in reversed(records):
        i = record.rfind(b"mesg=")
        if i >= 0:
            n = int(record[i + 5:].split()[0] or 0)
            break
    else:
        continue
    if n >= 1 and first is None:
        first = now
    if n >= target:
        with open(out, "w") as f:
            json.dump({"first": first, "last": now, "messages": n}, f)
        done = True
"""


class CountingSink:
    """smtp-sink with its counter on, and the counter reader beside it."""

    def __init__(self, target: int, folder: Path):
        self.port = free_port()
        self.target = target
        self.result = folder / f"counter-{self.port}.json"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> CountingSink:
        args = ["stdbuf", "-o0", SMTP_SINK, "-c"]  # its counter is stdio, fully buffered into a pipe
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        sink = subprocess.Popen(
            [*args, f"127.0.0.1:{self.port}", "1024"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        reader = subprocess.Popen(
            [sys.executable, "-c", COUNTER, str(self.target), str(self.result)], stdin=sink.stdout
        )
        assert sink.stdout is not None
        sink.stdout.close()  # the reader holds it now
        self.procs = [sink, reader]
        wait_port(self.port)
        return self

    def times(self, timeout: float = 60.0) -> dict[str, float]:
        """The first and last message's monotonic times, once the counter reached the target."""
        deadline = time.monotonic() + timeout
        while not self.result.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sink counted fewer than {self.target} messages")
            time.sleep(0.02)
        time.sleep(0.05)  # written whole before this is read: json.dump then close
        return json.loads(self.result.read_text())

    def __exit__(self, *exc: object) -> None:
        sink, reader = self.procs
        sink.terminate()
        sink.wait(10)
        reader.wait(10)


def dumped_size(folder: Path, send) -> float:  # type: ignore[no-untyped-def]
    """Mean size of the messages `send(port)` delivers, read from smtp-sink's dump files (their own
    envelope lines left out)."""
    dump = Path(tempfile.mkdtemp(dir=folder, prefix="dump-"))
    dump.chmod(0o777)  # smtp-sink writes as nobody
    port = free_port()
    args = [SMTP_SINK, "-d", f"{dump}/%M."]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    sink = subprocess.Popen([*args, f"127.0.0.1:{port}", "64"], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        send(port)
        time.sleep(0.3)
    finally:
        sink.terminate()
        sink.wait(10)
    sizes = []
    for path in dump.iterdir():
        lines = path.read_bytes().split(b"\n")
        while lines and lines[0].startswith((b"X-Client-", b"X-Helo-", b"X-Mail-", b"X-Rcpt-")):
            lines.pop(0)
        if lines and lines[0].startswith(b"Received: ") and b"smtp-sink" in b"".join(lines[:3]):
            lines.pop(0)  # the sink's own Received: header, with its folded lines
            while lines and lines[0][:1] in (b" ", b"\t"):
                lines.pop(0)
        sizes.append(len(b"\r\n".join(lines)))
    if not sizes:
        raise RuntimeError("the dumping sink received nothing")
    return sum(sizes) / len(sizes)


async def engine_run(folder: Path, database_url: str, port: int, n: int, connections: int, sink) -> dict:  # type: ignore[no-untyped-def,type-arg]
    from bot.app import build_app
    from bot.campaigns import service
    from bot.campaigns.engine import DeliveryEngine

    settings = settings_for(folder, database_url, port, connections=connections, batch_size=1000)
    app = await build_app(settings)
    core = app.core
    try:
        t_seed = time.perf_counter()
        cid = await seed_campaign(core, n)
        seeded = time.perf_counter() - t_seed
        engine = DeliveryEngine(core.ctx)
        t0 = time.monotonic()
        assert await engine.start(cid) == "sending"
        snapshot = time.monotonic() - t0
        result = await engine.run(cid)
        ended = time.monotonic()
        assert result.state == "completed", result
        async with core.ctx.sessions() as session:
            counts = await service.counts(session, cid)
        times = sink.times()
        return {
            "seeded_s": seeded,
            "snapshot_s": snapshot,
            "first": times["first"] - t0,
            "last": times["last"] - t0,
            "engine_s": ended - t0,
            "counts": counts,
        }
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=count, default=20_000)
    parser.add_argument("--connections", type=count, default=4)
    parser.add_argument(
        "--database-url", default="", help="a PostgreSQL server's URL: a throwaway database is made beside it"
    )
    args = parser.parse_args()
    for tool in (SMTP_SINK, SMTP_SOURCE):
        if not os.path.exists(tool):
            sys.exit(
                f"{tool} is missing: this benchmark needs Postfix's smtp-sink and smtp-source (Debian package postfix)."
            )
    folder = fresh_folder("million")
    n = args.recipients

    # The size of the engine's messages, for the ceiling: the same template and recipients, 200 of them.
    def probe(port: int) -> None:
        probe_db = f"sqlite+aiosqlite:///{folder / 'probe.db'}"

        async def go() -> None:
            from bot.app import build_app
            from bot.campaigns.engine import DeliveryEngine

            app = await build_app(settings_for(folder, probe_db, port, connections=1))
            try:
                cid = await seed_campaign(app.core, 200)
                engine = DeliveryEngine(app.core.ctx)
                assert await engine.start(cid) == "sending"
                assert (await engine.run(cid)).state == "completed"
            finally:
                await app.close()

        run_async(go())

    size = dumped_size(folder, probe)
    overhead = dumped_size(
        folder,
        lambda port: subprocess.run(
            [
                SMTP_SOURCE,
                "-m",
                "1",
                "-l",
                "1",
                "-f",
                "a@corp.example",
                "-t",
                "b@d.example",
                f"127.0.0.1:{port}",
            ],
            check=True,
        ),
    )
    body = max(1, round(size - (overhead - 1)))  # the probe's body was 1 byte
    print(
        f"message size: {size:,.0f} bytes (smtp-source sends {body:,} bytes of body plus its {overhead - 1:,.0f} of headers)"
    )

    throwaway = fresh_postgres(args.database_url) if args.database_url else ""
    database_url = throwaway or f"sqlite+aiosqlite:///{folder / 'million.db'}"
    kind = "PostgreSQL" if throwaway else "SQLite"
    try:
        with CountingSink(n, folder) as sink:
            run = run_async(engine_run(folder, database_url, sink.port, n, args.connections, sink))
    finally:
        if throwaway:
            drop_postgres(args.database_url, throwaway)
    rate = n / run["last"]
    print(
        f"engine ({kind}, {args.connections} connections): seeded {n:,} contacts in {run['seeded_s']:.1f} s (not timed); "
        f"snapshot {run['snapshot_s']:.2f} s; first message at {run['first']:.2f} s; last at {run['last']:.2f} s "
        f"= {rate:,.0f} msg/s ({run['counts']})"
    )

    with CountingSink(n, folder) as sink:
        t0 = time.monotonic()
        subprocess.run(
            [
                SMTP_SOURCE,
                "-d",  # messages one after another on each connection, as the engine sends them
                "-s", str(args.connections),
                "-m", str(n),
                "-l", str(body),
                "-f", "news@corp.example",
                "-t", "person@d1.example",
                f"127.0.0.1:{sink.port}",
            ],
            check=True,
        )  # fmt: skip
        times = sink.times()
        ceiling_s = times["last"] - t0
    ceiling = n / ceiling_s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"ceiling (smtp-source, {args.connections} sessions, same size, same sink): {n:,} in {ceiling_s:.2f} s = {ceiling:,.0f} msg/s"
    )
    print(
        f"ratio to the ceiling: {rate / ceiling:.2f}; peak RSS {peak:.0f} MB; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        json.dumps(
            {
                "recipients": n,
                "database": kind,
                "seconds_to_first_message": round(run["first"], 3),
                "seconds_total": round(run["last"], 2),
                "messages_per_s": round(rate, 1),
                "ceiling_messages_per_s": round(ceiling, 1),
                "ratio_to_ceiling": round(rate / ceiling, 3),
                "peak_rss_mb": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
