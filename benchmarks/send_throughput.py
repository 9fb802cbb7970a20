"""Campaign send throughput, end to end, against a naive baseline measured in the same run.

    python benchmarks/send_throughput.py [--recipients 20000] [--connections 4] [--dkim [--rounds 1]]

(SMTP pipelining on and off, side by side: benchmarks/pipelining.py.)

The engine path: audience snapshot into delivery rows (SQLite), batch claims, the template
compiled once and rendered per recipient (text + HTML, personalised subject, tracked links,
VERP return path, List-Unsubscribe headers), messages assembled as bytes, sent over persistent
aiosmtplib connections to a loopback sink (Postfix's smtp-sink when installed), results recorded
a batch at a time. The baseline: the same rendering, one `EmailMessage` per recipient and
`send_message` over one connection. Last line: JSON with recipients, messages_per_s,
baseline_messages_per_s, speedup, peak_rss_mb, cpu_us_per_message (the engine process's CPU time per
message: on a loaded machine a steadier measure of cost than the rate) and the load average at the start
and the end.

With --dkim the engine runs five times in the same process, each on a fresh database: unsigned, signed
with an Ed25519 key, signed with an RSA-2048 key (keys made here as `postroom dkim keygen` makes them) on
the event loop, then with the RSA signatures in cores-1 signing processes (dkim.signing_processes), and
unsigned again (`--rounds N`: the signed runs and an unsigned one N times); each signed rate and CPU time
a message is compared with the median of the unsigned runs. The JSON adds each signed rate, its share of
the unsigned one, the same by CPU time a message (the signing processes' CPU counted too), whether it
meets the target (≥ 1,000 msg/s and ≥ 80% of unsigned, by rate), and the signing cost alone per message
(the signer over a built message, without the engine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

from common import Sink, count, fresh_folder, recipient, run_async, seed_campaign, settings_for


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # signing processes, once reaped at close
    return usage.ru_utime + usage.ru_stime


async def engine_run(
    folder, port: int, n: int, connections: int, dkim=None, db="bench", pipelining: bool = True
) -> tuple[float, float, dict[str, int]]:  # type: ignore[no-untyped-def]
    """(seconds, CPU seconds: this process's during the run and its signing processes', counts)."""
    from bot.app import build_app
    from bot.campaigns import service
    from bot.campaigns.engine import DeliveryEngine

    settings = settings_for(
        folder,
        f"sqlite+aiosqlite:///{folder / (db + '.db')}",
        port,
        dkim=dkim,
        connections=connections,
        batch_size=1000,
        pipelining=pipelining,
    )
    children = _children_cpu()
    app = await build_app(settings)
    core = app.core
    try:
        cid = await seed_campaign(core, n)
        engine = DeliveryEngine(core.ctx)
        t0, c0 = time.perf_counter(), time.process_time()
        assert await engine.start(cid) == "sending"
        result = await engine.run(cid)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        async with core.ctx.sessions() as session:
            counts = await service.counts(session, cid)
        assert result.state == "completed", result
    finally:
        await app.close()
    return elapsed, cpu + _children_cpu() - children, counts


async def baseline_run(folder, port: int, n: int) -> float:  # type: ignore[no-untyped-def]
    """The naive way: an EmailMessage per recipient, send_message over one connection."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    import aiosmtplib

    from bot.campaigns.templates import CompiledTemplate, load_source

    source = load_source(folder / "templates", "news")
    template = CompiledTemplate(source, "News for {{ first_name }}")
    org = {"name": "Example Corp", "postal_address": "1 Example Street, Berlin"}
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await smtp.connect()
    t0 = time.perf_counter()
    for i in range(n):
        r = recipient(i)
        ctx = {
            **r["attributes"],
            "first_name": r["name"].split()[0],
            "name": r["name"],
            "email": r["email"],
            "org": org,
            "unsubscribe_url": f"https://postroom.corp.example/u/{i}",
        }
        rendered = template.render(ctx)
        msg = EmailMessage()
        msg["From"] = "Example Corp <news@corp.example>"
        msg["To"] = f"{r['name']} <{r['email']}>"
        msg["Subject"] = rendered.subject
        msg["Date"] = formatdate()
        msg["Message-ID"] = make_msgid(domain="corp.example")
        msg["List-Unsubscribe"] = f"<https://postroom.corp.example/u/{i}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        await smtp.send_message(msg)
    elapsed = time.perf_counter() - t0
    await smtp.quit()
    return n / elapsed


