"""`postroom contacts export` in process: what a spreadsheet opening the file would run, consent per list,
and suppressions shown."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select, update

from bot.addresses import email_hash
from bot.contacts.directory import export_csv
from bot.contacts.importer import import_contacts
from bot.csvfiles import safe_cell, unguard
from bot.db.models import Contact, Suppression
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
    text = (await export_csv(bot.app.ctx, "customers")).text
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


async def test_one_row_per_list_with_that_lists_consent_and_the_suppression(make_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.conftest import ADMIN, SENDER

    bot = await make_bot()
    assert "is open" in await bot.say(ADMIN, '/lists open partners --wording "Partner news, now and then."')
    reply = await bot.say(
        SENDER, '/contacts add lena@example.com --list partners --consent "Said yes at the partner day"'
    )
    assert "Added" in reply, reply
    async with bot.app.ctx.sessions() as s, s.begin():
        s.add(
            Suppression(
                email_hash=email_hash("raj@example.net"), email="raj@example.net", reason="hard_bounce"
            )
        )
    text = (await export_csv(bot.app.ctx, None)).text
    rows = list(csv.DictReader(io.StringIO(text)))
    lena = {r["list"]: r for r in rows if r["email"] == "lena@example.com"}
    assert set(lena) == {"customers", "partners"}
    assert lena["customers"]["consent_at"].startswith("2026-03-02T10:15")
    assert "signup form" in lena["customers"]["consent_source"]
    assert (
        lena["partners"]["consent_source"].startswith("chat:")
        and lena["partners"]["consent_method"] == "chat"
    )
    assert lena["partners"]["wording_version"] == ""  # chat records the words, not a page's version
    assert lena["customers"]["suppressed"] == ""
    (raj,) = [r for r in rows if r["email"] == "raj@example.net"]
    assert raj["suppressed"] == "hard_bounce" and raj["list"] == "customers"
    (nocon,) = [r for r in rows if r["email"] == "nocon@example.com"]
    assert nocon["consent_at"] == "" and nocon["list"] == "customers"  # on the list, never consented
    only = (await export_csv(bot.app.ctx, "partners")).text
    assert [(r["email"], r["list"]) for r in csv.DictReader(io.StringIO(only))] == [
        ("lena@example.com", "partners")
    ]
    # Read back, a contact on two lists is one contact: its first row counts, the other is no error.
    path = tmp_path / "all.csv"
    path.write_text(text, encoding="utf-8")
    report = await import_contacts(bot.app.ctx, path, "copy", dry_run=True)
    assert not report.bad and report.repeated == 1, report.summary()
    assert "1 row of the file repeated a contact for another list" in report.summary()


async def test_consent_at_is_the_consents_own_time_not_the_join_time(make_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Joined a list without consent first, consented later: the export shows the consent's time, and a
    re-import of the export keeps it."""
    bot = await make_bot()
    first = tmp_path / "first.csv"
    first.write_text("email,name\na1@example.com,A One\n", encoding="utf-8")
    report = await import_contacts(bot.app.ctx, first, "customers")
    assert report.without_consent == 1, report.summary()
    later = tmp_path / "c.csv"
    later.write_text(
        "email,name,consent_at,consent_source\na1@example.com,A One,2026-11-01T10:00:00Z,fair booth\n",
        encoding="utf-8",
    )
    for name in ("customers", "partners"):
        report = await import_contacts(bot.app.ctx, later, name)
        assert not report.bad, report.summary()
    text = (await export_csv(bot.app.ctx, None)).text
    rows = {r["list"]: r for r in csv.DictReader(io.StringIO(text)) if r["email"] == "a1@example.com"}
    assert set(rows) == {"customers", "partners"}
    for row in rows.values():
        assert row["consent_at"].startswith("2026-11-01T10:00:00"), row
    again = tmp_path / "export.csv"
    again.write_text(text, encoding="utf-8")
    report = await import_contacts(bot.app.ctx, again, "customers")
    assert not report.bad, report.summary()
    text = (await export_csv(bot.app.ctx, "customers")).text
    (row,) = [r for r in csv.DictReader(io.StringIO(text)) if r["email"] == "a1@example.com"]
    assert row["consent_at"].startswith("2026-11-01T10:00:00"), row
