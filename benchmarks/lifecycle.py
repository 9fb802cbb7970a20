"""HR lifecycle at company scale: leaver latency and a full reconcile; or a CSV import.

    python benchmarks/lifecycle.py [--database-url URL] [--people 10000] [--groups 1000] [--per-person 50]
    python benchmarks/lifecycle.py --import-rows 3000 [--database-url URL]

With --import-rows: `postroom hr import` of a generated file of that many staff (6 rule groups by
department and location), then of the same staff all moved to another department, each timed; the
baseline, in the same run on a fresh database, applies every event one at a time as the importer did
before it applied runs (Lifecycle.apply_snapshot with SNAPSHOT_RUN 0). The two must leave the same
memberships.

Otherwise:

Sets up `people` people and `groups` rule groups (50 attributes x 20 values, so each person
matches exactly `per-person` groups: 500,000 memberships at the defaults), then measures:
- a `left` event through `Core.handle_person_event` (dedupe, plan, remove from every group,
  audit each removal, HR note), p50/p95 over 200 leavers;
- a full reconcile (`/sync`: rule definitions, every person against the rules, policy, guards,
  apply) with 1% of people moved to another department since the last one.
Baselines from the same run: one audited single-row transaction (the database's floor for an
event) and streaming every membership row (the floor for any full reconcile).
On PostgreSQL a throwaway database is created next to the one in the URL and dropped after.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import count  # noqa: E402  (benchmarks/common.py: this script's folder is on sys.path)
from sqlalchemy import insert, select, text, update  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bot import audit  # noqa: E402
from bot.app import build_app  # noqa: E402
from bot.config import load_settings, normalise_database_url  # noqa: E402
from bot.db.models import Group, Membership, Person  # noqa: E402
from bot.events import PersonEvent  # noqa: E402
from bot.groups import planner  # noqa: E402
from bot.groups.rules import parse_rules  # noqa: E402
from bot.hr import lifecycle as hr_lifecycle  # noqa: E402
from bot.hr.importer import import_staff  # noqa: E402

VALUES = 20


def rules_yaml(groups: int) -> str:
    lines = ["groups:"]
    for g in range(groups):
        dim, val = divmod(g, VALUES)
        lines += [
            f"  - address: g{dim}-{val}",
            "    owners: [owner@corp.example]",
            f"    members: {{a{dim}: v{val}}}",
        ]
    return "\n".join(lines) + "\n"


def attributes(i: int, dims: int, shift: int = 0) -> dict[str, str]:
    return {f"a{d}": f"v{(i * 7 + d * 3 + shift) % VALUES}" for d in range(dims)}


async def setup(app, people: int, groups: int, per_person: int) -> None:  # type: ignore[no-untyped-def]
    core = app.core
    settings = core.ctx.settings
    rules = parse_rules(rules_yaml(groups), settings, "bench.yaml")
    app.rules.use(rules)
    async with core.ctx.sessions() as s, s.begin():
        await planner.sync_group_definitions(s, rules, settings, actor="bench", via="bench")
    dims = groups // VALUES
    assert dims == per_person, "groups / 20 must equal per-person"
    at = datetime.now(UTC) - timedelta(days=30)
    async with core.ctx.sessions() as s, s.begin():
        await s.execute(
            insert(Person),
            [
                {
                    "employee_id": f"E{i:06d}",
                    "email": f"p{i}@corp.example",
                    "name": f"Person {i}",
                    "attributes": attributes(i, dims),
                    "status": "active",
                    "source": "bench",
                    "last_event_at": at,
                }
                for i in range(people)
            ],
        )
    async with core.ctx.sessions() as s:
        ids = dict((await s.execute(select(Group.address, Group.id))).all())
        pids = dict((await s.execute(select(Person.email, Person.id))).all())
    rows = []
    for i in range(people):
        email = f"p{i}@corp.example"
        for d, v in attributes(i, dims).items():
            address = f"g{d[1:]}-{v[1:]}@corp.example"
            rows.append(
                {
                    "group_id": ids[address],
                    "email": email,
                    "person_id": pids[email],
                    "source": f"rule:g{d[1:]}-{v[1:]}",
                    "added_by": "bench",
                }
            )
    for k in range(0, len(rows), 20_000):
        async with core.ctx.sessions() as s, s.begin():
            await s.execute(insert(Membership), rows[k : k + 20_000])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def run(url: str, people: int, groups: int, per_person: int, leavers: int) -> dict[str, object]:
    settings = load_settings(
        read_file=False,
        database={"url": url},
        org={"name": "Bench", "domains": ["corp.example"]},
        groups={"max_remove_count": 100_000},
    )
    app = await build_app(settings)
    core = app.core
    try:
        t0 = time.perf_counter()
        await setup(app, people, groups, per_person)
        setup_s = time.perf_counter() - t0
        async with core.ctx.sessions() as s:
            total = (await s.execute(text("SELECT count(*) FROM memberships"))).scalar_one()
        print(
            f"setup: {people} people, {groups} groups, {total} memberships in {setup_s:.1f} s "
            f"({core.ctx.dialect})",
            file=sys.stderr,
        )

        # Baseline: one audited single-row transaction.
        base = []
        for i in range(200):
            t = time.perf_counter()
            async with core.ctx.sessions() as s, s.begin():
                audit.record(s, actor="bench", via="bench", action="bench.noop", subject=f"bench:{i}")
            base.append((time.perf_counter() - t) * 1000)

        # Leavers: one event each, applied and audited.
        times = []
        now = datetime.now(UTC)
        for i in range(leavers):
            n = (i * 37) % people
            event = PersonEvent("left", "bench", f"E{n:06d}", None, {}, f"leave-{n}", now)
            t = time.perf_counter()
            out = await core.handle_person_event(event)
            times.append((time.perf_counter() - t) * 1000)
            assert out.status == "applied" and len(out.removed) == per_person, (out.status, len(out.removed))
        async with core.ctx.sessions() as s:
            audited = (
                await s.execute(text("SELECT count(*) FROM audit WHERE action = 'membership.remove'"))
            ).scalar_one()
        assert audited == leavers * per_person

        # Drift: 1% of people move (their first attribute changes) since the last reconcile.
        movers = people // 100
        async with core.ctx.sessions() as s, s.begin():
            for i in range(movers):
                n = (i * 53 + 1) % people
                attrs = attributes(n, per_person)
                attrs["a0"] = f"v{(int(attrs['a0'][1:]) + 1) % VALUES}"
                await s.execute(
                    update(Person)
                    .where(Person.employee_id == f"E{n:06d}", Person.status == "active")
                    .values(attributes=attrs)
                )
        t = time.perf_counter()
        async with core.ctx.sessions() as s:
            streamed = len(
                (await s.execute(select(Membership.email, Membership.group_id, Membership.source))).all()
            )
        scan_s = time.perf_counter() - t

        t = time.perf_counter()
        summary = await app.memberships.reconcile(source="sync", actor="bench", via="bench", dry_run=False)
        reconcile_s = time.perf_counter() - t
        first_line = summary.splitlines()[0]
        t = time.perf_counter()
        again = await app.memberships.reconcile(source="sync", actor="bench", via="bench", dry_run=True)
        insync_s = time.perf_counter() - t
        assert "nothing to change" in again, again[:300]
    finally:
        await app.close()
    print(
        f"baseline: one audited single-row transaction p50 {statistics.median(base):.2f} ms, "
        f"p95 {pct(base, 95):.2f} ms",
        file=sys.stderr,
    )
    print(
        f"leaver event ({per_person} groups, audited): p50 {statistics.median(times):.1f} ms, "
        f"p95 {pct(times, 95):.1f} ms, max {max(times):.1f} ms over {leavers} events",
        file=sys.stderr,
    )
    print(f"baseline: reading all {streamed} membership rows {scan_s:.2f} s", file=sys.stderr)
    print(
        f"full reconcile of {people} people with {movers} movers: {reconcile_s:.2f} s ({first_line}); "
        f"dry run when in sync: {insync_s:.2f} s",
        file=sys.stderr,
    )
    return {
        "people": people,
        "groups": groups,
        "per_person": per_person,
        "leaver_p50_ms": round(statistics.median(times), 1),
        "leaver_p95_ms": round(pct(times, 95), 1),
        "reconcile_s": round(reconcile_s, 2),
        "reconcile_in_sync_s": round(insync_s, 2),
        "baseline_txn_p95_ms": round(pct(base, 95), 2),
        "baseline_scan_s": round(scan_s, 2),
        "database": core.ctx.dialect,
    }


IMPORT_RULES = """\
groups:
  - address: all-staff
    members: everyone
  - address: eng
    members: {department: Engineering}
  - address: sales
    members: {department: Sales}
  - address: finance
    members: {department: Finance}
  - address: berlin
    members: {location: Berlin}
  - address: paris
    members: {location: Paris}
