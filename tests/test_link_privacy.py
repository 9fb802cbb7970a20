"""Links that leak nothing: every token in campaign mail names a delivery (or a campaign) by id, never an
address; unsubscribing looks the recipient up; a preview's or a test message's unsubscribe link
suppresses nobody; links made before 0.2 (with the address inside) keep working while allowed."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import unquote

import aiosmtplib
import pytest
from sqlalchemy import select

from bot.campaigns.tracking import verp_address, verp_delivery
from bot.db.models import Suppression
from bot.links import Signer
from bot.mail.server import EmbeddedSmtpServer
from tests import test_campaign_delivery
from tests.conftest import SENDER
from tests.smtp import free_port
from tests.test_campaign_delivery import CONSENTED, deliveries, send, web

make_bot = test_campaign_delivery.make_bot  # the fixture

TOKEN = re.compile(r"/(u|c|o)/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")


def payload(token: str) -> str:
    body = token.split(".")[0]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


async def suppressions(bot) -> dict[str, str]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        return dict((await session.execute(select(Suppression.email, Suppression.reason))).all())


async def test_every_token_in_sent_mail_is_an_id_and_unsubscribing_finds_the_recipient(
    make_bot, smtp
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await send(bot, "spring")
    await bot.settle()
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == sorted(CONSENTED)
    rows = await deliveries(bot, "spring")
    for received in smtp.messages:
        msg = received.message
        text = received.data.decode() + msg.get_body(("html",)).get_content()
        text += msg.get_body(("plain",)).get_content()
        found = TOKEN.findall(text)
        assert {kind for kind, _ in found} == {"u", "c", "o"}
        delivery_id = rows[received.rcpt_tos[0]].id
        for _kind, token in found:
            decoded = payload(token)
            assert "@" not in decoded and decoded.split("|")[1] == str(delivery_id), decoded
        mailto_subject = unquote(msg["List-Unsubscribe"].split("subject=")[1].rstrip(">"))
        assert payload(mailto_subject.removeprefix("unsubscribe ")) == f"ud|{delivery_id}"
        assert verp_delivery(bot.core.ctx.signer, received.mail_from) == delivery_id

    lena = smtp.handler.to("lena@example.com")[0].message
    path = lena["List-Unsubscribe"].split(",")[0].strip(" <>").removeprefix("http://127.0.0.1:8080")
    async with web(bot) as client:
        page = await client.get(path)
        assert (
            page.status_code == 200 and "lena@example.com" not in page.text and "l…@example.com" in page.text
        )
        assert await suppressions(bot) == {}
        done = await client.post(path, content="List-Unsubscribe=One-Click")
        assert done.status_code == 200
    assert await suppressions(bot) == {"lena@example.com": "unsubscribed"}


async def test_a_preview_or_test_messages_unsubscribe_link_suppresses_nobody(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    reply = await bot.say(SENDER, "/campaign test spring sam@corp.example")
    assert "Sent a test" in reply, reply
    test_mail = smtp.handler.to("sam@corp.example")[0].message
    header = test_mail["List-Unsubscribe"]
    url = header.split(",")[0].strip(" <>")
    token = url.split("/u/")[1]
    assert payload(token).startswith("up|") and "@" not in payload(token)
    from bot.campaigns.tracking import verify_unsubscribe

    assert verify_unsubscribe(bot.core.ctx.signer, token).kind == "preview"  # type: ignore[union-attr]
    async with web(bot) as client:
        page = await client.get(f"/u/{token}")
        assert page.status_code == 200 and "This is a preview" in page.text and "<form" not in page.text
        posted = await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click")
        assert posted.status_code == 200 and "nobody was unsubscribed" in posted.text
    address, _, query = header.split("<mailto:")[1].rstrip(">").partition("?subject=")
    server = EmbeddedSmtpServer("127.0.0.1", free_port(), bot.app.mail_routes())
    await server.start()
    try:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port)
        await client.connect()
        data = f"From: sam@corp.example\r\nTo: {address}\r\nSubject: {unquote(query)}\r\n\r\n\r\n".encode()
        await client.sendmail("sam@corp.example", [address], data)
        await client.quit()
    finally:
        await server.stop()
    assert await suppressions(bot) == {}


@pytest.mark.parametrize("legacy", [True, False])
async def test_links_made_before_opaque_ids_keep_working_while_allowed(make_bot, smtp, legacy: bool) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    bot.core.ctx.settings.web.legacy_unsubscribe_tokens = legacy
    old = bot.core.ctx.signer.sign("u", "1", "raj@example.net")  # what 0.1 put in every message
    async with web(bot) as client:
        posted = await client.post(f"/u/{old}", content="List-Unsubscribe=One-Click")
    assert posted.status_code == (200 if legacy else 400)
    assert await suppressions(bot) == ({"raj@example.net": "unsubscribed"} if legacy else {})


async def test_an_unsubscribe_link_for_a_delivery_no_longer_on_record_changes_nothing(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    token = bot.core.ctx.signer.sign("ud", "424242")
    async with web(bot) as client:
        assert (await client.get(f"/u/{token}")).status_code == 404
        assert (await client.post(f"/u/{token}", content="List-Unsubscribe=One-Click")).status_code == 404
    assert await suppressions(bot) == {}


async def test_a_link_that_carries_an_address_is_never_wrapped_in_a_tracking_token(
    make_bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    (tmp_path / "templates" / "welcome.html").write_text(
        "<html><head><title>Hi</title></head><body>"
        '<a href="https://shop.example/offer?for={{ email }}">Your offer</a> '
        '<a href="https://shop.example/plain">Shop</a> '
        '<a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ org.postal_address }}</body></html>'
    )
    await send(bot, "personal")
    await bot.settle()
    html = smtp.handler.to("lena@example.com")[0].message.get_body(("html",)).get_content()
    assert 'href="https://shop.example/offer?for=lena@example.com"' in html  # as the author wrote it
    clicks = [payload(t) for kind, t in TOKEN.findall(html) if kind == "c"]
    assert len(clicks) == 1 and clicks[0].endswith("https://shop.example/plain")


def test_verp_return_paths_fit_an_smtp_local_part_for_any_delivery_id() -> None:
    signer = Signer("a-strong-enough-test-key-0123456789")
    for delivery_id in (1, 10**9, 2**63 - 1):
        local = verp_address(signer, delivery_id, "acme.example").split("@")[0]
        assert len(local) <= 64 and verp_delivery(signer, f"{local}@acme.example") == delivery_id


def test_without_a_secret_nothing_is_signed_and_nothing_verifies() -> None:
    from bot.campaigns.tracking import verify_unsubscribe
    from bot.links import UnsetSecret

    unset = Signer(None)
    with pytest.raises(UnsetSecret, match="web.secret is not set"):
        unset.sign("ud", "1")
    assert unset.verify(Signer("x" * 20).sign("ud", "1"), "ud") is None
    assert verify_unsubscribe(unset, "dWR8MQ.oadA6yAZTtqKDLDDU2hFKSwP") is None


async def test_the_one_click_result_page_has_main_and_a_status_like_the_other_pages(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    bot.core.ctx.settings.web.legacy_unsubscribe_tokens = True
    old = bot.core.ctx.signer.sign("u", "1", "raj@example.net")
    async with web(bot) as client:
        posted = await client.post(f"/u/{old}", content="List-Unsubscribe=One-Click")
        bad = await client.post("/u/forged.token", content="List-Unsubscribe=One-Click")
    assert posted.status_code == 200 and "<main>" in posted.text and "role='status'" in posted.text, (
        posted.text
    )
    assert "will receive no more campaign email" in posted.text
    assert bad.status_code == 400 and "<main>" in bad.text
