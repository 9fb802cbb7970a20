"""Clean lists: inactive contacts are listed, a re-permission automation asks them (after its approval),
and suppressing those who did not answer waits for an approver who is not the requester."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.db.models import CampaignEvent, ConsentEvent, Delivery, Suppression
from tests.audience_kit import at, make_bot  # noqa: F401
from tests.conftest import ADMIN, APPROVER, SENDER


async def test_the_sunset_flow_needs_its_approvals(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    start = bot.app.ctx.now()
    at(bot, start + timedelta(days=40))
    reply = await bot.say(SENDER, "/contacts inactive customers --days 30")
    assert reply.startswith("3 contacts of “customers” have not opened or clicked for 30 days"), reply
    assert "mail-privacy proxies" in reply

    await bot.say(SENDER, "/automation new repermit --on inactive:30d --template welcome --to customers")
    assert await bot.app.automations.scan() == {}  # not approved: not even scanned
    assert "Submitted" in await bot.say(SENDER, "/automation submit repermit")
    await bot.say(APPROVER, "/approve automation:repermit")
    await bot.settle()
    assert await bot.app.automations.scan() == {"repermit": 3}
    await bot.settle()
    async with bot.app.ctx.sessions() as s, s.begin():
        kim = (await s.execute(select(Delivery).where(Delivery.email == "kim@example.org"))).scalar_one()
        assert kim.status == "sent"
        s.add(
            CampaignEvent(
                campaign_id=kim.campaign_id,
                delivery_id=kim.id,
                email_hash="k",
                kind="click",
                at=start + timedelta(days=41),
            )
        )

    at(bot, start + timedelta(days=50))
    assert "Nobody to sunset" in await bot.say(
        SENDER, "/contacts sunset customers --after repermit --window 14d"
    )
    at(bot, start + timedelta(days=60))
    reply = await bot.say(SENDER, "/contacts sunset customers --after repermit --window 14d")
    assert (
        reply == "Sunset #2 waits for an approver: 2 contacts of “customers” would be suppressed."
        or "waits for an approver: 2 contacts" in reply
    ), reply
    held = int(reply.split("#")[1].split()[0])
    card = bot.cards()[-1].card
    assert card is not None and card.title.startswith("Approval needed: sunset") and len(card.buttons) == 2
    async with bot.app.ctx.sessions() as s:
        assert (await s.execute(select(Suppression))).first() is None  # nothing until approved
    assert "is for approvers" in await bot.say(SENDER, f"/sunset approve {held}")
    own = await bot.say(ADMIN, "/contacts sunset customers --after repermit --window 14d")
    mine = int(own.split("#")[1].split()[0])
    assert "another approver must decide" in await bot.say(ADMIN, f"/sunset approve {mine}")
    assert "Rejected sunset" in await bot.say(APPROVER, f"/sunset reject {mine}")

    assert f"Approved sunset #{held}: 2 contacts suppressed." == await bot.say(
        APPROVER, f"/sunset approve {held}"
    )
    assert "decided already" in await bot.say(APPROVER, f"/sunset approve {held}")
    async with bot.app.ctx.sessions() as s:
        gone = {(r.email, r.reason) for r in (await s.execute(select(Suppression))).scalars()}
        events = (
            (await s.execute(select(ConsentEvent.kind).where(ConsentEvent.kind == "sunset"))).scalars().all()
        )
    assert gone == {("lena@example.com", "inactive"), ("raj@example.net", "inactive")}  # Kim clicked
    assert len(events) == 2


async def test_a_sunset_after_a_never_approved_automation_says_so(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot()
    await bot.say(SENDER, "/automation new reperm --on inactive:30d --template welcome --to customers")
    reply = await bot.say(SENDER, "/contacts sunset customers --after reperm")
    assert "never approved" in reply and "everyone" not in reply, reply
    assert "/automation submit reperm" in reply, reply
