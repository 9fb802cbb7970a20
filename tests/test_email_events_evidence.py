"""The email-events webhook suppresses on no weaker evidence than the SMTP path: a return path that claims
to be Postroom's but fails its MAC is ignored (never matched by address instead), an enhanced status code
decides over a "bounce" hint, and the answer counts every event that changed nothing as ignored. The email
services' endpoints (bot/campaigns/email_services.py) share the return-path rule and the count.

A real campaign sent to the aiosmtpd sink on loopback, a real database, the web app over ASGI."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from sqlalchemy import func, select

from bot.db.models import CampaignEvent, Delivery, Suppression
from tests.loopback import serve
from tests.test_campaign_delivery import make_bot, send
from tests.test_email_services import MAILGUN_KEY, made, mailgun_body, mailgun_failed

__all__ = ["made", "make_bot"]  # the fixtures, used by name
SECRET = "hook-secret-0123456789"


async def post(bot: Any, events: list[dict[str, Any]]) -> dict[str, int]:
    body = json.dumps({"events": events}).encode()
    ts = str(int(time.time()))
    sig = "v1=" + hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t"
    ) as web:
        r = await web.post(
            "/hooks/email-events",
            content=body,
            headers={"x-postroom-timestamp": ts, "x-postroom-signature": sig},
        )
    assert r.status_code == 200, r.text
    return r.json()


async def suppressed(bot: Any) -> dict[str, str]:
    async with bot.core.ctx.sessions() as session:
        return dict((await session.execute(select(Suppression.email, Suppression.reason))).all())


async def events(bot: Any) -> int:
    async with bot.core.ctx.sessions() as session:
        return (await session.execute(select(func.count()).select_from(CampaignEvent))).scalar_one()


async def delivery_id(bot: Any, email: str) -> int:
    async with bot.core.ctx.sessions() as session:
        return (await session.execute(select(Delivery.id).where(Delivery.email == email))).scalar_one()


def base36(n: int) -> str:
    digits, out = "0123456789abcdefghijklmnopqrstuvwxyz", ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


# Tryout: `bounces+7j-ffffffffffffffff@corp.example` (a real delivery id, a wrong MAC) was treated as no return
# path at all, and the latest message to `email` was suppressed instead.
async def test_a_return_path_that_fails_its_mac_is_ignored_not_matched_by_address(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(webhook_secret=SECRET)
    await send(bot, "hooked")
    await bot.settle()
    forged = f"bounces+{base36(await delivery_id(bot, 'ode@example.com'))}-ffffffffffffffff@corp.example"
    event = {"id": "f1", "type": "bounce", "bounce": "hard", "status": "5.1.1", "return_path": forged}
    answer = await post(bot, [{**event, "email": "ode@example.com"}])
    assert answer == {"accepted": 0, "ignored": 1}
    assert await suppressed(bot) == {} and await events(bot) == 0
    # Verification tryout: the same forged return path in angle brackets, or as a display address, was
    # not seen as ours and fell back to the address: suppressed.
    for n, written in enumerate((f"<{forged}>", f"Bounces <{forged}>", f" <{forged.upper()}> ")):
        answer = await post(
            bot, [{**event, "id": f"fb{n}", "return_path": written, "email": "ode@example.com"}]
        )
        assert answer == {"accepted": 0, "ignored": 1}, written
    assert await suppressed(bot) == {} and await events(bot) == 0
    # The same event with its real return path is believed.
    real = smtp.handler.to("ode@example.com")[0].mail_from
    assert await post(bot, [{**event, "id": "f2", "return_path": real}]) == {"accepted": 1, "ignored": 0}
    assert await suppressed(bot) == {"ode@example.com": "hard_bounce"}


# Tryout: "bounce": "hard" with "status": "4.2.2" (mailbox full) suppressed as a hard bounce.
async def test_a_status_code_decides_over_the_bounce_hint(make_bot) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(webhook_secret=SECRET)
    await send(bot, "hooked")
    await bot.settle()
    full = [
        {"id": "s1", "type": "bounce", "bounce": "hard", "status": "4.2.2", "email": "ode@example.com"},
        {"id": "s2", "type": "bounce", "bounce": "hard", "status": "5.2.2", "email": "kim@example.org"},
    ]
    assert await post(bot, full) == {"accepted": 2, "ignored": 0}
    assert await suppressed(bot) == {}
    async with bot.core.ctx.sessions() as session:
        kinds = sorted((await session.execute(select(CampaignEvent.kind))).scalars())
    assert kinds == ["soft_bounce", "soft_bounce"]
    # A 5.1.1 is the address's own, whatever the hint; without a code the hint is all there is.
    more = [
        {"id": "s3", "type": "bounce", "bounce": "soft", "status": "5.1.1", "email": "raj@example.net"},
        {"id": "s4", "type": "bounce", "bounce": "hard", "email": "lena@example.com"},
    ]
    assert await post(bot, more) == {"accepted": 2, "ignored": 0}
    assert await suppressed(bot) == {"raj@example.net": "hard_bounce", "lena@example.com": "hard_bounce"}


# Tryout: an event about an address Postroom never mailed, or a return path naming another recipient, changed
# nothing and was answered {"accepted": 1, "ignored": 0}.
async def test_events_that_change_nothing_are_counted_as_ignored(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]
    bot = await make_bot(webhook_secret=SECRET)
    await send(bot, "hooked")
    await bot.settle()
    odes = smtp.handler.to("ode@example.com")[0].mail_from
    answer = await post(
        bot,
        [
            {
                "id": "i1",
                "type": "bounce",
                "bounce": "hard",
                "status": "5.1.1",
                "email": "nobody@else.example",
            },
            {"id": "i2", "type": "complaint", "email": "kim@example.org", "return_path": odes},
            {"id": "i3", "type": "complaint", "email": "raj@example.net"},
        ],
    )
    assert answer == {"accepted": 1, "ignored": 2}
    assert await suppressed(bot) == {"raj@example.net": "complaint"}


# The services' endpoints shared the fallback: Mailgun's envelope.sender (a VERP return path with a wrong MAC)
# was dropped and the latest message to the recipient was suppressed.
async def test_a_service_event_whose_return_path_fails_its_mac_is_ignored(made) -> None:  # type: ignore[no-untyped-def]
    bot = await made({"mailgun": {"signing_key": MAILGUN_KEY}})
    hard = mailgun_failed(
        "kim@example.org", "permanent", "bounce", 550, "5.1.1 no such user", "", "forged-rp-1"
    )
    forged = f"bounces+{base36(await delivery_id(bot, 'kim@example.org'))}-ffffffffffffffff@corp.example"
    hard["envelope"]["sender"] = forged
    async with serve(bot.app.web()) as base, httpx.AsyncClient(base_url=base) as web:
        r = await web.post("/hooks/mailgun", content=mailgun_body(hard))
        assert r.json() == {"accepted": 0, "ignored": 1}
        assert await suppressed(bot) == {} and await events(bot) == 0
        # A stranger Postroom never mailed changes nothing either, and is counted so.
        stranger = mailgun_failed(
            "nobody@else.example", "permanent", "bounce", 550, "5.1.1 no such user", "", "stranger-1"
        )
        r = await web.post("/hooks/mailgun", content=mailgun_body(stranger))
        assert r.json() == {"accepted": 0, "ignored": 1}
        # Mailgun's own sender (not a return path of ours) is no claim: the recipient's latest message is meant.
        hard["envelope"]["sender"] = "bob@corp.example"
        hard["id"] = "plain-sender-1"
        r = await web.post("/hooks/mailgun", content=mailgun_body(hard))
        assert r.json() == {"accepted": 1, "ignored": 0}
        assert await suppressed(bot) == {"kim@example.org": "hard_bounce"}
