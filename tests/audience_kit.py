"""What the audience tests share: a console chat with the real app and its web app, contacts on a list,
a list open for signup, and reading confirmation links out of the SMTP server's mail."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.console import ConsoleAdapter
from bot.app import build_app
from bot.contacts.importer import import_contacts
from tests.conftest import ADMIN, COLLEAGUES, HR, ChatBot, make_settings, put_on_record
from tests.smtp import SmtpServer

CSV = """email,name,consent_at,consent_source,country,plan,renewal_date
lena@example.com,Lena Fischer,2026-03-02T10:15:00+00:00,signup form,DE,pro,2027-01-20
raj@example.net,Raj Patel,2026-04-11T08:00:00+00:00,trade fair,IN,free,2027-02-01
kim@example.org,Kim Park,2026-04-12T08:00:00+00:00,webinar,AT,pro,not a date
nocon@example.com,No Consent,,,DE,pro,2027-01-20
"""
WORDING = "Yes, send me Example Corp news by email. I can leave at any time."


@pytest.fixture
async def make_bot(database_url: str, smtp: SmtpServer, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[ChatBot] = []

    async def factory(**sections: Any) -> ChatBot:
        sections.setdefault("campaigns", {})
        sections["campaigns"] = {
            "retry_base_s": 0,
            "reports_dir": str(tmp_path / "reports"),
            **sections["campaigns"],
        }
        settings = make_settings(database_url, smtp.port, tmp_path, **sections)
        app = await build_app(settings)
        if not made:
            await put_on_record(app, COLLEAGUES)
            (tmp_path / "contacts.csv").write_text(CSV)
            await import_contacts(app.ctx, tmp_path / "contacts.csv", "customers")
        console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(app.core)
        bot = ChatBot(app, console, console.out)  # type: ignore[arg-type]
        made.append(bot)
        return bot

    try:
        yield factory
    finally:
        for bot in made:
            if not getattr(bot, "closed", False):
                await bot.app.close()


async def restart(bot: ChatBot) -> None:
    """Stop this app (as a process would stop); the next `make_bot()` is the same database restarted."""
    await bot.app.close()
    bot.closed = True  # type: ignore[attr-defined]


def at(bot: ChatBot, when: datetime) -> None:
    """The app's clock stands at `when` (triggers and sends read it)."""
    bot.app.ctx.clock = lambda: when


def web(bot: ChatBot, client_ip: str = "198.51.100.7") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web(), client=(client_ip, 4711)),
        base_url="http://t",
        follow_redirects=False,
    )


async def open_signup(bot: ChatBot, list_name: str = "customers") -> None:
    reply = await bot.say(ADMIN, f'/lists open {list_name} --wording "{WORDING}"')
    assert "is open at" in reply, reply


def confirmation_links(smtp: SmtpServer, email: str) -> list[str]:
    links = []
    for received in smtp.handler.to(email):
        body = received.message.get_content() if not received.message.is_multipart() else ""
        links += re.findall(r"https?://[^\s]+(/s/confirm/[A-Za-z0-9_.-]+)", body)
    return links


async def wait_for_mail(smtp: SmtpServer, email: str, count: int = 1, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(smtp.handler.to(email)) < count:
        assert loop.time() < deadline, f"no mail to {email} within {timeout} s"
        await asyncio.sleep(0.02)
