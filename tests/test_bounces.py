"""Bounces and complaints: DSNs (RFC 3464) mailed to the VERP return path through the embedded
SMTP server, and the signed email-events webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import aiosmtplib
import httpx
from sqlalchemy import select

from bot.campaigns.bounces import classify_status, parse_report
from bot.db.models import CampaignEvent, Suppression
from bot.mail.server import EmbeddedSmtpServer
from tests.smtp import free_port
from tests.test_campaign_delivery import make_bot, send  # noqa: F401  (fixture)


def dsn(recipient: str, status: str, action: str = "failed", msg_id: str = "<dsn-1@mx.example>") -> bytes:
    """A delivery status notification as an MTA writes one (RFC 3464)."""
    return f"""From: MAILER-DAEMON@mx.example
To: bounces@corp.example
Subject: Undelivered Mail Returned to Sender
Message-ID: {msg_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example
Arrival-Date: Thu, 26 Nov 2026 07:00:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} mailbox problem

--b1
Content-Type: text/rfc822-headers

Subject: News

--b1--
""".replace("\n", "\r\n").encode()


def test_dsn_parsing_classifies_hard_soft_and_ignores_success() -> None:
    hard = parse_report(dsn("x@example.com", "5.1.1"))
    assert [(f.kind, f.status, f.recipient) for f in hard] == [("hard_bounce", "5.1.1", "x@example.com")]
    assert parse_report(dsn("x@example.com", "4.2.2"))[0].kind == "soft_bounce"
    assert parse_report(dsn("x@example.com", "4.4.7", action="delayed"))[0].kind == "soft_bounce"
    assert parse_report(dsn("x@example.com", "2.0.0", action="delivered")) == []
    assert classify_status("5.2.2") == "soft_bounce" and classify_status("5.7.1") == "soft_bounce"
    assert parse_report(b"Subject: out of office\r\n\r\nI am away until Monday.\r\n") == []
    assert parse_report(b"garbage \x00\xff") == []


def test_only_a_dsn_about_the_address_itself_is_a_hard_bounce() -> None:
    """Invariant 8: a DSN that our sender was refused (5.1.7/5.1.8), or one about routing, content or the
    receiving system, is not the recipient's own failure; it counts as soft, not an instant suppression."""
    for status in ("5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"):
        assert classify_status(status) == "hard_bounce", status
    for status in ("5.1.7", "5.1.8", "5.0.0", "5.3.0", "5.4.4", "5.4.7", "5.5.0", "5.6.1", "5.7.26"):
        assert classify_status(status) == "soft_bounce", status


async def _return_path(bot, smtp, email: str) -> str:  # type: ignore[no-untyped-def]
    return smtp.handler.to(email)[0].mail_from


async def test_dsns_to_the_return_path_suppress_hard_at_once_and_soft_after_the_limit(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    bot = await make_bot(soft_bounce_limit=2)
    await send(bot, "news")
    await bot.settle()
    server = EmbeddedSmtpServer("127.0.0.1", free_port(), bot.app.mail_routes())
    await server.start()
    try:

        async def mail(rcpt: str, data: bytes) -> None:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port)
            await client.connect()
            try:
                await client.sendmail("", [rcpt], data)  # bounces come from the null sender
            finally:
                await client.quit()

        lena = await _return_path(bot, smtp, "lena@example.com")
        raj = await _return_path(bot, smtp, "raj@example.net")
        await mail(lena, dsn("lena@example.com", "5.1.1"))
        await mail(lena, dsn("lena@example.com", "5.1.1"))  # the same DSN again: one effect
        await mail(raj, dsn("raj@example.net", "4.2.2", msg_id="<s1@mx>"))
        async with bot.core.ctx.sessions() as session:
            reasons = dict((await session.execute(select(Suppression.email, Suppression.reason))).all())
        assert reasons == {"lena@example.com": "hard_bounce"}
        await mail(raj, dsn("raj@example.net", "4.2.2", msg_id="<s2@mx>"))
        forged = lena.replace("bounces+", "bounces+1")
        try:
            await mail(forged, dsn("kim@example.org", "5.1.1", msg_id="<f@mx>"))
            raise AssertionError("a forged return path was accepted")
        except aiosmtplib.SMTPRecipientsRefused:
            pass
    finally:
        await server.stop()
    async with bot.core.ctx.sessions() as session:
        reasons = dict((await session.execute(select(Suppression.email, Suppression.reason))).all())
        kinds = sorted((await session.execute(select(CampaignEvent.kind))).scalars().all())
    assert reasons == {"lena@example.com": "hard_bounce", "raj@example.net": "soft_bounce"}
    assert kinds == ["hard_bounce", "soft_bounce", "soft_bounce"]
    reply = await bot.say("sam@corp.example", "/campaign report news")
    assert "hard bounces 1" in reply and "soft bounces 1" in reply and "delivered 3" in reply


