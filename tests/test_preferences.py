"""The preference centre behind the unsubscribe link: leave one list, come back (fresh consent with the
wording shown), unsubscribe from all and subscribe again — every step in the consent record, no
JavaScript, GET changing nothing, the page in the organisation's language."""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.db.models import ConsentEvent, Contact, Suppression
from tests.audience_kit import make_bot, web  # noqa: F401
from tests.conftest import APPROVER, SENDER


async def sent_link(bot, smtp, email: str) -> str:  # type: ignore[no-untyped-def]
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    mail = smtp.handler.to(email)[0].message
    return re.search(r"<https?://[^/]+(/u/[^>]+)>", mail["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]


async def kinds(bot, email: str) -> list[tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    async with bot.app.ctx.sessions() as s:
        cid = (await s.execute(select(Contact.id).where(Contact.email == email))).scalar_one()
        rows = (
            await s.execute(
                select(ConsentEvent).where(ConsentEvent.contact_id == cid).order_by(ConsentEvent.id)
            )
        ).scalars()
        return [(e.kind, e.list_name) for e in rows]


async def test_leave_a_list_come_back_unsubscribe_and_return(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    link = await sent_link(bot, smtp, "lena@example.com")
    async with web(bot) as client:
        page = await client.get(link)
        assert (
            page.status_code == 200 and "<script" not in page.text and "Your email preferences" in page.text
        )
        assert "Leave “customers”" in page.text and "<b>l…@example.com</b>" in page.text
        assert await kinds(bot, "lena@example.com") == [("imported", "customers")]  # GET changed nothing
        left = await client.post(f"{link}/preferences", data={"action": "leave", "list": "customers"})
        assert left.status_code == 200 and "You left “customers”." in left.text
        assert "Come back to “customers”" in left.text and "role='status'" in left.text
        back = await client.post(f"{link}/preferences", data={"action": "join", "list": "customers"})
        assert "Welcome back to “customers”." in back.text
        gone = await client.post(f"{link}/preferences", data={"action": "all"})
        assert "You are unsubscribed from all campaign email" in gone.text
        again = await client.post(f"{link}/preferences", data={"action": "back"})
        assert "You receive campaign email from Example Corp again." in again.text
        bad = await client.post(f"{link}/preferences", data={"action": "drop-table"})
        assert bad.status_code == 400
        big = await client.post(f"{link}/preferences", content=b"action=" + b"x" * 10000)
        assert big.status_code == 413
    assert await kinds(bot, "lena@example.com") == [
        ("imported", "customers"),
        ("left", "customers"),
        ("resubscribed", "customers"),
        ("unsubscribed", None),
        ("resubscribed", None),
    ]
    async with bot.app.ctx.sessions() as s:
        events = (
            (await s.execute(select(ConsentEvent).where(ConsentEvent.kind == "resubscribed"))).scalars().all()
        )
        assert (
            await s.execute(select(Suppression))
        ).first() is None  # the unsubscribe was lifted by fresh consent
    assert events[0].wording == "I want to receive email from Example Corp on the list “customers” again."
    assert events[0].wording_version == "preference-centre#1"


async def test_the_one_click_unsubscribe_is_in_the_consent_record(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    link = await sent_link(bot, smtp, "raj@example.net")
    async with web(bot) as client:
        done = await client.post(link, content="List-Unsubscribe=One-Click")
        assert done.status_code == 200
    assert ("unsubscribed", None) in await kinds(bot, "raj@example.net")


async def test_a_chinese_organisation_gets_a_chinese_preference_centre(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    bot.app.settings.org.locale = "zh_CN"
    link = await sent_link(bot, smtp, "kim@example.org")
    async with web(bot) as client:
        page = await client.get(link)
        assert "<html lang='zh-CN'>" in page.text and "邮件偏好" in page.text


async def test_a_tampered_form_signs_nobody_up_to_a_list_they_were_never_on(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    from tests.conftest import ADMIN

    assert "is open" in await bot.say(ADMIN, '/lists open partners --wording "Partner news, now and then."')
    link = await sent_link(bot, smtp, "lena@example.com")
    async with web(bot) as client:
        forged = await client.post(f"{link}/preferences", data={"action": "join", "list": "partners"})
        assert "Nothing changed." in forged.text
    assert await kinds(bot, "lena@example.com") == [("imported", "customers")]


async def test_a_persons_own_leave_wins_over_a_senders_claim(make_bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from bot.contacts.importer import import_contacts

    bot = await make_bot()
    link = await sent_link(bot, smtp, "lena@example.com")
    async with web(bot) as client:
        left = await client.post(f"{link}/preferences", data={"action": "leave", "list": "customers"})
        assert "You left “customers”." in left.text
    today = f"{bot.app.ctx.now():%Y-%m-%d}"
    reply = await bot.say(
        SENDER, '/contacts add lena@example.com --list customers --consent "She said yes at the fair"'
    )
    assert f"left “customers” themselves on {today}" in reply and "own fresh signup" in reply, reply
    (tmp_path / "again.csv").write_text("email,consent_at\nlena@example.com,2026-05-01T00:00:00+00:00\n")
    report = await import_contacts(bot.app.ctx, tmp_path / "again.csv", "customers")
    assert report.bad and "left “customers” themselves" in report.bad[0][1]
    assert await kinds(bot, "lena@example.com") == [("imported", "customers"), ("left", "customers")]
    # a sender's own removal is not the person's word: the sender may add them back
    await bot.say(SENDER, '/contacts add raj@example.net --list customers --consent "Renewed at the fair"')
    assert "Took raj@example.net off" in await bot.say(
        SENDER, "/contacts remove raj@example.net --list customers"
    )
    assert "Added raj@example.net" in await bot.say(
        SENDER, '/contacts add raj@example.net --list customers --consent "Asked again by phone"'
    )
    async with web(bot) as client:  # their own come-back still works
        back = await client.post(f"{link}/preferences", data={"action": "join", "list": "customers"})
        assert "Welcome back to “customers”." in back.text
