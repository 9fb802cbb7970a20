"""Guards around sending a campaign that a reviewer found missing: the approval is checked on every
start and resume, failures are audited, a rejection voids earlier approvals, required flags show in
/help, and the email-events webhook caps its body while reading it. Real SMTP server and database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select, update

from bot.campaigns.watcher import CampaignWatcher
from bot.campaigns.web_routes import MAX_WEBHOOK_BYTES
from bot.db.models import Approval, AuditEntry
from tests.conftest import APPROVER, APPROVER2, SENDER
from tests.test_campaign_delivery import CONSENTED, make_bot, send, state_of, until, web

__all__ = ["make_bot"]  # the fixture, used by name


async def _audit(bot, action: str) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        return list(
            (await session.execute(select(AuditEntry).where(AuditEntry.action == action))).scalars().all()
        )


async def _paused_midway(bot, smtp, name: str) -> int:  # type: ignore[no-untyped-def]
    await send(bot, name)
    await until(lambda: len(smtp.messages) >= 1)
    assert "Paused" in await bot.say(SENDER, f"/campaign pause {name}")
    await until(lambda: all(t.done() for t in bot.app.runs._runs.values()), timeout=2)
    assert await state_of(bot, name) == "paused"
    sent = len(smtp.messages)
    assert sent < len(CONSENTED)
    return sent


async def _stopped_midway(make_bot, smtp, name: str):  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=2)
    await send(bot, name)
    await until(lambda: len(smtp.messages) >= 1)
    await bot.app.close()  # the process stops mid-send: the campaign stays `sending`
    sent = len(smtp.messages)
    assert sent < len(CONSENTED)
    assert await state_of(bot, name) == "sending"
    return sent


async def test_a_failure_while_sending_is_audited(make_bot, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sent = await _stopped_midway(make_bot, smtp, "gone")
    for path in (tmp_path / "templates").glob("welcome.*"):
        path.unlink()
    bot = await make_bot(rate_per_s=4, batch_size=2)
    await _resumed_by_the_watcher(bot, "gone")
    assert await state_of(bot, "gone") == "failed"
    assert len(smtp.messages) == sent
    entries = await _audit(bot, "campaign.fail")
    assert [(e.subject, e.actor, e.before, e.after) for e in entries] == [
        ("campaign:gone", "system", {"state": "sending"}, {"state": "failed"})
    ]
    assert "template" in (entries[0].detail or "")


def _edit_template(tmp_path: Path) -> None:
    for path in (tmp_path / "templates").glob("welcome.*"):
        path.write_text(path.read_text().replace("Hello", "UNAPPROVED TEXT"))


def _unapproved(smtp) -> int:  # type: ignore[no-untyped-def]
    return sum(b"UNAPPROVED TEXT" in m.data for m in smtp.messages)


def _said(bot) -> list[str]:  # type: ignore[no-untyped-def]
    return [m.text for _kind, conv, m in bot.console.transcript if conv == "approvals" and m.card is None]


async def test_resume_after_the_template_changed_fails_the_campaign_and_says_why(
    make_bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=2)
    sent = await _paused_midway(bot, smtp, "slow")
    _edit_template(tmp_path)
    reply = await bot.say(SENDER, "/campaign resume slow")
    await bot.settle()
    assert "not resumed and has failed" in reply and "no longer matches" in reply, reply
    assert len(smtp.messages) == sent and _unapproved(smtp) == 0
    assert await state_of(bot, "slow") == "failed"
    entries = await _audit(bot, "campaign.fail")
    assert [(e.actor, e.before, e.after) for e in entries] == [
        (SENDER, {"state": "paused"}, {"state": "failed"})
    ]
    assert any("no longer matches" in text for text in _said(bot)), _said(bot)
    assert "Failed" in str(bot.cards()[-1].card)


async def test_resume_after_the_approval_expired_fails_the_campaign(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=2)
    sent = await _paused_midway(bot, smtp, "late")
    async with bot.core.ctx.sessions() as session, session.begin():  # the approval runs out while paused
        await session.execute(update(Approval).values(expires_at=bot.core.ctx.now()))
    reply = await bot.say(SENDER, "/campaign resume late")
    await bot.settle()
    assert "no longer in force" in reply, reply
    assert len(smtp.messages) == sent
    assert await state_of(bot, "late") == "failed"


async def _resumed_by_the_watcher(bot, name: str) -> None:  # type: ignore[no-untyped-def]
    """What a restarted `postroom serve` (or another process) does with a campaign left sending."""
    watcher = CampaignWatcher(bot.app.ctx, bot.app.runs, bot.app.scheduler)
    await watcher.start()
    try:
        await until(lambda: _is_failed(bot, name), timeout=10)
        await bot.settle()
    finally:
        await watcher.stop()


async def test_a_restart_or_another_process_does_not_send_unapproved_content(
    make_bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sent = await _stopped_midway(make_bot, smtp, "crash")
    _edit_template(tmp_path)
    again = await make_bot(rate_per_s=4, batch_size=2)
    await _resumed_by_the_watcher(again, "crash")
    assert await state_of(again, "crash") == "failed"
    assert len(smtp.messages) == sent and _unapproved(smtp) == 0
    entries = await _audit(again, "campaign.fail")
    assert [(e.before, e.after) for e in entries] == [({"state": "sending"}, {"state": "failed"})]
    assert "no longer matches" in (entries[0].detail or "")
    assert any("no longer matches" in text for text in _said(again)), _said(again)


async def _is_failed(bot, name: str) -> bool:  # type: ignore[no-untyped-def]
    return await state_of(bot, name) == "failed"


async def test_a_rejection_voids_earlier_approvals(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(required_approvals=2)
    await bot.say(SENDER, "/campaign new c2 --to customers --template welcome")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit c2")
    assert "1 of 2" in await bot.say(APPROVER, "/approve c2")
    assert "Rejected" in await bot.say(APPROVER2, "/reject c2 wrong audience")
    assert "Submitted" in await bot.say(SENDER, "/campaign submit c2")  # unchanged: a new round all the same
    reply = await bot.say(APPROVER2, "/approve c2")  # omar decides again on the new submission
    assert "1 of 2" in reply and "needs 1 more" in reply, reply
    await bot.settle()
    assert await state_of(bot, "c2") == "pending_approval" and smtp.messages == []
    assert "1 of 2 approvals" in await bot.say(SENDER, "/campaign status c2")
    reply = await bot.say(APPROVER, "/approve c2")  # maria again: now the second approval of this round
    assert "sending has started" in reply, reply
    await bot.settle()
    assert await state_of(bot, "c2") == "completed" and len(smtp.messages) == len(CONSENTED)


async def test_help_shows_the_flags_campaign_new_requires_and_the_parser_enforces_them(make_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    usage = "/campaign new <name> --to <to> --template <template> [--where <where>] [--subject <subject>] [--no-tracking]"
    assert usage in await bot.say(SENDER, "/help")
    for command, says in (
        ("/campaign new x", "/campaign new needs --to and --template."),
        ("/campaign new x --to customers", "/campaign new needs --template."),
        ("/campaign new x --template welcome --no-tracking", "/campaign new needs --to."),
    ):
        reply = await bot.say(SENDER, command)
        assert says in reply and usage in reply, reply
    assert "no campaigns yet" in await bot.say(SENDER, "/campaign list")
    assert "Draft campaign" in await bot.say(SENDER, "/campaign new x --to customers --template welcome")


async def test_the_email_events_webhook_refuses_an_oversize_body_while_reading_it(make_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(webhook_secret="s3cret")
    never = asyncio.Event()
    offered = 0

    async def endless() -> AsyncIterator[bytes]:  # no Content-Length; the sender never finishes
        nonlocal offered
        while True:
            if offered > MAX_WEBHOOK_BYTES:
                await never.wait()  # only a reader that stops at the cap gets to answer
            offered += 65536
            yield b"x" * 65536

    async with web(bot) as client:
        resp = await asyncio.wait_for(client.post("/hooks/email-events", content=endless()), 5)
        assert resp.status_code == 413 and "larger than" in resp.json()["error"]
        declared = await client.post("/hooks/email-events", content=b"x" * (MAX_WEBHOOK_BYTES + 1))
        assert declared.status_code == 413
        bad_length = await client.post("/hooks/email-events", content=b"{}", headers={"content-length": "x"})
        assert bad_length.status_code == 400
    assert offered <= MAX_WEBHOOK_BYTES + 65536


async def test_resume_without_the_template_fails_the_campaign_and_says_so(
    make_bot, smtp, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(rate_per_s=4, batch_size=2)
    sent = await _paused_midway(bot, smtp, "lost")
    for path in (tmp_path / "templates").glob("welcome.*"):
        path.unlink()
    reply = await bot.say(SENDER, "/campaign resume lost")
    await bot.settle()
    assert "not resumed and has failed" in reply and "template can no longer be loaded" in reply, reply
    assert len(smtp.messages) == sent and await state_of(bot, "lost") == "failed"
    assert len(await _audit(bot, "campaign.fail")) == 1