def make_key(folder, algorithm: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """A key file as `postroom dkim keygen` writes it, and the [dkim] section that uses it."""
    from bot.mail.dkim import generate_key

    path = folder / f"corp.example.{algorithm[:3]}.pem"
    path.write_bytes(generate_key(algorithm))  # type: ignore[arg-type]
    path.chmod(0o600)
    return {"keys": [{"domain": "corp.example", "selector": algorithm[:3], "key_file": str(path)}]}


def signing_cost_us(section: dict, samples: int = 500) -> float:  # type: ignore[type-arg]
    """µs to sign one benchmark-sized message, the signer alone."""
    from bot.mail.compose import build_message
    from bot.mail.dkim import DkimSigner, load_key

    k = section["keys"][0]
    signer = DkimSigner([load_key(domain=k["domain"], selector=k["selector"], key_file=k["key_file"])])
    html = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 60 + "</p>"
    messages = [
        build_message(
            from_name="Example Corp",
            from_address="news@corp.example",
            to_name=f"Person{i} Example",
            to_address=f"person{i}@d.example",
            subject=f"News for Person{i}",
            text=html,
            html=html,
            message_id=f"<{i}@corp.example>",
            headers=[("List-Unsubscribe", f"<https://postroom.corp.example/u/{i}>")],
        )
        for i in range(samples)
    ]
    t0 = time.perf_counter()
    for m in messages:
        signer.sign(m)
    return (time.perf_counter() - t0) / samples * 1e6


def target_met(signed: float, unsigned: float) -> bool:
    """Issue 16: signed sending at ≥ 1,000 msg/s and within 20% of the unsigned rate of the same run."""
    return signed >= 1000 and signed >= 0.8 * unsigned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=count, default=20_000)
    parser.add_argument("--connections", type=count, default=4)
    parser.add_argument(
        "--baseline-recipients",
        type=count,
        default=3_000,
        help="the baseline's rate is steady; a sample of this size measures it",
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="also run the engine DKIM-signing with RSA-2048 and with Ed25519, beside the unsigned run",
    )
    parser.add_argument(
        "--rounds",
        type=count,
        default=1,
        help="with --dkim: the signed runs and an unsigned one this many times, compared by their medians",
    )
    args = parser.parse_args()
    folder = fresh_folder("throughput")
    n = args.recipients
    load_before = os.getloadavg()
    signed: dict[str, list[float]] = {}  # label -> msg/s of each round
    signed_cpu: dict[str, list[float]] = {}  # label -> CPU µs a message of each round
    cost: dict[str, float] = {}
    with Sink() as sink:
        print(f"sink: {sink.kind} on 127.0.0.1:{sink.port}; recipients: {n}; connections: {args.connections}")
        print(f"load average at the start: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
        elapsed, cpu, counts = run_async(engine_run(folder, sink.port, n, args.connections))
        unsigned_runs, unsigned_cpu = [n / elapsed], [cpu / n * 1e6]
        print(
            f"engine: {n} recipients in {elapsed:.2f} s = {unsigned_runs[0]:,.0f} msg/s, "
            f"CPU {unsigned_cpu[0]:,.0f} µs a message ({counts})"
        )
        if args.dkim:
            processes = max(1, (os.cpu_count() or 2) - 1)
            labels = ("ed25519-sha256", "rsa-sha256", f"rsa-sha256, {processes} signing process(es)")
            sections = {}
            for label in labels:
                algorithm = label.split(",")[0]
                sections[label] = make_key(folder, algorithm)
                cost[label] = signing_cost_us(sections[label])
                if label != algorithm:
                    sections[label]["signing_processes"] = processes
            for round_ in range(args.rounds):
                for label in labels:
                    took, cpu, counts = run_async(
                        engine_run(
                            folder,
                            sink.port,
                            n,
                            args.connections,
                            dkim=sections[label],
                            db=f"{label[:3]}{labels.index(label)}r{round_}",
                        )
                    )
                    signed.setdefault(label, []).append(n / took)
                    signed_cpu.setdefault(label, []).append(cpu / n * 1e6)
                    print(
                        f"engine, DKIM {label}: {n} recipients in {took:.2f} s = {n / took:,.0f} msg/s, "
                        f"CPU {cpu / n * 1e6:,.0f} µs a message (signing alone {cost[label]:,.0f} µs; {counts})"
                    )
                # Unsigned again after each round: on a shared machine the load drifts, and the reference is
                # the median of the unsigned runs around the signed ones.
                again, cpu, counts = run_async(
                    engine_run(folder, sink.port, n, args.connections, db=f"unsigned{round_ + 2}")
                )
                unsigned_runs.append(n / again)
                unsigned_cpu.append(cpu / n * 1e6)
                print(
                    f"engine, unsigned again: {n} recipients in {again:.2f} s = {n / again:,.0f} msg/s, "
                    f"CPU {unsigned_cpu[-1]:,.0f} µs a message"
                )
        rate, per_message = statistics.median(unsigned_runs), statistics.median(unsigned_cpu)
        for label in signed:
            value, cpu_us = statistics.median(signed[label]), statistics.median(signed_cpu[label])
            met = "met" if target_met(value, rate) else "not met"
            print(
                f"DKIM {label}: {value / rate:.0%} of the unsigned rate ({value:,.0f} vs {rate:,.0f} msg/s, "
                f"medians); by CPU a message {per_message / cpu_us:.0%} ({cpu_us:,.0f} vs {per_message:,.0f} µs); "
                f"target (≥ 1,000 msg/s and ≥ 80% of unsigned) {met}"
            )
        baseline = run_async(baseline_run(folder, sink.port, min(args.baseline_recipients, n)))
        print(f"baseline (EmailMessage + send_message, one connection): {baseline:,.0f} msg/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load_after = os.getloadavg()
    print(f"speedup: {rate / baseline:.1f}x; peak RSS {peak:.0f} MB")
    print(f"load average at the end: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    result: dict[str, object] = {
        "recipients": n,
        "messages_per_s": round(rate, 1),
        "baseline_messages_per_s": round(baseline, 1),
        "speedup": round(rate / baseline, 2),
        "peak_rss_mb": round(peak, 1),
        "cpu_us_per_message": round(per_message, 1),
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
    }
    if signed:
        result["unsigned_runs_messages_per_s"] = [round(r, 1) for r in unsigned_runs]
        result["unsigned_runs_cpu_us_per_message"] = [round(c, 1) for c in unsigned_cpu]
    for label in signed:
        short = label.split("-")[0] + ("_processes" if "process" in label else "")
        value, cpu_us = statistics.median(signed[label]), statistics.median(signed_cpu[label])
        result[f"dkim_{short}_messages_per_s"] = round(value, 1)
        result[f"dkim_{short}_share_of_unsigned"] = round(value / rate, 3)
        result[f"dkim_{short}_cpu_us_per_message"] = round(cpu_us, 1)
        result[f"dkim_{short}_cpu_share_of_unsigned"] = round(per_message / cpu_us, 3)
        result[f"dkim_{short}_sign_us"] = round(cost[label], 1)
        result[f"dkim_{short}_target_met"] = target_met(value, rate)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
