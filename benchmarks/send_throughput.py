"""Campaign send throughput, end to end, against a naive baseline measured in the same run.

    python benchmarks/send_throughput.py [--recipients 20000] [--connections 4]

The engine path: audience snapshot into delivery rows (SQLite), batch claims, the template
compiled once and rendered per recipient (text + HTML, personalised subject, tracked links,
VERP return path, List-Unsubscribe headers), messages assembled as bytes, sent over persistent
aiosmtplib connections to a loopback sink (Postfix's smtp-sink when installed), results recorded
a batch at a time. The baseline: the same rendering, one `EmailMessage` per recipient and
`send_message` over one connection. Last line: JSON with recipients, messages_per_s,
baseline_messages_per_s, speedup, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from common import Sink, count, fresh_folder, recipient, run_async, seed_campaign, settings_for


async def engine_run(folder, port: int, n: int, connections: int) -> tuple[float, dict[str, int]]:  # type: ignore[no-untyped-def]
    from bot.app import build_app
    from bot.campaigns import service
    from bot.campaigns.engine import DeliveryEngine

    settings = settings_for(
        folder, f"sqlite+aiosqlite:///{folder / 'bench.db'}", port, connections=connections, batch_size=1000
    )
    app = await build_app(settings)
    core = app.core
    try:
        cid = await seed_campaign(core, n)
        engine = DeliveryEngine(core.ctx)
        t0 = time.perf_counter()
        assert await engine.start(cid) == "sending"
        result = await engine.run(cid)
        elapsed = time.perf_counter() - t0
        async with core.ctx.sessions() as session:
            counts = await service.counts(session, cid)
        assert result.state == "completed", result
        return elapsed, counts
    finally:
        await app.close()


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
    args = parser.parse_args()
    folder = fresh_folder("throughput")
    with Sink() as sink:
        print(
            f"sink: {sink.kind} on 127.0.0.1:{sink.port}; recipients: {args.recipients}; "
            f"connections: {args.connections}"
        )
        elapsed, counts = run_async(engine_run(folder, sink.port, args.recipients, args.connections))
        rate = args.recipients / elapsed
        print(f"engine: {args.recipients} recipients in {elapsed:.2f} s = {rate:,.0f} msg/s ({counts})")
        baseline = run_async(baseline_run(folder, sink.port, min(args.baseline_recipients, args.recipients)))
        print(f"baseline (EmailMessage + send_message, one connection): {baseline:,.0f} msg/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"speedup: {rate / baseline:.1f}x; peak RSS {peak:.0f} MB")
    print(
        json.dumps(
            {
                "recipients": args.recipients,
                "messages_per_s": round(rate, 1),
                "baseline_messages_per_s": round(baseline, 1),
                "speedup": round(rate / baseline, 2),
                "peak_rss_mb": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
