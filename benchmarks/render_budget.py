"""Does `/healthz` keep answering while a template bomb is previewed?

`postroom serve`'s web app (uvicorn on loopback, SQLite) and a console chat share one event loop, as
in `postroom serve`. A campaign's template is a bomb: nested loops over ranges the sandbox allows
(10^8 iterations, no output). While `/campaign preview` renders it into its time budget
(`campaigns.render_timeout_s`), a client asks GET /healthz every 20 ms and records each answer's time.
Baselines, same run: /healthz with nothing else running, and while the same bomb is rendered on the
event loop itself (what every preview did before renders moved to a worker thread; without the budget
that froze the loop for ~22 s).

    .venv/bin/python benchmarks/render_budget.py [--budget 0.5]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from adapters.console import ConsoleAdapter  # noqa: E402
from bot.app import Runtime, build_app  # noqa: E402
from bot.campaigns import service  # noqa: E402
from bot.campaigns.audience import Recipient  # noqa: E402
from bot.campaigns.templates import TemplateProblem  # noqa: E402
from bot.contacts.importer import import_contacts  # noqa: E402
from bot.db.models import Campaign  # noqa: E402
from tests.conftest import SENDER, make_settings  # noqa: E402
from tests.smtp import free_port  # noqa: E402

BOMB = (
    "<p>Hello {{ first_name }}</p>"
    "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}"
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ org.postal_address }}'
)


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def poll_healthz(base: str, stop: threading.Event, samples: list[float]) -> None:
    """From another thread, so a request can start while the event loop is busy and wait for it."""
    with httpx.Client(base_url=base, timeout=60) as http:
        while not stop.is_set():
            started = time.perf_counter()
            resp = http.get("/healthz")
            samples.append(time.perf_counter() - started)
            assert resp.status_code == 200
            time.sleep(0.02)


async def while_running(base: str, work) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    stop, samples = threading.Event(), []
    poller = threading.Thread(target=poll_healthz, args=(base, stop, samples))
    poller.start()
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.to_thread(poller.join)
    return samples, took


async def main(budget: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        settings = make_settings(
            f"sqlite+aiosqlite:///{folder / 'bench.db'}",
            2525,
            folder,
            web={"port": port},
            campaigns={"render_timeout_s": budget},
        )
        (folder / "templates" / "bomb.html").write_text(BOMB)
        app = await build_app(settings)
        core = app.core
        runtime = Runtime(app)
        console = ConsoleAdapter(SENDER, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(core)
        contacts = folder / "contacts.csv"
        contacts.write_text(
            "email,name,consent_at,consent_source\nlena@example.com,Lena,2026-03-02T10:15:00+00:00,form\n"
        )
        await import_contacts(core.ctx, contacts, "customers")
        reply = await console.say("/campaign new spin --to customers --template bomb --subject Hi")
        assert reply is not None and "Draft campaign" in reply.text, reply
        await runtime.start_web("127.0.0.1", port)
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                for _ in range(20):
                    await http.get("/healthz")
                idle, _ = await while_running(base, lambda: asyncio.sleep(1.5))
                answer: list[str] = []

                async def preview() -> None:
                    out = await console.say("/campaign preview spin")
                    answer.append(out.text if out else "")

                during, preview_s = await while_running(base, preview)
                assert "took longer than" in answer[0], answer[0]

                async def on_the_loop() -> None:  # the old way: the render blocks the loop
                    async with core.ctx.sessions() as session:
                        campaign = (await session.execute(Campaign.__table__.select())).first()
                    assert campaign is not None
                    async with core.ctx.sessions() as session:
                        row = await session.get(Campaign, campaign.id)
                        messages = service.messages_for(core.ctx, row)
                    try:
                        messages.render(Recipient("lena@example.com", "Lena", {}))
                    except TemplateProblem:
                        pass

                blocked, _ = await while_running(base, on_the_loop)
        finally:
            await runtime.stop()
    result = {
        "benchmark": "render_budget",
        "budget_s": budget,
        "preview_s": round(preview_s, 2),
        "healthz_during_preview": figures(during),
        "baseline_idle": figures(idle),
        "baseline_render_on_the_loop": figures(blocked),
    }
    print(
        f"/campaign preview of the bomb took {preview_s:.2f} s and answered: {answer[0].splitlines()[1][:120]}"
    )
    print(f"GET /healthz while it ran (off the loop): {result['healthz_during_preview']}")
    print(f"baseline, idle server: {result['baseline_idle']}")
    print(f"baseline, the same render on the event loop: {result['baseline_render_on_the_loop']}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--budget", type=float, default=0.5, help="campaigns.render_timeout_s")
    print(json.dumps(asyncio.run(main(parser.parse_args().budget))))
