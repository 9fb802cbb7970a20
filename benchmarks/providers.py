"""Group providers at company scale: a leaver removed from 50 groups on each platform, and a full import.

    python benchmarks/providers.py [--leavers 20] [--groups 50] [--import-groups 1000] [--import-members 50]
                                   [--providers google,microsoft,wecom,ldap]

For each provider — the fakes of Google's, Microsoft's and WeCom's APIs on loopback (tests/fake_*.py,
the same the tests use) and a real OpenLDAP slapd started in a temporary directory — `groups` rule
groups everyone is in live on that platform. A `left` event is applied through the core (dedupe, plan,
guard, rows marked `removing`, outbox entries, commit) and the outbox pushes it; the latency is from
the event to the platform having confirmed every removal (p50/p95 over `leavers`), with the API calls
each leaver used. The baseline, in the same run: the same leaver on the `local` provider (Postroom's
database only). Then `postroom groups import --from google` of `import-groups` groups with
`import-members` members each, timed. SQLite in a temporary folder. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import count  # noqa: E402

from bot.app import build_app  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.events import PersonEvent  # noqa: E402
from bot.groups import planner  # noqa: E402
from bot.groups.importer import import_groups  # noqa: E402
from tests import platform_harness  # noqa: E402
from tests.provider_rig import google_platform, graph_platform, running_slapd, wecom_platform  # noqa: E402

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def settings_for(folder: Path, provider: str, section: dict[str, Any], groups: int) -> Any:
    rules = folder / "groups.yaml"
    rules.write_text(
        "groups:\n"
        + "".join(
            f"  - address: g{i}\n    provider: {provider}\n    members: everyone\n" for i in range(groups)
        )
    )
    extra = {provider: section} if provider != "local" else {}
    return load_settings(
        read_file=False,
        read_env=False,
        database={"url": f"sqlite+aiosqlite:///{folder / 'postroom.db'}"},
        org={"domains": ["corp.example"]},
        groups={"rules_file": str(rules), "max_add_count": 100_000},
        providers={**extra, "max_inline_wait_s": 5},
    )


def event(kind: str, i: int, minutes: int) -> PersonEvent:
    return PersonEvent(
        kind,  # type: ignore[arg-type]
        "hr-webhook",
        f"E{i:05d}",
        f"p{i}@corp.example",
        {"department": "Engineering"},
        f"ev-{kind}-{i}",
        T0 + timedelta(minutes=minutes),
        f"Person {i}",
    )


async def leavers(
    name: str, section: dict[str, Any], folder: Path, n: int, groups: int, prepare: Any
) -> dict[str, Any]:
    settings = settings_for(folder, name, section, groups)
    app = await build_app(settings)
    try:
        async with app.ctx.sessions() as s, s.begin():
            await planner.sync_group_definitions(s, app.rules.current(), settings, actor="bench", via="bench")
        await prepare(groups)
        for i in range(n):
            await app.core.handle_person_event(event("joined", i, 0))
        await app.drain(600)
        provider = app.providers.get(name) if name != "local" else None
        times, calls = [], []
        for i in range(n):
            before = provider.calls if provider else 0
            start = time.perf_counter()
            await app.core.handle_person_event(event("left", i, 1))
            await app.drain(600)
            times.append((time.perf_counter() - start) * 1000)
            calls.append((provider.calls if provider else 0) - before)
            if await app.outbox.pending():
                raise SystemExit(f"{name}: removals still waiting after the leaver {i}")
    finally:
        await app.close()
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, math.ceil(len(times) * 0.95) - 1)], 1),
        "api_calls_per_leaver": round(statistics.mean(calls), 1),
    }


async def full_import(folder: Path, groups: int, members: int) -> dict[str, Any]:
    async with google_platform(folder) as g:
        for i in range(groups):
            g.fake.add_group(
                f"imp{i}@corp.example",
                {f"m{(i * 37 + j) % 10_000}@corp.example": "member" for j in range(members)},
            )
        settings = load_settings(
            read_file=False,
            read_env=False,
            database={"url": f"sqlite+aiosqlite:///{folder / 'import.db'}"},
            org={"domains": ["corp.example"]},
            providers={"google": g.settings},
        )
        app = await build_app(settings)
        try:
            start = time.perf_counter()
            result = await import_groups(app.ctx, app.memberships, "google", dry_run=False)
            seconds = time.perf_counter() - start
            calls = app.providers.get("google").calls
        finally:
            await app.close()
    return {
        "groups": len(result.groups_new),
        "memberships": result.members,
        "seconds": round(seconds, 2),
        "api_calls": calls,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--leavers", type=count, default=20)
    ap.add_argument("--groups", type=count, default=50)
    ap.add_argument("--import-groups", type=count, default=1000)
    ap.add_argument("--import-members", type=count, default=50)
    ap.add_argument("--providers", default="google,microsoft,wecom,ldap")
    args = ap.parse_args()
    out: dict[str, Any] = {"leavers": args.leavers, "groups": args.groups}
    with tempfile.TemporaryDirectory(prefix="postroom-bench-providers-") as tmp:
        root = Path(tmp)

        async def nothing(groups: int) -> None:
            return None

        folder = root / "local"
        folder.mkdir()
        out["local (baseline)"] = await leavers("local", {}, folder, args.leavers, args.groups, nothing)
        print(f"local (baseline): {out['local (baseline)']}", flush=True)
        for name in filter(None, args.providers.split(",")):
            folder = root / name
            folder.mkdir()
            async with AsyncExitStack() as stack:
                if name == "google":
                    run = await stack.enter_async_context(google_platform(folder))
                    section, fake = run.settings, run.fake

                    async def prepare(groups: int, fake: Any = fake) -> None:
                        for i in range(groups):
                            fake.add_group(f"g{i}@corp.example")
                elif name == "microsoft":
                    run = await stack.enter_async_context(graph_platform(folder))
                    section, fake = run.settings, run.fake

                    async def prepare(groups: int, fake: Any = fake) -> None:
                        for i in range(args.leavers):
                            fake.user(f"p{i}@corp.example")
                elif name == "wecom":
                    run = await stack.enter_async_context(wecom_platform(folder))
                    section = run.settings
                    prepare = nothing
                elif name == "ldap":
                    server = stack.enter_context(running_slapd())
                    server.ldif(
                        "".join(
                            f"dn: uid=p{i},ou=people,dc=corp,dc=example\nobjectClass: inetOrgPerson\nuid: p{i}\n"
                            f"cn: p{i}\nsn: p\nmail: p{i}@corp.example\n\n"
                            for i in range(args.leavers)
                        )
                    )
                    section = server.settings()
                    prepare = nothing
                else:
                    raise SystemExit(f"unknown provider {name}")
                out[name] = await leavers(name, section, folder, args.leavers, args.groups, prepare)
                print(f"{name}: {out[name]}", flush=True)
        folder = root / "import"
        folder.mkdir()
        out["import_google"] = await full_import(folder, args.import_groups, args.import_members)
        print(f"import from google: {out['import_google']}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    del platform_harness  # imported for the same sys.path set-up as the tests; not used here
    asyncio.run(main())
