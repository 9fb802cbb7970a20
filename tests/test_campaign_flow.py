"""A campaign from draft to delivered mail: submit, approval card, approve, send, unsubscribe."""

from __future__ import annotations

from pathlib import Path

import httpx

from bot.contacts.importer import import_contacts
from tests.conftest import APPROVER, APPROVER2, SENDER

CSV = """email,name,consent_at,consent_source,company
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form,Fischer GmbH
raj@example.net,Raj Patel,2026-04-11T08:00:00+00:00,trade fair,
nocon@example.com,No Consent,,,
"""


async def load_customers(bot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    report = await import_contacts(bot.core.ctx, path, "customers")
    assert report.added == 3 and report.without_consent == 1


async def test_approved_campaign_reaches_each_consented_contact_once(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    reply = await bot.say(
        SENDER, '/campaign new spring --to customers --template welcome --subject "Hi {{ first_name }}"'
    )
    assert "Draft campaign “spring”" in reply
    reply = await bot.say(SENDER, "/campaign submit spring")
    assert "Submitted “spring” for approval" in reply
    card = bot.cards()[-1].card
    assert card is not None and [b.label for b in card.buttons] == ["Approve", "Reject"]
    assert any("2 recipients" in value for _name, value in card.fields)

    reply = await bot.say(SENDER, "/approve spring")
    assert "approvers" in reply
    reply = await bot.say(APPROVER, "/approve spring")
    assert "Approved “spring”" in reply
    again = await bot.say(APPROVER2, "/approve spring")
    await bot.settle()
    assert "nothing to approve" in again or "decided" in again

    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == ["lena@example.com", "raj@example.net"]
    msg = smtp.handler.to("lena@example.com")[0].message
    assert msg["Subject"] == "Hi Lena"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "<http://127.0.0.1:8080/u/" in msg["List-Unsubscribe"] and "mailto:" in msg["List-Unsubscribe"]
    assert msg["Message-ID"] != smtp.handler.to("raj@example.net")[0].message["Message-ID"]
    assert "Fischer GmbH" in msg.get_body(("plain",)).get_content()
    final = bot.cards()[-1].card
    assert any(value.startswith("Approved by maria@corp.example; sent") for _n, value in final.fields)


async def test_one_click_unsubscribe_skips_the_contact_next_time(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new one --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit one")
    await bot.say(APPROVER, "/approve one")
    await bot.settle()
    url = smtp.handler.to("lena@example.com")[0].message["List-Unsubscribe"].split(",")[0].strip("<> ")
    path = url.removeprefix("http://127.0.0.1:8080")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t"
    ) as web:
        page = await web.get(path)
        assert page.status_code == 200 and "Unsubscribe" in page.text
        tampered = await web.post(path[:-3] + "AAA", content="List-Unsubscribe=One-Click")
        assert tampered.status_code == 400
        done = await web.post(
            path,
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200
    smtp.handler.messages.clear()
    await bot.say(SENDER, "/campaign new two --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit two")
    await bot.say(APPROVER, "/approve two")
    await bot.settle()
    assert [r for m in smtp.messages for r in m.rcpt_tos] == ["raj@example.net"]


async def test_an_edit_after_submission_voids_the_approval_request(bot, smtp, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    reply = await bot.say(SENDER, '/campaign edit spring --subject "Changed"')
    assert "void" in reply
    reply = await bot.say(APPROVER, "/approve spring")
    assert "draft" in reply
    await bot.settle()
    assert smtp.messages == []


async def test_changing_the_template_file_after_submission_blocks_approval(
    bot, smtp, tmp_path, settings
) -> None:  # type: ignore[no-untyped-def]
    await load_customers(bot, tmp_path)
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    html = Path(settings.campaigns.templates_dir) / "welcome.html"
    html.write_text(html.read_text().replace("spring release", "SECRET release"))
    reply = await bot.say(APPROVER, "/approve spring")
    assert "changed after it was submitted" in reply
    await bot.settle()
    assert smtp.messages == []
