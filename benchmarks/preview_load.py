"""Does `/healthz` keep its 100 ms budget while template bombs are previewed?

`postroom serve`'s web app (uvicorn on loopback, SQLite) on one event loop, as in `postroom serve`. Each
campaign's template is a bomb (nested loops the sandbox allows, no output) that runs into its render
budget (`campaigns.render_timeout_s`) every time it is rendered. A child process (so the load generator
does not compete for the server's GIL) asks GET /healthz every 20 ms and records each answer's time, in
three phases of the same run:

- baseline: nothing else (no preview);
- 1 preview: `--single` times, one GET of a bomb campaign's preview not rendered before (a failed render
  is kept like a page, so each GET is a campaign of its own), one after the other;
- 40 previews: `--rounds` times, `--concurrent` GETs at once, each of a bomb campaign not rendered before
  (at most a few render at once; the rest get 503 with Retry-After);
- 40 invalid links: as many GETs at once of a preview link that is not valid (403 at once: no database,
  no render), what serving that many requests at once costs by itself.

/healthz figures are of the requests that started while the phase's previews were under way.

    .venv/bin/python benchmarks/preview_load.py [--concurrent 40] [--rounds 3] [--single 5] [--budget 0.5]
        [--render-processes 1]   # 0: the renders in threads of the server, as before

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
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from adapters.console import ConsoleAdapter  # noqa: E402
from benchmarks.render_budget import BOMB  # noqa: E402
from bot.app import Runtime, build_app  # noqa: E402
from bot.contacts.importer import import_contacts  # noqa: E402
from bot.db.models import Campaign  # noqa: E402
from tests.conftest import SENDER, make_settings  # noqa: E402
from tests.smtp import free_port  # noqa: E402


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples) or [0.0]
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def client_side(base: str, phases: dict[str, list[list[str]]]) -> dict[str, object]:
    """In a child process: GET /healthz every 20 ms while each phase's rounds of preview GETs run (the
    GETs of one round at once, rounds one after the other); `baseline` is 2 s of /healthz alone."""
    samples: list[tuple[float, float]] = []  # (started, took)
    out: dict[str, object] = {}
    concurrent = max((len(r) for rounds in phases.values() for r in rounds), default=1)
    limits = httpx.Limits(max_connections=concurrent + 1, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        done = asyncio.Event()

        async def poll() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as health:
                while not done.is_set():
                    started = time.perf_counter()
                    resp = await health.get("/healthz")
                    samples.append((started, time.perf_counter() - started))
                    assert resp.status_code == 200
                    await asyncio.sleep(0.02)

        def during(since: float, until: float) -> list[float]:
            return [took for at, took in samples if since <= at < until]

        poller = asyncio.create_task(poll())
        await asyncio.sleep(0.3)
        since = time.perf_counter()
        await asyncio.sleep(2.0)
        out["baseline"] = {"healthz": figures(during(since, time.perf_counter()))}
        for phase, rounds in phases.items():
            statuses: Counter[int] = Counter()
            took: list[float] = []

            async def one(path: str, statuses: Counter[int], took: list[float]) -> None:
                started = time.perf_counter()
                statuses[(await http.get(path)).status_code] += 1
                took.append(time.perf_counter() - started)

            since = time.perf_counter()
            for paths in rounds:
                await asyncio.gather(*(one(p, statuses, took) for p in paths))
            until = time.perf_counter()
            out[phase] = {
                "wall_s": round(until - since, 2),
                "preview_statuses": {str(k): v for k, v in sorted(statuses.items())},
                "preview_get": figures(took),
                "healthz": figures(during(since, until)),
            }
            await asyncio.sleep(0.2)
        done.set()
        await poller
    return out


async def main(concurrent: int, rounds: int, single: int, budget: float, processes: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        settings = make_settings(
            f"sqlite+aiosqlite:///{folder / 'bench.db'}",
            2525,
            folder,
            web={"port": port},
            campaigns={"render_timeout_s": budget, "render_processes": processes},
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

        async def bombs(prefix: str, count: int) -> list[str]:
            """`count` campaigns with the bomb template (a cached preview is per campaign): their links."""
            links = []
            for i in range(count):
                name = f"{prefix}{i}"
                reply = await console.say(f"/campaign new {name} --to customers --template bomb --subject Hi")
                assert reply is not None and "Draft campaign" in reply.text, reply
                async with core.ctx.sessions() as session:
                    row = (
                        await session.execute(Campaign.__table__.select().where(Campaign.name == name))
                    ).first()
                assert row is not None
                links.append("/preview/" + core.ctx.signer.sign_expiring("p", str(row.id), ttl_s=3600))
            return links

        one_links = await bombs("one", single)
        many_links = await bombs("many", concurrent * rounds)
        phases = {
            "one_preview": [[link] for link in one_links],
            f"{concurrent}_previews": [
                many_links[i * concurrent : (i + 1) * concurrent] for i in range(rounds)
            ],
            # What serving that many requests at once costs by itself: a link that is not valid (403 at
            # once: no database, no render).
            f"{concurrent}_invalid_links": [["/preview/not-a-valid-token"] * concurrent] * rounds,
        }
        await runtime.start_web("127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                base,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await child.communicate(json.dumps(phases).encode())
            measured = dict(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            await runtime.stop()
    result = {
        "benchmark": "preview_load",
        "concurrent": concurrent,
        "rounds": rounds,
        "single": single,
        "budget_s": budget,
        "render_processes": settings.campaigns.render_processes,
        **measured,
    }
    for phase, found in measured.items():
        extra = (
            f"; {found['wall_s']} s, previews {found['preview_statuses']}, each GET {found['preview_get']}"
            if "wall_s" in found
            else ""
        )
        print(f"{phase}: GET /healthz {found['healthz']}{extra}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--concurrent", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=5, help="one-at-a-time bomb previews")
    parser.add_argument("--budget", type=float, default=0.5, help="campaigns.render_timeout_s")
    parser.add_argument(
        "--render-processes",
        type=int,
        default=1,
        help="campaigns.render_processes (0: renders in threads of the server, as before)",
    )
    parser.add_argument("--client", metavar="BASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(client_side(args.client, json.loads(sys.stdin.read())))))
    else:
        print(
            json.dumps(
                asyncio.run(
                    main(args.concurrent, args.rounds, args.single, args.budget, args.render_processes)
                )
            )
        )
