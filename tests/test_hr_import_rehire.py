"""`postroom hr import` of a CSV that rehires a former employee.

Tryout finding: the import refused the file saying the rehired person's address was "outside
corp.example" — it is inside; the guard had refused adding them because, until the file's own
rehire applies, they are a leaver. A rehire in the file now applies; a real refusal says its own
reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.models import Person, PersonId
from bot.errors import UserError
from bot.events import PersonEvent
from bot.hr.importer import import_staff
from tests.lifecycle_kit import groups_of, lifecycle_bot

HEADER = "employee_id,email,name,department"
ROWS = [f"E{i:03d},p{i}@corp.example,Person {i},Engineering" for i in range(4)]


@pytest.fixture
async def lbot(database_url, smtp, tmp_path):  # type: ignore[no-untyped-def]
    async for b in lifecycle_bot(database_url, smtp.port, tmp_path, groups={"max_remove_share": 1}):
        yield b


def write(tmp_path: Path, rows: list[str], name: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


async def test_a_csv_that_rehires_a_former_employee_applies(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    await import_staff(app.lifecycle, write(tmp_path, ROWS, "all.csv"))
    assert "eng" in await groups_of(lbot, "p3@corp.example")
    left = await lbot.core.handle_person_event(
        PersonEvent(
            "left", "hr-webhook", "E003", "p3@corp.example", {}, "l3", datetime.now(UTC) - timedelta(hours=1)
        )
    )
    assert left.status == "applied" and await groups_of(lbot, "p3@corp.example") == {}
    # The next export has them again: a rehire.
    result = await import_staff(app.lifecycle, write(tmp_path, ROWS, "again.csv"))
    text = result.summary()
    assert "outside" not in text, text
    assert result.done.get("joined") == 1, text
    assert "eng" in await groups_of(lbot, "p3@corp.example")
    async with app.ctx.sessions() as s:
        status = (await s.execute(select(Person.status).where(Person.employee_id == "E003"))).scalar_one()
    assert status == "active"


async def test_a_real_refusal_in_the_file_says_its_own_reason(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = lbot.app
    outside = [*ROWS, "E009,guest@partner.example,Guest,Engineering"]
    with pytest.raises(UserError) as refused:
        await import_staff(app.lifecycle, write(tmp_path, outside, "bad.csv"))
    assert "guest@partner.example is outside corp.example" in refused.value.sentence


async def test_a_name_with_an_invisible_character_refuses_the_file(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = [*ROWS, "E009,p9@corp.example,Pe\u200dter,Engineering"]
    with pytest.raises(UserError) as refused:
        await import_staff(lbot.app.lifecycle, write(tmp_path, rows, "zwj.csv"))
    assert "Line 6: name contains an invisible character (U+200D)" in refused.value.sentence


async def test_a_csv_row_under_a_new_id_with_a_leavers_address_is_refused_not_taken_as_their_rehire(
    lbot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The webhook's rule (tests/test_hr_webhook.py), now in the lifecycle, so the CSV keeps it too: E003
    left; a file listing p3@ under E003b would have re-activated E003 by the address."""
    app = lbot.app
    await import_staff(app.lifecycle, write(tmp_path, ROWS, "all.csv"))
    left = await lbot.core.handle_person_event(
        PersonEvent(
            "left", "hr-webhook", "E003", "p3@corp.example", {}, "l3", datetime.now(UTC) - timedelta(hours=1)
        )
    )
    assert left.status == "applied"
    rows = [*ROWS[:3], "E003b,p3@corp.example,Person 3,Engineering"]
    result = await import_staff(app.lifecycle, write(tmp_path, rows, "renumbered.csv"))
    text = result.summary()
    assert "p3@corp.example belongs to E003, who left; a rehire keeps the employee id" in text, text
    assert await groups_of(lbot, "p3@corp.example") == {}
    async with app.ctx.sessions() as s:
        status = (await s.execute(select(Person.status).where(Person.employee_id == "E003"))).scalar_one()
    assert status == "left"


