"""`postroom contacts import` in process: company addresses stay out, and a contact already known gets
the consent step of the list it is imported into."""

from __future__ import annotations

from sqlalchemy import select

from bot.contacts.importer import import_contacts
from bot.db.models import Campaign, ConsentEvent, Contact, ContactList, ListMember
from tests.audience_kit import make_bot  # noqa: F401

COMPANY = """email,name,consent_at,consent_source
ann@corp.example,Ann Colleague,2026-03-02T10:15:00+00:00,hallway
Bob@Corp.Example,Bob Colleague,2026-03-02T10:15:00+00:00,hallway
new@example.com,New Person,2026-03-02T10:15:00+00:00,trade fair
"""


async def test_company_addresses_are_refused_with_their_count(make_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    path = tmp_path / "mixed.csv"
    path.write_text(COMPANY)
    report = await import_contacts(bot.app.ctx, path, "customers")
    summary = report.summary()
    assert report.added == 1 and report.internal == 2, summary
    assert (
        "2 rows were company addresses (corp.example) and were not imported: campaigns are for people "
        "outside the company; colleagues get internal mail through groups." in summary
    ), summary
    async with bot.app.ctx.sessions() as s:
        emails = set((await s.execute(select(Contact.email))).scalars())
    # (a subdomain is the company's only when org.domains lists it: see config.internal_address)
    assert "ann@corp.example" not in emails and "bob@corp.example" not in emails
    assert "new@example.com" in emails


async def test_a_known_contact_on_a_new_list_gets_its_consent_step(make_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()  # lena is on "customers" with consent from the signup form
    path = tmp_path / "again.csv"
    path.write_text(
        "email,name,consent_at,consent_source\nlena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form\n"
    )
    report = await import_contacts(bot.app.ctx, path, "partners")
    assert report.updated == 1, report.summary()
    async with bot.app.ctx.sessions() as s:
        lena = (await s.execute(select(Contact).where(Contact.email == "lena@example.com"))).scalar_one()
        steps = (
            await s.execute(
                select(ConsentEvent.kind, ConsentEvent.list_name).where(ConsentEvent.contact_id == lena.id)
            )
        ).all()
        on = set(
            (
                await s.execute(
                    select(ContactList.name)
                    .join(ListMember, ListMember.list_id == ContactList.id)
                    .where(ListMember.contact_id == lena.id)
                )
            ).scalars()
        )
    assert on == {"customers", "partners"}
    assert ("imported", "customers") in steps and ("imported", "partners") in steps, steps
    # The same file again records nothing new: the consent for that list is already on record.
    await import_contacts(bot.app.ctx, path, "partners")
    async with bot.app.ctx.sessions() as s:
        again = (
            await s.execute(
                select(ConsentEvent.id).where(
                    ConsentEvent.contact_id == lena.id, ConsentEvent.list_name == "partners"
                )
            )
        ).all()
    assert len(again) == 1


async def test_a_list_name_is_one_list_in_any_case_spelt_as_made(make_bot, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.audience_kit import open_signup, web
    from tests.conftest import SENDER

    bot = await make_bot()
    first = tmp_path / "a.csv"
    first.write_text("email,name,consent_at\nann@example.com,Ann,2026-03-02T10:15:00+00:00\n")
    second = tmp_path / "b.csv"
    second.write_text("email,name,consent_at\nbob@example.com,Bob,2026-03-02T10:15:00+00:00\n")
    await import_contacts(bot.app.ctx, first, "Newsletter")
    report = await import_contacts(bot.app.ctx, second, "newsletter")
    assert "Imported 1 of 1 row into list “Newsletter”" in report.summary(), report.summary()
    async with bot.app.ctx.sessions() as s:
        names = set((await s.execute(select(ContactList.name))).scalars())
        kinds = set((await s.execute(select(ConsentEvent.list_name))).scalars())
    assert names == {"customers", "Newsletter"} and "newsletter" not in kinds
    await open_signup(bot, "NEWSLETTER")
    async with web(bot) as client:
        assert (await client.get("/s/newsletter")).status_code == 200
    reply = await bot.say(
        SENDER, '/contacts add cy@example.com --list newsletter --consent "Said yes at the booth today"'
    )
    assert "Added cy@example.com to “Newsletter”" in reply, reply
    reply = await bot.say(SENDER, "/campaign new spring --to NEWSLETTER --template welcome")
    async with bot.app.ctx.sessions() as s:
        (audience,) = (await s.execute(select(Campaign.audience_name))).scalars()
    assert audience == "Newsletter", reply
    reply = await bot.say(SENDER, "/segment new fans newsletter --where \"name = 'Ann'\"")
    assert "of list Newsletter" in reply, reply