"""


def staff_csv(rows: int, shift: int) -> str:
    depts, places = ("Engineering", "Sales", "Finance"), ("Berlin", "Paris", "London")
    lines = ["employee_id,email,name,department,location"]
    lines += [
        f"E{i:06d},p{i}@corp.example,Person {i},{depts[(i + shift) % 3]},{places[i % 3]}" for i in range(rows)
    ]
    return "\n".join(lines) + "\n"


async def run_import(url: str, rows: int, folder: Path) -> dict[str, Any]:
    """The joiners' import and the movers' import of `rows` staff, timed; and the memberships they left."""
    (folder / "groups.yaml").write_text(IMPORT_RULES)
    settings = load_settings(
        read_file=False,
        database={"url": url},
        org={"name": "Bench", "domains": ["corp.example"]},
        groups={
            "rules_file": str(folder / "groups.yaml"),
            "max_remove_count": 1_000_000,
            "max_remove_share": 1,
        },
    )
    app = await build_app(settings)
    try:
        times = []
        for name, shift in (("joiners.csv", 0), ("movers.csv", 1)):
            path = folder / name
            path.write_text(staff_csv(rows, shift))
            t = time.perf_counter()
            result = await import_staff(app.lifecycle, path)
            times.append(time.perf_counter() - t)
            assert not result.not_applied and result.held is None, result.summary()[:500]
        async with app.core.ctx.sessions() as s:
            members = sorted(
                (a, e)
                for a, e in (await s.execute(select(Group.address, Membership.email).join(Membership))).all()
            )
        dialect = app.core.ctx.dialect
    finally:
        await app.close()
    return {"joiners_s": times[0], "movers_s": times[1], "members": members, "database": dialect}


async def import_bench(args: argparse.Namespace) -> dict[str, Any]:
    rows = args.import_rows
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    runs = await one_database(args, lambda url, folder: run_import(url, rows, folder))
    hr_lifecycle.SNAPSHOT_RUN, kept = 0, hr_lifecycle.SNAPSHOT_RUN  # the baseline: one event at a time
    try:
        alone = await one_database(args, lambda url, folder: run_import(url, rows, folder))
    finally:
        hr_lifecycle.SNAPSHOT_RUN = kept
    assert runs["members"] == alone["members"], "runs and one event at a time left different memberships"
    for what in ("joiners", "movers"):
        r, a = float(runs[f"{what}_s"]), float(alone[f"{what}_s"])
        print(
            f"import of {rows} {what}: {r:.2f} s in runs of {kept} ({rows / r:,.0f} rows/s); baseline one event "
            f"at a time {a:.2f} s ({rows / a:,.0f} rows/s): {a / r:.1f}x ({runs['database']})",
            file=sys.stderr,
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    return {
        "import_rows": rows,
        "joiners_s": round(float(runs["joiners_s"]), 2),
        "movers_s": round(float(runs["movers_s"]), 2),
        "baseline_joiners_s": round(float(alone["joiners_s"]), 2),
        "baseline_movers_s": round(float(alone["movers_s"]), 2),
        "memberships": len(runs["members"]),
        "database": runs["database"],
    }


async def one_database(
    args: argparse.Namespace, job: Callable[[str, Path], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """`job(url, folder)` on a new database: a temporary SQLite file, or a throwaway PostgreSQL database
    next to the one in --database-url."""
    with tempfile.TemporaryDirectory() as tmp:
        if not args.database_url:
            return await job(f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp))
        url = normalise_database_url(args.database_url)
        if not url.startswith("postgresql"):
            return await job(url, Path(tmp))
        name = f"postroom_bench_{uuid.uuid4().hex[:8]}"
        admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            return await job(url.rsplit("/", 1)[0] + "/" + name, Path(tmp))
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            await admin.dispose()


async def with_database(args: argparse.Namespace) -> dict[str, object]:
    if not args.database_url:
        with tempfile.TemporaryDirectory() as tmp:
            return await run(
                f"sqlite+aiosqlite:///{tmp}/bench.db", args.people, args.groups, args.per_person, args.leavers
            )
    url = normalise_database_url(args.database_url)
    if not url.startswith("postgresql"):
        return await run(url, args.people, args.groups, args.per_person, args.leavers)
    name = f"postroom_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        return await run(
            url.rsplit("/", 1)[0] + "/" + name, args.people, args.groups, args.per_person, args.leavers
        )
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    p.add_argument("--people", type=count, default=10_000)
    p.add_argument("--groups", type=count, default=1_000, help=f"must be {VALUES} × --per-person")
    p.add_argument("--per-person", type=count, default=50)
    p.add_argument("--leavers", type=count, default=200)
    p.add_argument(
        "--import-rows",
        type=count,
        default=None,
        help="measure `postroom hr import` of this many staff instead",
    )
    args = p.parse_args()
    if args.import_rows is not None:
        print(json.dumps(asyncio.run(import_bench(args))))
        return
    if args.groups != VALUES * args.per_person:
        p.error(
            f"--groups must be {VALUES} × --per-person (each attribute has {VALUES} values, one group each): "
            f"with --per-person {args.per_person} use --groups {VALUES * args.per_person}."
        )
    if args.leavers > args.people:
        p.error(f"--leavers ({args.leavers}) can't be more than --people ({args.people}).")
    result = asyncio.run(with_database(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
