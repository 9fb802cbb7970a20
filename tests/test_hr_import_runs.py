"""`postroom hr import` applies a snapshot's plain joiners and movers in runs (Lifecycle.apply_snapshot).

Tryout finding: importing about 3,000 staff took 2.5 minutes on SQLite — every row was its own
transaction of some thirty statements (benchmarks/lifecycle.py --import-rows measures it). Runs must
change nothing but the time: the same files, applied in runs and one event at a time, leave the same
record, and the statements an import sends no longer grow with every row.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from bot.db.models import AuditEntry, Group, Membership, Person, PersonId, ProcessedEvent
from bot.events import PersonEvent
from bot.hr import lifecycle
from bot.hr.importer import import_staff
from tests.conftest import HR, ChatBot, _reset_postgres
from tests.lifecycle_kit import lifecycle_bot

HEADER = "employee_id,email,name,department,location"
DEPTS = ("Engineering", "Sales", "Finance")


def staff(n: int, shift: int = 0, start: int = 0) -> list[str]:
    return [
        f"E{i:03d},p{i}@corp.example,Person {i},{DEPTS[(i + shift) % 3]},{'Berlin' if i % 4 == 0 else 'Paris'}"
        for i in range(start, start + n)
    ]


def write(tmp_path: Path, rows: list[str], name: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


async def scenario(bot: ChatBot, tmp_path: Path, left_at: datetime) -> list[str]:
    """Two imports with every kind of row among plain ones; returns what each import said."""
    app = bot.app
    said = [(await import_staff(app.lifecycle, write(tmp_path, staff(40), "first.csv"))).summary()]
    await bot.say(HR, "/addgroup social p3@corp.example p4@corp.example")
    left = PersonEvent("left", "hr-webhook", "E005", "p5@corp.example", {}, "l5", left_at)
    assert (await app.core.handle_person_event(left)).status == "applied"
    rows = staff(40, shift=1)  # everyone moves department
    rows[2] = staff(40)[2]  # as before: unchanged
    rows[7] = "E007,new7@corp.example,Person 7,Sales,Paris"  # an address change
    rows[9] = "E009,p9@corp.example,Renamed Nine,Finance,Berlin"  # a new name
    rows[1] = "X11,p1@corp.example,Person 1,Sales,Paris"  # E001's address under a new id
    rows[12] = "E012,p12+x@corp.example,Person 12,Sales,Paris"  # no person's mailbox
    del rows[10]  # E010 is missing: a leaver
    rows += staff(25, start=100)  # joiners, after the rehire of E005 (in the file again) among the movers
    said.append((await import_staff(app.lifecycle, write(tmp_path, rows, "second.csv"))).summary())
    return said


async def record(bot: ChatBot) -> dict[str, Any]:
    """Everything the imports wrote, without ids and times."""
    async with bot.app.ctx.sessions() as s:
        people = {
            p.employee_id: (p.email, p.name, p.status, json.dumps(p.attributes, sort_keys=True), p.source)
            for p in (await s.execute(select(Person))).scalars()
        }
        who = {p.id: p.employee_id for p in (await s.execute(select(Person))).scalars()}
        members = sorted(
            (address, m.email, m.source, who.get(m.person_id), m.role, m.state)
            for address, m in (await s.execute(select(Group.address, Membership).join(Membership))).all()
        )
        ids = sorted(
            (i.namespace, i.external_id, who[i.person_id])
            for i in (await s.execute(select(PersonId))).scalars()
        )
        seen = sorted(
            (source, event_id)
            for source, event_id in (
                await s.execute(select(ProcessedEvent.source, ProcessedEvent.event_id))
            ).all()
            if source.startswith("person:")
        )
        audit = sorted(
            json.dumps([a.actor, a.via, a.action, a.subject, a.before, a.after, a.detail], sort_keys=True)
            for a in (await s.execute(select(AuditEntry))).scalars()
        )
    return {"people": people, "members": members, "ids": ids, "seen": seen, "audit": audit}


async def fresh(database_url: str, tmp_path: Path, name: str, template: Path) -> str:
    """An empty database again: a new copy of the SQLite template, or PostgreSQL's emptied."""
    if database_url.startswith("sqlite"):
        shutil.copyfile(template, tmp_path / f"{name}.db")
        return f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"
    await _reset_postgres(database_url)
    return database_url


async def test_runs_and_one_event_at_a_time_leave_the_same_record(
    database_url: str, smtp, tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    left_at = datetime.now(UTC) - timedelta(hours=1)  # the same in both: a rehire's event id names it

    async def run_once(url: str, folder: Path) -> tuple[list[str], dict[str, Any]]:
        folder.mkdir()
        async for bot in lifecycle_bot(url, smtp.port, folder, groups={"max_remove_share": 1}):
            said = await scenario(bot, folder, left_at)
            return said, await record(bot)
        raise AssertionError("no bot")

    said, in_runs = await run_once(database_url, tmp_path / "runs")
    database_url = await fresh(database_url, tmp_path, "alone", sqlite_template)
    monkeypatch.setattr(lifecycle, "SNAPSHOT_RUN", 0)  # every event through Lifecycle.apply on its own
    said_alone, alone = await run_once(database_url, tmp_path / "alone")
    for key in in_runs:
        assert in_runs[key] == alone[key], key
    assert said == said_alone
    assert "Imported: 26 joined, 35 changed, 1 left, 1 unchanged;" in said[1], said[1]  # a rehire joins
    assert "X11 (p1@corp.example), joined: not applied — line 3: p1@corp.example belongs to E001" in said[1]
    assert "E012 (p12+x@corp.example), changed: not applied — line 13:" in said[1], said[1]


async def statements(bot: ChatBot, path: Path) -> int:
    sent: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        sent.append(statement)

    engine = bot.app.ctx.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        await import_staff(bot.app.lifecycle, path)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return len(sent)


async def test_an_import_sends_a_bounded_number_of_statements_whatever_its_rows(
    database_url: str, smtp, tmp_path: Path, sqlite_template: Path
) -> None:  # type: ignore[no-untyped-def]
    """Twice the joiners, then twice the movers: a few more statements at most (one event at a time it
    was some thirty more a row)."""
    counts = []
    for n in (40, 80):
        folder = tmp_path / str(n)
        folder.mkdir()
        url = await fresh(database_url, tmp_path, str(n), sqlite_template)
        async for bot in lifecycle_bot(url, smtp.port, folder, groups={"max_remove_share": 1}):
            joined = await statements(bot, write(folder, staff(n), "joiners.csv"))
            moved = await statements(bot, write(folder, staff(n, shift=1), "movers.csv"))
            counts.append((joined, moved))
    (j40, m40), (j80, m80) = counts
    assert j80 - j40 < 4 and m80 - m40 < 4, counts
