"""SMTP pipelining (RFC 2920) against one command at a time, into the same sink, in the same run.

    python benchmarks/pipelining.py [--recipients 20000] [--connections 4] [--pairs 2]

`smtp.pipelining = false` (one command at a time, four round trips a message) and true (MAIL, RCPT and DATA
in one write, the message in a second; the sink offers PIPELINING) take turns, lock-step first, --pairs
times each: first the SMTP client alone (SmtpTransport sending one prebuilt 6 KB message, up to 20,000
times), then the whole engine (benchmarks/send_throughput.py's run, each on a fresh database). Each run
prints its rate and this process's CPU per message (the sink's excluded), which a loaded machine disturbs
less than the rate. Last line: JSON with messages_per_s (pipelined, engine), lockstep_messages_per_s,
pipelining_ratio (pipelined / lock-step, engine), the client's and the CPU ratios, and every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from common import Sink, count, fresh_folder, run_async
from send_throughput import engine_run


async def transport_run(port: int, n: int, connections: int, pipelining: bool) -> tuple[float, float]:
    """The SMTP client alone: one prebuilt 6 KB message sent n times over `connections` connections by
    SmtpTransport, as the engine sends. Returns (messages per second, CPU µs per message)."""
    from bot.mail.transport import SmtpTarget, SmtpTransport

    data = (
        b"Subject: news\r\nFrom: news@corp.example\r\n\r\n"
        + b"Lorem ipsum dolor sit amet, consectetur.\r\n" * 150
    )
    transport = SmtpTransport(SmtpTarget("127.0.0.1", port, connections=connections, pipelining=pipelining))
    left = iter(range(n))

    async def worker() -> None:
        for i in left:
            outcome = await transport.send("bounces@corp.example", f"p{i}@d{i % 50}.example", data)
            assert outcome.ok, outcome

    try:
        await transport.send("bounces@corp.example", "warm@example.com", data)  # connections opened first
        await asyncio.gather(*(worker() for _ in range(connections)))  # opens the rest
        left = iter(range(n))
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await transport.close()
    return n / elapsed, cpu / n * 1e6


def compare_pipelining(
    folder, port: int, n: int, connections: int, pairs: int
) -> dict[str, dict[bool, list[float]]]:  # type: ignore[no-untyped-def]
    """smtp.pipelining off and on, alternately: the SMTP client alone, then the engine (each run on a
    fresh database). Wall-clock rates and this process's CPU per message (robust to other load)."""
    runs: dict[str, dict[bool, list[float]]] = {
        k: {False: [], True: []} for k in ("client", "client_cpu_us", "engine", "engine_cpu_us")
    }
    label = {False: "lock-step", True: "pipelined"}
    sample = min(n, 20_000)
    for _ in range(pairs):
        for on in (False, True):
            rate, cpu = run_async(transport_run(port, sample, connections, on))
            runs["client"][on].append(rate)
            runs["client_cpu_us"][on].append(cpu)
            print(
                f"SMTP client alone, {label[on]}: {sample} messages, {rate:,.0f} msg/s, {cpu:,.0f} µs CPU a message"
            )
    for i in range(pairs):
        for on in (False, True):
            took, cpu_s, counts = run_async(
                engine_run(folder, port, n, connections, db=f"pipelining-{on}-{i}", pipelining=on)
            )
            cpu = cpu_s / n * 1e6
            runs["engine"][on].append(n / took)
            runs["engine_cpu_us"][on].append(cpu)
            print(
                f"engine, {label[on]}: {n} recipients in {took:.2f} s = {n / took:,.0f} msg/s, "
                f"{cpu:,.0f} µs CPU a message ({counts})"
            )
    for what in ("client", "engine"):
        on, off = (mean(runs[what][m]) for m in (True, False))
        con, coff = (mean(runs[what + "_cpu_us"][m]) for m in (True, False))
        print(
            f"{what}: pipelined {on:,.0f} msg/s vs lock-step {off:,.0f} msg/s = {on / off:.2f}x; CPU a message "
            f"{con:,.0f} vs {coff:,.0f} µs = {con / coff:.2f} (means of {pairs}, {connections} connections)"
        )
    return runs


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=count, default=20_000)
    parser.add_argument("--connections", type=count, default=4)
    parser.add_argument("--pairs", type=count, default=2, help="how many lock-step + pipelined pairs")
    args = parser.parse_args()
    folder = fresh_folder("pipelining")
    load_before = os.getloadavg()[0]
    with Sink() as sink:
        print(
            f"sink: {sink.kind} on 127.0.0.1:{sink.port}; recipients: {args.recipients}; load {load_before:.1f}"
        )
        runs = compare_pipelining(folder, sink.port, args.recipients, args.connections, args.pairs)
    rate, lockstep = mean(runs["engine"][True]), mean(runs["engine"][False])
    result: dict[str, object] = {
        "recipients": args.recipients,
        "messages_per_s": round(rate, 1),
        "lockstep_messages_per_s": round(lockstep, 1),
        "pipelining_ratio": round(rate / lockstep, 3),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    for what, values in runs.items():
        for on, name in ((True, "pipelined"), (False, "lockstep")):
            result[f"{what}_{name}_runs"] = [round(v, 1) for v in values[on]]
    for what in ("client", "engine_cpu_us", "client_cpu_us"):
        result[f"{what}_pipelining_ratio"] = round(mean(runs[what][True]) / mean(runs[what][False]), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
