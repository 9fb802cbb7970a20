"""/privacy export writes a new file every time (two in one second used to overwrite each other), named so
that it can't be guessed from the time; /privacy erase says what it would erase and waits for --confirm."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from bot.db.models import AuditEntry, Contact, Delivery, ListMember, Suppression
from tests.conftest import ADMIN
from tests.test_campaign_delivery import make_bot, send

__all__ = ["make_bot"]  # the fixture, used by name


def _attachment(reply: str) -> Path:
    return Path(reply.split("attachment saved: ")[1].split(")")[0])


async def test_exports_in_the_same_second_are_separate_files_with_unguessable_names(make_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    same_second = datetime(2026, 12, 2, 9, 0, 0, tzinfo=UTC)
    bot.core.ctx.clock = lambda: same_second
    asked = ["lena@example.com", "raj@example.net", "lena@example.com"]
    paths = [_attachment(await bot.say(ADMIN, f"/privacy export {email}")) for email in asked]
    assert len(set(paths)) == 3
    assert [json.loads(p.read_text())["email"] for p in paths] == asked
    for p in paths:
        m = re.fullmatch(r"privacy-export-20261202-090000-([A-Za-z0-9_-]+)\.json", p.name)
        assert m and len(m.group(1)) >= 16, p.name  # ~96 random bits besides the time
        assert stat.S_IMODE(p.stat().st_mode) == 0o600  # personal data: the owner only


async def _held(bot, email: str) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as s:
        return (
            (
                await s.execute(select(func.count()).select_from(Contact).where(Contact.email == email))
            ).scalar_one(),
            (await s.execute(select(func.count()).select_from(ListMember))).scalar_one(),
            (
                await s.execute(select(func.count()).select_from(Delivery).where(Delivery.email == email))
            ).scalar_one(),
            (await s.execute(select(func.count()).select_from(Suppression))).scalar_one(),
            (await s.execute(select(func.count()).select_from(AuditEntry))).scalar_one(),
        )


async def test_erase_says_what_it_would_erase_and_waits_for_confirm(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    await send(bot, "before")
    await bot.settle()
    before = await _held(bot, "lena@example.com")
    asked = await bot.say(ADMIN, "/privacy erase lena@example.com")
    assert asked.startswith("Erasing lena@example.com would delete the contact record"), asked
    assert "campaign message records (1)" in asked
    assert (
        "It can't be undone: to erase, repeat with --confirm (/privacy erase lena@example.com --confirm)."
        in asked
    )
    assert await _held(bot, "lena@example.com") == before  # nothing changed
    nobody = await bot.say(ADMIN, "/privacy erase stranger@example.com")
    assert (
        nobody.startswith("Postroom holds no contact record for stranger@example.com")
        and "--confirm" in nobody
    )

    done = await bot.say(ADMIN, "/privacy erase lena@example.com --confirm")
    assert "Erased lena@example.com" in done
    contacts, _lists, deliveries, suppressions, _audit = await _held(bot, "lena@example.com")
    assert (contacts, deliveries, suppressions) == (0, 0, 1)