async def test_the_email_events_webhook_needs_a_valid_signature(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    secret = "hook-secret-0123456789"
    bot = await make_bot(webhook_secret=secret)
    await send(bot, "hooked")
    await bot.settle()
    body = json.dumps(
        {
            "events": [
                {"id": "e1", "type": "complaint", "email": "kim@example.org"},
                {
                    "id": "e2",
                    "type": "bounce",
                    "bounce": "hard",
                    "return_path": smtp.handler.to("ode@example.com")[0].mail_from,
                    "status": "5.1.1",
                },
                {"id": "e3", "type": "delivery", "email": "raj@example.net"},
            ]
        }
    ).encode()
    ts = str(int(time.time()))
    good = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t"
    ) as web:
        bad = await web.post(
            "/hooks/email-events",
            content=body,
            headers={
                "x-postroom-timestamp": ts,
                "x-postroom-signature": good[:-1] + ("1" if good[-1] == "0" else "0"),
            },
        )
        assert bad.status_code == 401
        stale = await web.post(
            "/hooks/email-events",
            content=body,
            headers={"x-postroom-timestamp": str(int(time.time()) - 3600), "x-postroom-signature": good},
        )
        assert stale.status_code == 401
        ok = await web.post(
            "/hooks/email-events",
            content=body,
            headers={"x-postroom-timestamp": ts, "x-postroom-signature": good},
        )
        assert ok.json() == {"accepted": 2, "ignored": 1}
        again = await web.post(
            "/hooks/email-events",
            content=body,
            headers={"x-postroom-timestamp": ts, "x-postroom-signature": good},
        )
        assert again.json() == {"accepted": 0, "ignored": 3}
        deep = b'{"events": ' + b"[" * 4000 + b"]" * 4000 + b"}"  # under the cap, past the parser's depth
        ts = str(int(time.time()))
        sig = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + deep, hashlib.sha256).hexdigest()
        nested = await web.post(
            "/hooks/email-events",
            content=deep,
            headers={"x-postroom-timestamp": ts, "x-postroom-signature": sig},
        )
        assert nested.status_code == 400 and "events" in nested.json()["error"]
        twice = b'{"events": [], "events": [{"id": "e9", "type": "complaint", "email": "kim@example.org"}]}'
        sig = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + twice, hashlib.sha256).hexdigest()
        duplicate = await web.post(
            "/hooks/email-events",
            content=twice,
            headers={"x-postroom-timestamp": ts, "x-postroom-signature": sig},
        )
        assert duplicate.status_code == 400, duplicate.text
        assert (
            duplicate.json()["error"]
            == "The key “events” appears twice in one JSON object; send each field once."
        )
    async with bot.core.ctx.sessions() as session:
        reasons = dict((await session.execute(select(Suppression.email, Suppression.reason))).all())
    assert reasons == {"kim@example.org": "complaint", "ode@example.com": "hard_bounce"}


