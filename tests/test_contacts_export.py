"""`postroom contacts export` in process: what a spreadsheet opening the file would run, consent per list,
and suppressions shown."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select, update

from bot.contacts.directory import export_csv
from bot.contacts.importer import import_contacts
from bot.csvfiles import safe_cell, unguard
from bot.db.models import Contact
from tests.audience_kit import make_bot  # noqa: F401


def test_every_formula_start_is_kept_as_text_and_reads_back() -> None:
    for value in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "  =HYPERLINK(1)", "\n@x", "'=x", "''-2"):
        guarded = safe_cell(value)
        assert guarded.startswith("'"), value
        assert unguard(guarded) == value
    for value in ("Lena", "", "it's", "'quoted", "a=b"):
        assert safe_cell(value) == value and unguard(value) == value


async def test_no_text_cell_of_the_export_starts_a_formula(make_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    async with bot.app.ctx.sessions() as s, s.begin():
        await s.execute(
            update(Contact)
            .where(Contact.email == "lena@example.com")
            .values(
                name='=HYPERLINK("http://evil.example","x")', consent_source=" @SUM(1)", consent_method="+1"
            )
        )
        raj = (await s.execute(select(Contact).where(Contact.email == "raj@example.net"))).scalar_one()
        raj.attributes = {**raj.attributes, "plan": "  -2"}
    text, _count = await export_csv(bot.app.ctx, "customers")
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            assert cell.lstrip()[:1] not in ("=", "+", "-", "@"), (cell, row)
            assert cell[:1] not in ("\t", "\r"), (cell, row)
    rows = {r["email"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["lena@example.com"]["name"] == '\'=HYPERLINK("http://evil.example","x")'
    assert rows["raj@example.net"]["plan"] == "'  -2"
    # The file reads back as the values it was made of, not with the apostrophes.
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    report = await import_contacts(bot.app.ctx, path, "copy")
    assert not report.bad, report.summary()
    async with bot.app.ctx.sessions() as s:
        lena = (await s.execute(select(Contact).where(Contact.email == "lena@example.com"))).scalar_one()
    assert lena.name == '=HYPERLINK("http://evil.example","x")' and lena.consent_method == "+1"
