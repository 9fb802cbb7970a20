"""/suppressions list|show|lift: every suppression keeps its evidence; an admin sees it and lifts a wrong
one, audited; an unsubscribe or a complaint is lifted only after fresh consent; an erasure never.
Real SMTP server (tests/smtp.py), real database, the web app for the one-click unsubscribe."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from bot.campaigns.bounces import Finding, record_finding
from bot.contacts.importer import import_contacts
from bot.db.models import AuditEntry, Campaign, Delivery, Suppression
from tests.conftest import ADMIN, SENDER
from tests.test_campaign_delivery import CONSENTED, make_bot, received, send, web

__all__ = ["make_bot"]  # the fixture, used by name


async def _unsubscribe(bot, email: str, campaign: str) -> None:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        cid = (await session.execute(select(Campaign.id).where(Campaign.name == campaign))).scalar_one()
    token = bot.core.ctx.signer.sign("u", str(cid), email)
    async with web(bot) as client:
        done = await client.post(
            f"/u/{token}",
            content="List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert done.status_code == 200


async def _rows(bot) -> dict[str | None, Suppression]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        return {s.email: s for s in (await session.execute(select(Suppression))).scalars().all()}


async def _audit(bot, action: str) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    async with bot.core.ctx.sessions() as session:
        return list(
            (await session.execute(select(AuditEntry).where(AuditEntry.action == action))).scalars().all()
        )


async def test_list_show_and_lift_with_the_evidence_and_consent_rules(make_bot, smtp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    smtp.handler.fail_rcpt["kim@example.org"] = [550]
    await send(bot, "first")
    await bot.settle()
    await _unsubscribe(bot, "lena@example.com", "first")
    async with bot.core.ctx.sessions() as session:
        ode = (
            await session.execute(select(Delivery.id).where(Delivery.email == "ode@example.com"))
        ).scalar_one()
    dsn = Finding("complaint", "", None, "abuse report (feedback-report)")
    assert await record_finding(bot.core.ctx, ode, dsn, via="dsn") == "complaint"

    rows = await _rows(bot)
    assert {e: (s.reason, s.kind) for e, s in rows.items()} == {
        "kim@example.org": ("hard_bounce", "rcpt"),
        "lena@example.com": ("unsubscribed", "unsubscribe"),
        "ode@example.com": ("complaint", "complaint"),
    }
    assert rows["kim@example.org"].evidence == "550 5.1.1 no such user"
    assert rows["lena@example.com"].actor == "lena@example.com"

    listed = await bot.say(ADMIN, "/suppressions list")
    assert listed.splitlines()[0] == "Suppressed addresses: 3 (complaint 1, hard bounce 1, unsubscribed 1)."
    newest = listed.splitlines()[2:]
    assert [line.split(" — ")[0].strip() for line in newest] == [
        "ode@example.com",
        "lena@example.com",
        "kim@example.org",
    ]
    assert "kim@example.org" in await bot.say(ADMIN, "/suppressions list --reason hard_bounce")
    assert "lena@example.com" not in await bot.say(ADMIN, "/suppressions list --reason hard_bounce")
    shown = await bot.say(ADMIN, "/suppressions show Kim@Example.org")
    assert (
        "kim@example.org is suppressed: hard bounce" in shown and "evidence: 550 5.1.1 no such user" in shown
    )
    assert "the mail server refused the address at RCPT" in shown and "campaign: first" in shown
    shown = await bot.say(ADMIN, "/suppressions show ode@example.com")
    assert "complaint" in shown and "an abuse report" in shown and "feedback-report" in shown
    assert "is for admins" in await bot.say(SENDER, "/suppressions show kim@example.org")

    # An unsubscribe is the person's own word: not lifted without consent given after it.
    for who in ("lena@example.com", "ode@example.com"):
        refused = await bot.say(ADMIN, f'/suppressions lift {who} --reason "asked by phone"')
        assert "needs consent given after it" in refused and "consent_at" in refused, refused
    assert len(await _rows(bot)) == 3 and await _audit(bot, "suppression.lift") == []

    # ... a contacts import with a newer consent_at records it; then the lift goes through, audited.
    now = datetime.now(UTC).isoformat()  # after the unsubscribe, to the microsecond
    (tmp_path / "again.csv").write_text(
        f"email,name,consent_at,consent_source\nlena@example.com,Lena,{now},phone\n"
    )
    await import_contacts(bot.core.ctx, tmp_path / "again.csv", "customers")
    lifted = await bot.say(ADMIN, '/suppressions lift lena@example.com --reason "signed up again by phone"')
    assert "Lifted the suppression of lena@example.com (unsubscribed" in lifted, lifted
    lifted = await bot.say(
        ADMIN, '/suppressions lift kim@example.org --reason "the typo in the address is fixed"'
    )
    assert "Lifted the suppression of kim@example.org (hard bounce" in lifted, lifted
    assert set(await _rows(bot)) == {"ode@example.com"}
    entries = await _audit(bot, "suppression.lift")
    assert [(e.actor, e.subject, e.detail) for e in entries] == [
        (ADMIN, "contact:lena@example.com", "signed up again by phone"),
        (ADMIN, "contact:kim@example.org", "the typo in the address is fixed"),
    ]
    assert entries[1].before["evidence"] == "550 5.1.1 no such user" and entries[1].before["kind"] == "rcpt"
    assert "kim@example.org is not suppressed." in await bot.say(ADMIN, "/suppressions show kim@example.org")
    assert "is not suppressed; there is nothing to lift" in await bot.say(
        ADMIN, "/suppressions lift kim@example.org --reason again"
    )

    # Lifted addresses are mailed again; the complaint still is not.
    smtp.handler.messages.clear()
    await send(bot, "second")
    await bot.settle()
    assert received(smtp) == Counter({e: 1 for e in CONSENTED if e != "ode@example.com"})


async def test_an_erasure_is_never_lifted_and_keeps_no_evidence_naming_the_address(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    smtp.handler.fail_rcpt["kim@example.org"] = [550]
    await send(bot, "first")
    await bot.settle()
    assert "Erased kim@example.org" in await bot.say(ADMIN, "/privacy erase kim@example.org --confirm")
    rows = await _rows(bot)
    assert [(s.email, s.reason, s.kind, s.evidence, s.actor) for s in rows.values()] == [
        (None, "erased", "erased", None, ADMIN)
    ]
    refused = await bot.say(ADMIN, "/suppressions lift kim@example.org --reason mistake")
    assert "was erased on their request" in refused and "can't be lifted" in refused
    assert len(await _rows(bot)) == 1
    listed = await bot.say(ADMIN, "/suppressions list")
    assert "(erased; hash " in listed and "kim@example.org" not in listed
    assert "erased on request" in await bot.say(ADMIN, "/suppressions show kim@example.org")


async def test_nobody_suppressed(make_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot()
    assert await bot.say(ADMIN, "/suppressions list") == "Nobody is suppressed."
