"""Guards around sending a campaign that a reviewer found missing: the approval is checked on every
start and resume, failures are audited, a rejection voids earlier approvals, required flags show in
/help, and the email-events webhook caps its body while reading it. Real SMTP server and database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.db.models import AuditEntry
from tests.conftest import SENDER
from tests.test_campaign_delivery import CONSENTED, make_bot, send, state_of, until

__all__ = ["make_bot"]  # the fixture, used by name


async def _audit(bot, action: str) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        return list((await session.execute(select(AuditEntry).where(AuditEntry.action == action))).scalars().all())


async def _paused_midway(bot, smtp, name: str) -> int:  # type: ignore[no-untyped-def]
    await send(bot, name)
    await until(lambda: len(smtp.messages) >= 1)
    assert "Paused" in await bot.say(SENDER, f"/campaign pause {name}")
    await until(lambda: all(t.done() for t in bot.core.services["campaign_runs"].values()), timeout=2)
    assert await state_of(bot, name) == "paused"
    sent = len(smtp.messages)
    assert sent < len(CONSENTED)
    return sent


async def test_a_failure_while_sending_is_audited(make_bot, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=2)
    sent = await _paused_midway(bot, smtp, "gone")
    for path in (tmp_path / "templates").glob("welcome.*"):
        path.unlink()
    await bot.say(SENDER, "/campaign resume gone")
    await bot.settle()
    assert await state_of(bot, "gone") == "failed"
    assert len(smtp.messages) == sent
    entries = await _audit(bot, "campaign.fail")
    assert [(e.subject, e.before, e.after) for e in entries] == [
        ("campaign:gone", {"state": "sending"}, {"state": "failed"})]
    assert "template" in (entries[0].detail or "")