async def test_the_mailto_unsubscribe_suppresses_only_with_a_valid_token(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from urllib.parse import unquote

    bot = await make_bot()
    await send(bot, "letters")
    await bot.settle()
    header = smtp.handler.to("raj@example.net")[0].message["List-Unsubscribe"]
    mailto = header.split("<mailto:")[1].rstrip(">")
    address, _, query = mailto.partition("?subject=")
    server = EmbeddedSmtpServer("127.0.0.1", free_port(), bot.app.mail_routes())
    await server.start()
    try:
        for subject in ("unsubscribe nonsense.token", unquote(query)):
            data = f"From: raj@example.net\r\nTo: {address}\r\nSubject: {subject}\r\n\r\n\r\n".encode()
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port)
            await client.connect()
            await client.sendmail("raj@example.net", [address], data)
            await client.quit()
            async with bot.core.ctx.sessions() as session:
                reasons = dict((await session.execute(select(Suppression.email, Suppression.reason))).all())
            assert reasons == ({} if "nonsense" in subject else {"raj@example.net": "unsubscribed"})
    finally:
        await server.stop()


# Attacker tryout: the webhook silently dropped every event after the 1000th and answered 200, so the
# email service never sent them again. Over the limit the whole body is refused, and nothing recorded.
async def test_the_email_events_webhook_refuses_more_than_1000_events_whole(make_bot) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    secret = "hook-secret-0123456789"
    bot = await make_bot(webhook_secret=secret)
    events = [{"id": f"c{i}", "type": "complaint", "email": f"p{i}@example.org"} for i in range(1001)]
    body = json.dumps({"events": events}).encode()
    ts = str(int(time.time()))
    sig = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bot.app.web()), base_url="http://t"
    ) as web:
        answer = await web.post(
            "/hooks/email-events",
            content=body,
            headers={"x-postroom-timestamp": ts, "x-postroom-signature": sig},
        )
    assert answer.status_code == 413
    assert answer.json() == {"error": "Send at most 1000 events per request; none of these was recorded."}
    async with bot.core.ctx.sessions() as session:
        assert (await session.execute(select(Suppression.email))).all() == []


# Attacker tryout: a DSN sent to lena's return path naming another recipient suppressed lena regardless,
# and a return path never expired, so anyone who once saw it could suppress her any time later. The DSN's
# Final-Recipient must be the return path's recipient, and it must come within campaigns.bounce_window_days.
async def test_a_dsn_must_name_the_return_paths_recipient_and_come_within_the_window(make_bot, smtp) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from datetime import timedelta

    from sqlalchemy import update

    from bot.db.models import Delivery

    bot = await make_bot()
    await send(bot, "news")
    await bot.settle()
    server = EmbeddedSmtpServer("127.0.0.1", free_port(), bot.app.mail_routes())
    await server.start()

    async def suppressed() -> dict[str, str]:
        async with bot.core.ctx.sessions() as session:
            return dict((await session.execute(select(Suppression.email, Suppression.reason))).all())

    try:

        async def mail(rcpt: str, data: bytes) -> None:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port)
            await client.connect()
            try:
                await client.sendmail("", [rcpt], data)
            finally:
                await client.quit()

        lena = await _return_path(bot, smtp, "lena@example.com")
        raj = await _return_path(bot, smtp, "raj@example.net")
        await mail(lena, dsn("kim@example.org", "5.1.1", msg_id="<other@mx>"))  # names someone else
        assert await suppressed() == {}
        async with bot.core.ctx.sessions() as session, session.begin():
            await session.execute(
                update(Delivery)
                .where(Delivery.email == "raj@example.net")
                .values(sent_at=bot.core.ctx.now() - timedelta(days=31))
            )
        await mail(raj, dsn("raj@example.net", "5.1.1", msg_id="<late@mx>"))  # after the 30-day window
        assert await suppressed() == {}
        await mail(lena, dsn("Lena@Example.com", "5.1.1", msg_id="<own@mx>"))  # her own, in time
        assert await suppressed() == {"lena@example.com": "hard_bounce"}
    finally:
        await server.stop()
