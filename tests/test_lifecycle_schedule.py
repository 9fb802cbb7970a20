"""Grace periods survive a restart; the audit report; Postfix lookups; the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from bot.app import build_app
from bot.db.models import Membership, Person
from bot.events import PersonEvent
from bot.groups import report
from bot.groups.export import postfix_virtual
from bot.hr.importer import import_staff
from bot.scheduler import JOBS_TABLE
from tests.conftest import HR
from tests.lifecycle_kit import groups_of, lifecycle_bot

ROOT = Path(__file__).parents[1]
STAFF = """employee_id,email,name,department,location
E1,alice@corp.example,Alice,Engineering,Berlin
E2,bob@corp.example,Bob,Engineering,Shanghai
E3,chen@corp.example,Chen,Sales,Shanghai
"""


async def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_leaver_grace_period_is_kept_across_a_restart(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    staff = tmp_path / "staff.csv"
    staff.write_text(STAFF)
    settings = None
    async for bot in lifecycle_bot(database_url, smtp.port, tmp_path, groups={"leaver_grace_hours": 1}):
        settings = bot.core.ctx.settings
        joined_at = datetime.now(UTC) - timedelta(hours=2)
        for n, (emp, email) in enumerate((("E1", "alice@corp.example"), ("E2", "bob@corp.example"))):
            await bot.core.handle_person_event(
                PersonEvent("joined", "test", emp, email, {"department": "Engineering"}, f"j{n}", joined_at)
            )
        await bot.say(HR, "/addgroup social bob@corp.example")
        at = datetime.now(UTC) - timedelta(hours=1) + timedelta(seconds=1.5)
        out = await bot.core.handle_person_event(PersonEvent("left", "test", "E2", None, {}, "g1", at))
        assert out.removal_due is not None and out.removed == []
        assert set(await groups_of(bot, "bob@corp.example")) == {"all-staff", "eng", "social"}
        assert "they stay in their groups until" in bot.out.getvalue()
        async with bot.core.ctx.sessions() as s:
            jobs = (await s.execute(text(f"SELECT id FROM {JOBS_TABLE}"))).scalars().all()
        assert "hr.leaver:2" in jobs
    # The process is gone; a new one runs the scheduler and the job fires when due.
    assert settings is not None
    app = await build_app(settings)
    core = app.core
    try:
        await app.scheduler.start(run_jobs=True)

        async def gone() -> bool:
            async with core.ctx.sessions() as s:
                return (
                    await s.execute(select(Membership.id).where(Membership.email == "bob@corp.example"))
                ).first() is None

        await wait_for(gone)
        async with core.ctx.sessions() as s:
            assert (
                await s.execute(select(Membership.id).where(Membership.email == "alice@corp.example"))
            ).first()
    finally:
        await app.close()


async def test_audit_report_lists_what_needs_a_look(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    staff = tmp_path / "staff.csv"
    staff.write_text(STAFF)
    async for bot in lifecycle_bot(database_url, smtp.port, tmp_path):
        await import_staff(bot.app.lifecycle, staff)
        assert "Leavers still in a group (must be none): none" in await bot.say(HR, "/audit")
        await bot.say(HR, "/addgroup partners lena@example.com")
        await bot.say(HR, "/newgroup quiet")
        await bot.say(HR, "/addgroup social chen@corp.example")
        async with bot.core.ctx.sessions() as s, s.begin():
            # As if a removal had failed half-way: a leaver with a membership left behind.
            await s.execute(
                update(Person)
                .where(Person.email == "bob@corp.example")
                .values(status="left", left_at=datetime.now(UTC) - timedelta(days=1))
            )
            await s.execute(
                update(Membership)
                .where(Membership.email == "chen@corp.example", Membership.source == "manual")
                .values(added_at=datetime.now(UTC) - timedelta(days=400))
            )
        reply = await bot.say(HR, "/audit")
        assert "2 leaver membership(s) remain" in reply  # bob is in all-staff and eng
        assert "Leavers still in a group (must be none): bob@corp.example in all-staff@corp.example" in reply
        assert (
            "Groups with no owner: berlin@corp.example, partners@corp.example, quiet@corp.example, "
            "sales@corp.example, social@corp.example" in reply
        )
        assert "Empty groups: quiet@corp.example\n" in reply
        assert "External members: lena@example.com in partners@corp.example" in reply
        assert "chen@corp.example in social@corp.example (since" in reply
        assert "for HR or admins;" in await bot.say("nora@corp.example", "/audit")
        # /sync clears the leaver; the report then says so.
        await bot.say(HR, "/sync")
        assert "Leavers still in a group (must be none): none" in await bot.say(HR, "/audit")
        # The report is on the calendar (default: Mondays 08:00 UTC) and posts to HR when it runs.
        bot.app.schedule_group_jobs()
        nxt = bot.app.scheduler.next_run(report.JOB_ID)
        assert nxt is not None and nxt.weekday() == 0 and nxt.hour == 8


async def test_postfix_lookup_query_and_export_expand_a_group(database_url, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    staff = tmp_path / "staff.csv"
    staff.write_text(STAFF)
    async for bot in lifecycle_bot(database_url, smtp.port, tmp_path):
        await import_staff(bot.app.lifecycle, staff)
        # Found looking for policy bypasses: a group's address among eng@'s members (HR added it with
        # --unknown-ok, or an import brought a nested group) was expanded by Postfix to that group's members
        # without that group's posting policy being asked; the relay never mails it. Neither does Postfix.
        reply = await bot.say(HR, "/addgroup eng partners@corp.example --unknown-ok")
        assert "partners@corp.example" in reply
        async with bot.core.ctx.sessions() as session:
            assert "partners@corp.example" in set((await session.execute(select(Membership.email))).scalars())
        cf = "pgsql-groups.cf" if bot.core.ctx.dialect == "postgresql" else "sqlite-groups.cf"
        query = re.search(r"^query = (.*)$", (ROOT / "manifests/postfix" / cf).read_text(), re.M).group(1)  # type: ignore[union-attr]
        async with bot.core.ctx.engine.connect() as conn:
            rows = (
                (await conn.execute(text(query.replace("'%s'", ":a")), {"a": "eng@corp.example"}))
                .scalars()
                .all()
            )
        assert sorted(rows) == ["alice@corp.example", "bob@corp.example"]
        table = await postfix_virtual(bot.core.ctx)
        assert "eng@corp.example alice@corp.example,bob@corp.example\n" in table
        assert "social@corp.example" not in table  # no members: no entry


def test_cli_hr_import_dry_run_and_groups_export(tmp_path: Path) -> None:
    (tmp_path / "groups.yaml").write_text(
        "groups:\n  - address: eng\n    members: {department: Engineering}\n"
    )
    (tmp_path / "staff.csv").write_text(STAFF)
    env = {
        **os.environ,
        "POSTROOM_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
        "POSTROOM_GROUPS__RULES_FILE": str(tmp_path / "groups.yaml"),
        "POSTROOM_ORG__NAME": "Example Corp",
        "POSTROOM_ORG__DOMAINS": '["corp.example"]',
        "POSTROOM_ORG__POSTAL_ADDRESS": "1 Example Street, Berlin",
    }
    exe = [sys.executable, "-m", "bot.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*exe, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    bad = run("hr", "import", "nope.csv")
    assert bad.returncode == 1 and "Can't read nope.csv" in bad.stderr
    dry = run("hr", "import", "staff.csv", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Dry run — nothing changed. Groups: would create eng@corp.example.\n3 joining" in dry.stdout
    assert "+ bob@corp.example to eng@corp.example" in dry.stdout  # what the real run does
    real = run("hr", "import", "staff.csv")
    assert real.returncode == 0 and "Imported: 3 joined" in real.stdout, real.stderr
    assert "+ bob@corp.example to eng@corp.example" in real.stdout
    out = run("groups", "export", "--format", "postfix")
    assert out.returncode == 0 and "eng@corp.example alice@corp.example,bob@corp.example" in out.stdout
    none = run("groups", "plan", "1")  # nothing was held
    assert none.returncode == 1 and none.stderr.strip() == "Error: There is no membership plan #1.", (
        none.stderr
    )


@pytest.mark.parametrize("bad", ["0 8 * *", "61 8 * * 1"])
def test_a_bad_audit_cron_stops_start_up_with_a_sentence(bad: str) -> None:
    from bot.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="groups.audit_cron"):
        load_settings(read_file=False, groups={"audit_cron": bad})