async def test_a_csv_row_whose_email_is_no_persons_mailbox_is_refused_and_the_rest_applies(
    lbot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The webhook's refusal (tests/test_hr_webhook.py), in a snapshot: the row is not applied, with its
    line and why; everyone else in the file is."""
    app = lbot.app
    await import_staff(app.lifecycle, write(tmp_path, ROWS, "all.csv"))
    rows = [*ROWS, "E010,p1+lists@corp.example,Tagged,Engineering", "E011,postmaster@corp.example,PM,Sales"]
    rows[0] = "E000,eng+x@corp.example,Person 0,Engineering"  # an address change to a group's, tagged
    rows.append("E012,p12@corp.example,Person 12,Sales")
    result = await import_staff(app.lifecycle, write(tmp_path, rows, "tagged.csv"))
    text = result.summary()
    assert "E010 (p1+lists@corp.example), joined: not applied — line 6: p1+lists@corp.example is " in text, (
        text
    )
    assert (
        "E011 (postmaster@corp.example), joined: not applied — line 7: postmaster@corp.example is a role"
        in text
    )
    assert "E000 (eng+x@corp.example), changed: not applied — line 2: eng+x@corp.example is the group" in text
    assert result.done == {"joined": 1}, text
    assert "sales" in await groups_of(lbot, "p12@corp.example")
    assert "eng" in await groups_of(lbot, "p0@corp.example")  # E000 stays as on record
    async with app.ctx.sessions() as s:
        emails = set((await s.execute(select(Person.email))).scalars())
    assert "p1+lists@corp.example" not in emails and "postmaster@corp.example" not in emails
    assert "p0@corp.example" in emails


async def test_a_csv_row_taking_over_another_persons_address_is_refused_with_its_line(lbot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tryout finding: a row under a new id (X12) with an active person's address (p1@, E001's) was taken
    silently — as E001 'unchanged' when its values matched, so E001's own absence went unnoticed, and X12
    never existed; and a row giving E000 the address of E002 (who is missing from the file) was planned as
    E000's move. HR ids are immutable (the webhook refuses both): each row is refused with its line, nothing
    changes for it, and the rest of the file applies as usual (E002, missing, leaves)."""
    app = lbot.app
    await import_staff(app.lifecycle, write(tmp_path, ROWS, "all.csv"))
    before = await groups_of(lbot, "p1@corp.example")
    rows = [
        "E000,p2@corp.example,Person 0,Sales",
        "X12,p1@corp.example,Person 1,Engineering",
        ROWS[3],
        "E009,p9@corp.example,Person 9,Sales",
    ]
    result = await import_staff(app.lifecycle, write(tmp_path, rows, "renumbered.csv"))
    text = result.summary()
    assert (
        "X12 (p1@corp.example), joined: not applied — line 3: p1@corp.example belongs to E001; an HR id is "
        "one person's and does not change: send the event for E001, or correct the email" in text
    ), text
    assert (
        "E000 (p2@corp.example), changed: not applied — line 2: p2@corp.example belongs to E002, another "
        "person on record" in text
    ), text
    assert result.done == {"joined": 1, "left": 1}, text
    assert await groups_of(lbot, "p1@corp.example") == before
    assert "eng" in await groups_of(lbot, "p0@corp.example") and "sales" in await groups_of(
        lbot, "p9@corp.example"
    )
    assert await groups_of(lbot, "p2@corp.example") == {}  # E002 left: missing from the file
    async with app.ctx.sessions() as s:
        people = dict((await s.execute(select(Person.employee_id, Person.email))).all())
        ids = set((await s.execute(select(PersonId.external_id))).scalars())
    assert people["E000"] == "p0@corp.example" and people["E001"] == "p1@corp.example", people
    assert "X12" not in people and "X12" not in ids, (people, ids)
