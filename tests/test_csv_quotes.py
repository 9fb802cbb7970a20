"""A stray quote in a CSV someone hands to Postroom: Python's csv reads the quoted field on to the end of
the file, so the answer used to be a wrong email address on that line that quoted every later row. Both
importers now name the line where the quote opens, and change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.contacts.importer import import_contacts
from bot.db.models import Contact
from bot.errors import UserError
from bot.hr.importer import read_snapshot

SENTENCE = 'a field opens a quote (") that is never closed'


def test_a_staff_snapshot_with_an_unclosed_quote_names_its_line() -> None:
    text = (
        "employee_id,email,name,department\n"
        "1,alice@corp.example,Alice,eng\n"
        '2,"bob@corp.example,Bob,eng\n'
        "3,carol@corp.example,Carol,eng\n"
    )
    with pytest.raises(UserError) as refused:
        read_snapshot(text)
    assert refused.value.sentence.startswith("Line 3: " + SENTENCE), refused.value.sentence
    assert "carol" not in refused.value.sentence


def test_closed_quotes_still_read() -> None:
    text = (
        "employee_id,email,name,department\n"
        '1,alice@corp.example,"Alice ""Al"" Smith",eng\n'
        '2,bob@corp.example,"Jones, Bob",eng\n'
    )
    rows = read_snapshot(text)
    assert [r["name"] for r in rows] == ['Alice "Al" Smith', "Jones, Bob"]


async def test_a_contacts_file_with_an_unclosed_quote_is_refused_whole(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text('email,name\nlena@example.com,Lena\n"raj@example.net,Raj\nann@example.org,Ann\n')
    with pytest.raises(UserError) as refused:
        await import_contacts(bot.core.ctx, path, "customers")
    assert refused.value.sentence.startswith("Line 3: " + SENTENCE), refused.value.sentence
    async with bot.core.ctx.sessions() as session:
        assert (await session.execute(select(func.count()).select_from(Contact))).scalar_one() == 0
