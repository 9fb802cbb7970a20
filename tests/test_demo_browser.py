"""The demo, end to end in a real headless Chromium: a person signs up on the hosted page, confirms
from the mail in the demo mailbox, receives the approved welcome automation, changes preferences and
unsubscribes; the consent record shows each step.

CI installs Chromium (`.ci/run`) and sets POSTROOM_REQUIRE_BROWSER, so there the test runs or fails;
on a machine without Chromium it is skipped with one sentence.
"""

from __future__ import annotations

import asyncio
import os
import re
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.console import ConsoleAdapter
from bot import demo
from bot.app import Runtime, build_app
from bot.db.models import ConsentEvent
from bot.mail.server import Mailbox
from tests.smtp import free_port
from tests.webdriver import Browser, browser_missing

MISSING = browser_missing()
if MISSING and not os.environ.get("POSTROOM_REQUIRE_BROWSER"):
    pytest.skip(MISSING, allow_module_level=True)


async def mail_to(mailbox: Mailbox, email: str, subject: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for path in mailbox.messages():
            if email in path.name:
                msg = message_from_bytes(path.read_bytes(), policy=policy.default)
                if subject in str(msg["Subject"]):
                    return msg
        assert loop.time() < deadline, f"no “{subject}” for {email} in the demo mailbox"
        await asyncio.sleep(0.05)


async def test_signup_confirm_welcome_preferences_and_unsubscribe_in_a_browser(tmp_path: Path) -> None:
    assert MISSING is None, MISSING
    # Ports of their own: demo.prepare prefers 8080 and 2525, which another test (or a demo) may take
    # between its check and our bind.
    plan = demo.prepare(tmp_path / "demo", fresh=True, web_port=free_port(), smtp_port=free_port())
    app = await build_app(plan.settings)
    runtime = Runtime(app)
    browser = Browser()
    try:
        await demo.seed(app, plan.folder)
        mailbox = Mailbox(plan.folder / "mailbox", echo=None)
        await runtime.start_services(mailbox=mailbox)
        await runtime.start_web(plan.settings.web.host, plan.settings.web.port)
        console = ConsoleAdapter(demo.SENDER, prompt=False)
        app.attach(console)
        await console.start(app.core)

        async def say(who: str, text: str) -> str:
            console.as_email = who
            reply = await console.say(text)
            return reply.text if reply is not None else ""

        assert "Draft automation" in await say(
            demo.SENDER, "/automation new welcome --on confirmed:customers --template welcome"
        )
        assert "Submitted" in await say(demo.SENDER, "/automation submit welcome")
        assert "Approved" in await say(demo.APPROVERS[0], "/approve automation:welcome")

        base = plan.settings.web.base_url
        await browser.start()
        await browser.go(f"{base}/s/customers")
        await browser.wait_for(demo.SIGNUP_WORDING)
        await browser.type("#pr-email", "neo@example.com")
        await browser.type("#pr-name", "Neo Anderson")
        await browser.click("//button[@type='submit']")
        await browser.wait_for("confirmation link is on its way")

        confirm = await mail_to(mailbox, "neo@example.com", "Confirm your subscription to customers")
        link = re.search(r"https?://\S+/s/confirm/\S+", confirm.get_content()).group(0)  # type: ignore[union-attr]
        await browser.go(link)
        await browser.click("//button[@type='submit']")
        await browser.wait_for("you are on the list “customers”")

        welcome = await mail_to(mailbox, "neo@example.com", "Welcome to Example Corp")
        assert "Hello Neo" in welcome.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        preferences = welcome["List-Unsubscribe"].split(",")[0].strip(" <>")
        await browser.go(preferences)
        await browser.wait_for("Your email preferences")
        await browser.click("//button[contains(., 'Leave')]")
        await browser.wait_for("You left “customers”.")
        await browser.click("//button[contains(., 'Come back')]")
        await browser.wait_for("Welcome back to “customers”.")
        await browser.click("//button[contains(., 'Unsubscribe from all')]")
        await browser.wait_for("will receive no more campaign email")

        record = await say(demo.SENDER, "/contacts show neo@example.com")
        for step in ("requested", "confirmed", "left", "resubscribed", "unsubscribed"):
            assert f" {step}" in record, record
        async with app.ctx.sessions() as session:
            kinds = [
                k
                for (k,) in (await session.execute(select(ConsentEvent.kind).order_by(ConsentEvent.id))).all()
            ]
        neo = [k for k in kinds if k != "imported"]
        assert neo == ["requested", "confirmed", "left", "resubscribed", "unsubscribed"], kinds
    finally:
        await browser.stop()
        await runtime.stop()
