"""Issue "Safe to run for real": dates and values from outside are bounded at every input.

One far-future date must not keep a leaver in every group; NUL, control characters, overrides and
NaN are refused (HR's webhook and CSV, contacts CSV, chat) or cleaned (messengers' directories); an
import says what it applied, not what it planned. Real webhook, real CLI, real adapters on fakes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bot.contacts.importer import import_contacts
from bot.db.models import Contact, Group, Membership, Person
from bot.errors import UserError
from bot.hr.importer import import_staff
from tests.conftest import APPROVER, HR, SENDER
from tests.lifecycle_kit import groups_of, hr_event, lifecycle_bot, post_event, web_client
from tests.test_dingtalk import ding
from tests.test_wecom import world

__all__ = ["ding", "world"]  # fixtures, used by name

IVAN = "ivan@corp.example"
EVERY_GROUP = {"all-staff": "rule:all-staff", "eng": "rule:eng", "berlin": "rule:berlin", "social": "manual"}


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path):
        yield b


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def ivan_joined(lbot, client) -> datetime:  # type: ignore[no-untyped-def]
    joined_at = datetime.now(UTC) - timedelta(days=2)
    r = await post_event(
        client,
        hr_event(
            "joined", "ev-join", "E100", IVAN, iso(joined_at), department="Engineering", location="Berlin"
        ),
    )
    assert r.status_code == 200, r.text
    await lbot.say(HR, f"/addgroup social {IVAN}")
    assert await groups_of(lbot, IVAN) == EVERY_GROUP
    return joined_at


async def last_event_at(lbot) -> datetime | None:  # type: ignore[no-untyped-def]
    async with lbot.core.ctx.sessions() as s:
        return (
            await s.execute(select(Person.last_event_at).where(Person.employee_id == "E100"))
        ).scalar_one()


async def test_a_far_future_event_is_refused_and_a_later_leave_removes_the_person_from_every_group(
    lbot,
) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        joined_at = await ivan_joined(lbot, client)
        future = await post_event(
            client,
            hr_event("changed", "ev-future", "E100", IVAN, "9999-12-31T00:00:00Z", department="Sales"),
        )
        assert future.status_code == 422, future.text
        assert "can't come from the future" in future.json()["error"]
        assert await last_event_at(lbot) == joined_at  # nothing changed
        assert await groups_of(lbot, IVAN) == EVERY_GROUP
        leave = await post_event(client, hr_event("left", "ev-left", "E100", IVAN, iso(datetime.now(UTC))))
        assert leave.status_code == 200 and leave.json()["status"] == "applied", leave.text
        assert sorted(leave.json()["removed"]) == [f"{g}@corp.example" for g in sorted(EVERY_GROUP)]
        # The default skew is a day: an HR system whose clock runs an hour fast is still heard.
        ahead = await post_event(
            client,
            hr_event(
                "joined", "ev-ahead", "E101", "eve@corp.example", iso(datetime.now(UTC) + timedelta(hours=1))
            ),
        )
        assert ahead.status_code == 200 and ahead.json()["status"] == "applied", ahead.text
    assert await groups_of(lbot, IVAN) == {}


async def test_a_person_poisoned_by_a_far_future_date_before_the_check_recovers_with_their_next_event(
    lbot,
) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        await ivan_joined(lbot, client)
        poison = datetime(9999, 12, 31, tzinfo=UTC)  # as an older Postroom stored it
        async with lbot.core.ctx.sessions() as s, s.begin():
            await s.execute(update(Person).where(Person.employee_id == "E100").values(last_event_at=poison))
        leave = await post_event(client, hr_event("left", "ev-left", "E100", IVAN, iso(datetime.now(UTC))))
        assert leave.status_code == 200 and leave.json()["status"] == "applied", leave.text
    assert await groups_of(lbot, IVAN) == {}
    assert await last_event_at(lbot) < datetime.now(UTC) + timedelta(minutes=1)


async def test_a_leave_poisoned_by_a_far_future_date_counts_from_now(lbot) -> None:  # type: ignore[no-untyped-def]
    async with web_client(lbot) as client:
        await ivan_joined(lbot, client)
        async with lbot.core.ctx.sessions() as s, s.begin():  # an old Postroom took a `left` dated 9999
            await s.execute(
                update(Person)
                .where(Person.employee_id == "E100")
                .values(
                    status="left",
                    left_at=datetime(9999, 12, 31, tzinfo=UTC),
                    last_event_at=datetime(9999, 12, 31, tzinfo=UTC),
                )
            )
        again = await post_event(client, hr_event("left", "ev-left-2", "E100", IVAN, iso(datetime.now(UTC))))
        assert again.status_code == 200 and again.json()["status"] == "applied", again.text
    assert await groups_of(lbot, IVAN) == {}


async def test_attributes_may_be_finite_scalars_or_short_lists_of_them(lbot) -> None:  # type: ignore[no-untyped-def]
    attributes = {
        "department": "Engineering",
        "level": 3,
        "ratio": 0.5,
        "remote": True,
        "skills": ["go", 2, None],
        "nothing": None,
    }
    async with web_client(lbot) as client:
        r = await post_event(
            client, hr_event("joined", "ev-a", "E100", IVAN, iso(datetime.now(UTC)), **attributes)
        )
    assert r.status_code == 200, r.text
    async with lbot.core.ctx.sessions() as s:
        stored = (await s.execute(select(Person.attributes).where(Person.employee_id == "E100"))).scalar_one()
    assert stored == {k: v for k, v in attributes.items() if v is not None}


# -- the staff CSV ------------------------------------------------------------------------------
STAFF_HEAD = "employee_id,email,name,department,location\n"


@pytest.mark.parametrize(
    ("row", "says"),
    [
        (
            "E2,bob@corp.example,Bob\x0bBuilder,Engineering,Berlin",
            "Line 3: name contains a control character (U+000B)",
        ),
        (
            "E2,bob@corp.example,Bob,Engi\x00neering,Berlin",
            "Line 3: department contains a control character (U+0000)",
        ),
        (
            "E2\u202e,bob@corp.example,Bob,Engineering,Berlin",
            "Line 3: employee_id contains a text-direction override (U+202E)",
        ),
        (
            "E2,bob@corp.example," + "B" * 201 + ",Engineering,Berlin",
            "Line 3: name is longer than 200 characters",
        ),
    ],
    ids=["VT in a name", "NUL in an attribute", "override in an id", "long name"],
)
async def test_a_staff_file_with_a_control_character_is_refused_naming_the_line(
    lbot, tmp_path, row, says
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "staff.csv"
    path.write_text(STAFF_HEAD + "E1,alice@corp.example,Alice,Engineering,Berlin\n" + row + "\n")
    with pytest.raises(UserError) as refused:
        await import_staff(lbot.core, path)
    assert refused.value.sentence.startswith(says), refused.value.sentence
    async with lbot.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Person))).scalar_one() == 0


def test_hr_import_reports_what_it_applied_and_fails_when_events_were_stale(tmp_path: Path) -> None:
    """`postroom hr import` printed "3 to remove", exited 0 and removed nothing when every event was
    stale. Now it says which events were not applied and exits 1; and a database poisoned by a
    far-future date before the check existed recovers on the next import."""
    (tmp_path / "groups.yaml").write_text(
        "groups:\n  - address: eng\n    members: {department: Engineering}\n"
    )
    people = ["E1,alice@corp.example,Alice", "E2,bob@corp.example,Bob", "E3,chen@corp.example,Chen"]
    (tmp_path / "eng.csv").write_text(
        "employee_id,email,name,department\n" + "".join(f"{p},Engineering\n" for p in people)
    )
    (tmp_path / "sales.csv").write_text(
        "employee_id,email,name,department\n" + "".join(f"{p},Sales\n" for p in people)
    )
    db = tmp_path / "p.db"
    env = {
        **os.environ,
        "POSTROOM_DATABASE__URL": f"sqlite+aiosqlite:///{db}",
        "POSTROOM_GROUPS__RULES_FILE": str(tmp_path / "groups.yaml"),
        "POSTROOM_GROUPS__MAX_REMOVE_SHARE": "1",
        "POSTROOM_ORG__NAME": "Example Corp",
        "POSTROOM_ORG__DOMAINS": '["corp.example"]',
        "POSTROOM_ORG__POSTAL_ADDRESS": "1 Example Street, Berlin",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def eng_members() -> int:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM memberships").fetchone()[0]

    def date_everyone(moment: datetime) -> None:
        with sqlite3.connect(db) as conn:  # the format SQLAlchemy stores on SQLite
            conn.execute("UPDATE people SET last_event_at = ?", (moment.strftime("%Y-%m-%d %H:%M:%S.%f"),))

    first = run("hr", "import", "eng.csv")
    assert first.returncode == 0 and eng_members() == 3, first.stdout + first.stderr
    date_everyone(datetime.now(UTC) + timedelta(hours=1))  # newer than the import, within the skew
    stale = run("hr", "import", "sales.csv")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert "0 added to groups, 0 removed from groups" in stale.stdout
    assert "3 of 3 events were not applied" in stale.stdout
    assert (
        "E1 (alice@corp.example), changed: not applied — an event dated " in stale.stdout
        and "UTC, later than this import, is on record for them" in stale.stdout
    )
    assert "to remove" not in stale.stdout and "Traceback" not in stale.stderr
    assert eng_members() == 3

    date_everyone(datetime(9999, 12, 31))  # what an older Postroom took from the webhook
    # A new export (this file's events were handled, as stale, by the import above).
    (tmp_path / "sales2.csv").write_text(
        "employee_id,email,name,department\n" + "".join(f"{p},Sales\n" for p in reversed(people))
    )
    healed = run("hr", "import", "sales2.csv")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "0 added to groups, 3 removed from groups" in healed.stdout and "not applied" not in healed.stdout
    assert eng_members() == 0


# -- the contacts CSV -----------------------------------------------------------------------------
async def test_contacts_with_control_characters_are_reported_by_line_and_the_rest_imported(
    bot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(
        "email,name,consent_at,consent_source,company\n"
        "lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form,Fischer GmbH\n"
        "nul@example.com,Nul\x00Name,2026-03-02T10:15:00+00:00,signup form,X\n"
        "vt@example.com,Vee\x0bTee,2026-03-02T10:15:00+00:00,signup form,X\n"
        "rlo@example.com,Rlo,2026-03-02T10:15:00+00:00,signup form,\u202eevil\n"
        "src@example.com,Src,2026-03-02T10:15:00+00:00,fair\x07,X\n"
    )
    report = await import_contacts(bot.core.ctx, path, "customers")
    assert report.added == 1
    assert report.bad == [
        (3, "name contains a control character (U+0000); remove it"),
        (4, "name contains a control character (U+000B); remove it"),
        (5, "company contains a text-direction override (U+202E); remove it"),
        (6, "consent_source contains a control character (U+0007); remove it"),
    ]
    async with bot.core.ctx.sessions() as s:
        assert (await s.execute(select(Contact.email))).scalars().all() == ["lena@example.com"]


# -- chat arguments that are stored ---------------------------------------------------------------
async def test_chat_arguments_that_are_stored_refuse_control_characters(bot) -> None:  # type: ignore[no-untyped-def]
    reply = await bot.say(
        SENDER, '/campaign new spring --to customers --template welcome --subject "Hi \u202ethere"'
    )
    assert "The subject contains a text-direction override (U+202E); remove it." in reply, reply
    reply = await bot.say(HR, '/newgroup sales "Sales\x0bTeam"')
    assert "control characters" in reply, reply
    async with bot.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Group))).scalar_one() == 0


async def test_a_rejection_reason_with_a_control_character_is_refused(bot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.csv"
    path.write_text(
        "email,name,consent_at,consent_source\nlena@example.com,Lena,2026-03-02T10:15:00+00:00,form\n"
    )
    await import_contacts(bot.core.ctx, path, "customers")
    assert "Draft campaign" in await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit spring")
    reply = await bot.say(APPROVER, "/reject spring too \x1b[2J loud")
    assert "The reason contains a control character (U+001B); remove it." in reply, reply
    reply = await bot.say(APPROVER, "/reject spring too loud")
    assert "Rejected" in reply, reply


# -- messengers' directories: cleaned, never refused ------------------------------------------------
async def test_a_slack_directory_event_is_cleaned_and_a_far_future_one_is_taken_as_now(rig) -> None:  # type: ignore[no-untyped-def]
    from tests.slack_fake import event_envelope, user
    from tests.test_slack_events import people, wait_audits

    dana = user("U0DANA", "dana@corp.example", "Dana\u202e \x00Diaz", profile={"title": "Eng\x0bineer"})
    far = datetime(9999, 12, 31, tzinfo=UTC).timestamp()
    await rig.event(event_envelope({"type": "team_join", "user": dana}, "Ev0JOIN", at=far))
    assert await wait_audits(rig, 1) == ["person.joined"]
    row = (await people(rig))["dana@corp.example"]
    assert (row.name, row.attributes["slack_title"]) == ("Dana Diaz", "Eng ineer")
    assert row.last_event_at < datetime.now(UTC) + timedelta(minutes=1)
    gone = {**dana, "deleted": True}
    await rig.event(event_envelope({"type": "user_change", "user": gone}, "Ev0LEFT", at=time.time()))
    assert await wait_audits(rig, 2) == ["person.joined", "person.left"]
    assert (await people(rig))["dana@corp.example"].status == "left"


async def test_a_wecom_directory_event_is_cleaned_and_a_far_future_one_is_taken_as_now(world) -> None:  # type: ignore[no-untyped-def]
    from tests.test_wecom import contact_xml

    far = int(datetime(5000, 1, 1, tzinfo=UTC).timestamp())
    join = contact_xml(
        "create_user", "ivan", far, Name="Ivan\u202e Petrov", Position="Lead\u2066", Department="2"
    )
    assert (await world.callback(join)).status_code == 200
    async with world.core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.employee_id == "wecom:ivan"))).scalar_one()
    assert (person.name, person.attributes["wecom_position"]) == ("Ivan Petrov", "Lead")
    assert person.last_event_at < datetime.now(UTC) + timedelta(minutes=1)
    await world.say("hannah", "/newgroup eng", "9001")
    await world.say("hannah", "/addgroup eng ivan@corp.example", "9002")
    del world.fake.users["ivan"]
    assert (await world.callback(contact_xml("delete_user", "ivan", int(time.time())))).status_code == 200
    async with world.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Membership))).scalar_one() == 0
        assert (
            await s.execute(select(Person.status).where(Person.employee_id == "wecom:ivan"))
        ).scalar_one() == "left"


async def test_a_dingtalk_directory_event_is_cleaned_and_a_far_future_one_is_taken_as_now(ding) -> None:  # type: ignore[no-untyped-def]
    ding.fake.users["ivan01"]["name"] = "Ivan\x00\u202e Petrov"
    ding.fake.users["ivan01"]["title"] = "Engi\x1bneer"
    far_ms = int(datetime(5000, 1, 1, tzinfo=UTC).timestamp() * 1000)
    join = ding.fake.event("user_add_org", "ev-f1", {"timeStamp": "1", "userId": ["ivan01"]}, born_ms=far_ms)
    await ding.acked(await ding.fake.push(join))
    await ding.adapter.settle()
    async with ding.core.ctx.sessions() as s:
        person = (await s.execute(select(Person).where(Person.employee_id == "dingtalk:ivan01"))).scalar_one()
    assert (person.name, person.attributes["dingtalk_title"]) == ("Ivan Petrov", "Engi neer")
    assert person.last_event_at < datetime.now(UTC) + timedelta(minutes=1)
    await ding.console.say("/as hannah@corp.example")
    await ding.console.say("/newgroup eng")
    await ding.console.say("/addgroup eng ivan@corp.example")
    del ding.fake.users["ivan01"]
    now_ms = int(time.time() * 1000)
    leave = ding.fake.event(
        "user_leave_org", "ev-f2", {"timeStamp": "2", "userId": ["ivan01"]}, born_ms=now_ms
    )
    await ding.acked(await ding.fake.push(leave))
    await ding.adapter.settle()
    async with ding.core.ctx.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Membership))).scalar_one() == 0
