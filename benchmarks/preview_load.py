"""Does `/healthz` keep its 100 ms budget while 40 approvers' browsers GET a template bomb's preview?

`postroom serve`'s web app (uvicorn on loopback, SQLite) on one event loop, as in `postroom serve`. A
campaign's template is a bomb (nested loops the sandbox allows, no output) that runs into its render
budget (`campaigns.render_timeout_s`) every time it is rendered. `--rounds` times, `--concurrent` GETs of
its preview page start at once (real HTTP, from a child process so the load generator does not compete
for the server's GIL), while the child also asks GET /healthz every 20 ms and records each answer's time. Before the fix every GET rendered again (a failed render was not
kept); now a failure is kept like a page, and at most a few renders run at once (the rest get 503 with
Retry-After). Baseline, same run: as many GETs of an invalid preview link (403 at once: no database, no
render), which is what serving that many requests at once costs by itself.

    .venv/bin/python benchmarks/preview_load.py [--concurrent 40] [--rounds 3] [--budget 0.5]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from adapters.console import ConsoleAdapter  # noqa: E402
from benchmarks.render_budget import BOMB, figures  # noqa: E402
from bot.app import Runtime, build_app  # noqa: E402
from bot.contacts.importer import import_contacts  # noqa: E402
from bot.db.models import Campaign  # noqa: E402
from tests.conftest import SENDER, make_settings  # noqa: E402
from tests.smtp import free_port  # noqa: E402


async def client_side(base: str, path: str, concurrent: int, rounds: int) -> dict[str, object]:
    """In a child process, so the load generator's own threads and GIL do not slow the server it measures:
    GET /healthz every 20 ms while `rounds` times `concurrent` preview GETs start at once."""
    statuses: Counter[int] = Counter()
    took: list[float] = []
    samples: list[float] = []
    limits = httpx.Limits(max_connections=concurrent + 1, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        done = asyncio.Event()

        async def poll() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as health:
                while not done.is_set():
                    started = time.perf_counter()
                    resp = await health.get("/healthz")
                    samples.append(time.perf_counter() - started)
                    assert resp.status_code == 200
                    await asyncio.sleep(0.02)

        async def one() -> None:
            started = time.perf_counter()
            statuses[(await http.get(path)).status_code] += 1
            took.append(time.perf_counter() - started)

        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(concurrent)))
        storm_s = time.perf_counter() - started
        await asyncio.sleep(0.1)
        done.set()
        await poller
    return {
        "storm_s": round(storm_s, 2),
        "preview_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "preview_get": figures(took),
        "healthz_during": figures(samples),
    }


async def main(concurrent: int, rounds: int, budget: float) -> dict[str, object]:
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
        async with core.ctx.sessions() as session:
            campaign = (await session.execute(Campaign.__table__.select())).first()
        assert campaign is not None
        path = "/preview/" + core.ctx.signer.sign_expiring("p", str(campaign.id), ttl_s=3600)
        await runtime.start_web("127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        try:

            async def drive(target: str) -> dict[str, object]:
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--client",
                    base,
                    target,
                    "--concurrent",
                    str(concurrent),
                    "--rounds",
                    str(rounds),
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await child.communicate()
                return dict(json.loads(out.decode().strip().splitlines()[-1]))

            measured = await drive(path)
            # Baseline, same run: as many GETs of a link that is not valid (403: no database, no render).
            floor = await drive("/preview/not-a-valid-token")
        finally:
            await runtime.stop()
    result = {
        "benchmark": "preview_load",
        "concurrent": concurrent,
        "rounds": rounds,
        "budget_s": budget,
        **measured,
        "baseline_invalid_link": floor,
    }
    print(
        f"{rounds} rounds of {concurrent} concurrent preview GETs took {measured['storm_s']} s: "
        f"{measured['preview_statuses']}"
    )
    print(f"each preview GET: {measured['preview_get']}")
    print(f"GET /healthz meanwhile: {measured['healthz_during']}")
    print(f"baseline, as many GETs of an invalid link (403): /healthz {floor['healthz_during']}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--concurrent", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.5, help="campaigns.render_timeout_s")
    parser.add_argument("--client", nargs=2, metavar=("BASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client_side(*args.client, args.concurrent, args.rounds))))
    else:
        print(json.dumps(asyncio.run(main(args.concurrent, args.rounds, args.budget))))
