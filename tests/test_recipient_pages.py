"""The pages recipients open (unsubscribe, preview, link errors) speak the organisation's language
(`org.locale`) through the same translation layer as the chat."""

from __future__ import annotations

import re

from tests.conftest import APPROVER, SENDER
from tests.test_campaign_delivery import make_bot, web  # noqa: F401  (the make_bot fixture)


async def test_a_chinese_organisation_gets_its_recipient_pages_in_chinese(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    bot.app.settings.org.locale = "zh_CN"
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    reply = await bot.say(SENDER, "/campaign preview spring")
    preview = re.search(r"HTML preview: (\S+)", reply).group(1).removeprefix("http://127.0.0.1:8080")  # type: ignore[union-attr]
    await bot.say(SENDER, "/campaign submit spring")
    await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    mail = smtp.handler.to("lena@example.com")[0].message
    link = re.search(r"<https?://[^/]+(/u/[^>]+)>", mail["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    async with web(bot) as client:
        page = await client.get(link)
        assert page.status_code == 200 and "<html lang='zh-CN'>" in page.text
        assert "不再接收 Example Corp 的营销邮件？" in page.text and "<b>l…@example.com</b>" in page.text
        done = await client.post(
            link, data={"List-Unsubscribe": "One-Click"}, headers={"Accept": "text/html"}
        )
        assert "将不再收到 Example Corp 的营销邮件。" in done.text
        assert "链接无效" in (await client.get("/u/forged.token")).text
        banner = (await client.get(preview)).text
        assert "活动“spring”的预览——不是已发送的邮件。" in banner and "所有检查均已通过。" in banner
        assert "链接无效" in (await client.get("/c/forged.token")).text


async def test_an_english_organisation_keeps_english_pages(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    async with web(bot) as client:
        page = await client.get("/u/forged.token")
        assert page.status_code == 400 and "This unsubscribe link is not valid." in page.text


async def test_a_one_click_post_answers_a_page_in_the_org_language(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Without Accept: text/html (a mail client's RFC 8058 POST, or a browser that sends none) the answer
    is the same HTML page as for a person, in the org's language, never plain English text."""
    bot = await make_bot()
    bot.app.settings.org.locale = "zh_CN"
    await bot.say(SENDER, "/campaign new spring --to customers --template welcome")
    await bot.say(SENDER, "/campaign submit spring")
    await bot.say(APPROVER, "/approve spring")
    await bot.settle()
    mail = smtp.handler.to("lena@example.com")[0].message
    link = re.search(r"<https?://[^/]+(/u/[^>]+)>", mail["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]
    async with web(bot) as client:
        done = await client.post(link, content="List-Unsubscribe=One-Click")
        assert done.status_code == 200 and done.headers["content-type"].startswith("text/html")
        assert "<html lang='zh-CN'>" in done.text and "将不再收到 Example Corp 的营销邮件。" in done.text
        bad = await client.post("/u/forged.token", content="List-Unsubscribe=One-Click")
        assert bad.status_code == 400 and "<html lang='zh-CN'>" in bad.text and "链接无效" in bad.text
