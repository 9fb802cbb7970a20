"""The email services' bounce and complaint webhooks over real HTTP (uvicorn on loopback), on SQLite and
PostgreSQL: Amazon SES through a fake SNS that serves a self-made signing certificate, SendGrid's ECDSA-signed
Event Webhook, Mailgun's HMAC-signed webhooks and Postmark's basic-auth webhooks.

The payloads are the services' documented examples with the recipients changed to the test's contacts:
- SES: https://docs.aws.amazon.com/ses/latest/dg/notification-examples.html (bounce with a DSN, complaint)
  inside SNS messages as https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html and
  https://docs.aws.amazon.com/sns/latest/dg/http-subscription-confirmation-json.html show them, signed as
  https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html describes;
- SendGrid: https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event (bounce, spamreport),
  signed as …/getting-started-event-webhook-security-features (ECDSA P-256 over timestamp + body);
- Mailgun: https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhooks (failed, complained),
  signed as …/webhooks/securing-webhooks (HMAC-SHA256 of timestamp + token);
- Postmark: https://postmarkapp.com/developer/webhooks/bounce-webhook and …/spam-complaint-webhook.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.console import ConsoleAdapter
from bot.app import build_app
from bot.campaigns.email_services import judge_status
from bot.campaigns.sns import sns_url_allowed
from bot.contacts.importer import import_contacts
from bot.db.models import CampaignEvent, Suppression
from tests.conftest import HR, ChatBot, make_settings
from tests.loopback import serve
from tests.test_campaign_delivery import CSV, FAST, send

TOPIC = "arn:aws:sns:us-west-2:123456789012:ses-bounces"
FAKE_URLS = r"http://127\.0\.0\.1:\d+/[A-Za-z0-9/._?=&-]*"
FAILURES = ("hard_bounce", "soft_bounce", "complaint")


# -- the services' keys and the fake SNS ----------------------------------------------------------------
def self_signed() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-west-2.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


class FakeSns:
    """Serves the signing certificate and answers SubscribeURL, counting each."""

    def __init__(self) -> None:
        self.key, self.pem = self_signed()
        self.cert_gets = 0
        self.confirmations: list[str] = []
        self.base = ""

    def app(self) -> Starlette:
        async def cert(request: Request) -> Response:
            self.cert_gets += 1
            return Response(self.pem, media_type="application/x-pem-file")

        async def confirm(request: Request) -> Response:
            self.confirmations.append(request.query_params.get("Token", ""))
            return Response("<ConfirmSubscriptionResponse/>", media_type="text/xml")

        return Starlette(
            routes=[
                Route("/SimpleNotificationService-fake.pem", cert),
                Route("/confirm", confirm),
            ]
        )

    def sign(
        self, message: dict[str, Any], version: str = "2", key: rsa.RSAPrivateKey | None = None
    ) -> bytes:
        """The message as SNS posts it: fields as documented, signed over "Name\\nValue\\n" of the signed
        fields in the documented order (written here from the AWS page, not taken from bot/)."""
        message = {
            **message,
            "SignatureVersion": version,
            "SigningCertURL": f"{self.base}/SimpleNotificationService-fake.pem",
        }
        if message["Type"] == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        text = "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = (key or self.key).sign(text, padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(signature).decode()
        return json.dumps(message).encode()


def notification(note: dict[str, Any], message_id: str) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(note),
        "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
    }


def ses_bounce(
    email: str, source: str, bounce_type: str = "Permanent", sub: str = "General", status: str = "5.1.1"
) -> dict[str, Any]:
    recipient: dict[str, Any] = {"emailAddress": email, "action": "failed"}
    if status:
        recipient["status"] = status
        recipient["diagnosticCode"] = f"smtp; 550 {status} <{email}>... User"
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "reportingMTA": "dns; email.example.com",
            "bouncedRecipients": [recipient],
            "bounceSubType": sub,
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
            "remoteMtaIp": "127.0.2.0",
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "source": source,
            "sourceArn": "arn:aws:ses:us-west-2:888888888888:identity/corp.example",
            "sourceIp": "127.0.3.0",
            "sendingAccountId": "123456789012",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": [email],
        },
    }


def ses_complaint(email: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2016-01-27T14:59:38.237Z",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
            "source": "news@corp.example",
            "destination": [email],
        },
    }


def sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()  # the form SendGrid's settings page shows


def sendgrid_headers(key: ec.EllipticCurvePrivateKey, body: bytes, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }


MAILGUN_KEY = "4f6c0b2e91d8a7350c1e6b9fd2a4e873"


def mailgun_body(
    data: dict[str, Any], *, ts: int | None = None, token: str | None = None, key: str = MAILGUN_KEY
) -> bytes:
    stamp = str(int(time.time()) if ts is None else ts)
    token = token or secrets.token_hex(25)  # 50 characters, as Mailgun's
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data}
    ).encode()


def mailgun_failed(
    email: str, severity: str, reason: str, code: int, message: str, description: str, event_id: str
) -> dict[str, Any]:
    return {
        "event": "failed",
        "id": event_id,
        "timestamp": 1521233195.375624,
        "log-level": "error" if severity == "permanent" else "warn",
        "severity": severity,
        "reason": reason,
        "envelope": {"sender": "bob@corp.example", "transport": "smtp", "targets": email},
        "flags": {
            "is-routed": False,
            "is-authenticated": True,
            "is-system-test": False,
            "is-test-mode": False,
        },
        "delivery-status": {
            "attempt-no": 1,
            "message": message,
            "code": code,
            "description": description,
            "session-seconds": 0.0,
        },
        "message": {
            "headers": {
                "to": email,
                "message-id": "20130503182626.18666.16540@corp.example",
                "from": "Bob <bob@corp.example>",
                "subject": "Test permanent_fail webhook",
            },
            "attachments": [],
            "size": 111,
        },
        "recipient": email,
        "recipient-domain": email.rsplit("@", 1)[1],
        "storage": {
            "url": "https://se.api.mailgun.net/v3/domains/corp.example/messages/message_key",
            "key": "message_key",
        },
        "campaigns": [],
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"},
    }


def postmark_record(
    email: str, record_type: str, btype: str, type_code: int, record_id: int
) -> dict[str, Any]:
    return {
        "RecordType": record_type,
        "MessageStream": "outbound",
        "ID": record_id,
        "Type": btype,
        "TypeCode": type_code,
        "Name": "Hard bounce" if btype == "HardBounce" else btype,
        "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"a_key": "a_value", "b_key": "b_value"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details",
        "Email": email,
        "From": "sender@corp.example",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Test subject",
        "Content": "<Full dump of bounce>",
    }


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- the bot ---------------------------------------------------------------------------------------------
@pytest.fixture
async def made(database_url: str, smtp, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:  # type: ignore[no-untyped-def]
    bots: list[ChatBot] = []

    async def factory(email_events: dict[str, Any]) -> ChatBot:
        settings = make_settings(
            database_url,
            smtp.port,
            tmp_path,
            campaigns={**FAST, "reports_dir": str(tmp_path / "reports")},
            email_events=email_events,
        )
        app = await build_app(settings)
        console = ConsoleAdapter(HR, out=io.StringIO(), prompt=False)
        app.attach(console)
        await console.start(app.core)
        bot = ChatBot(app, console, console.out)  # type: ignore[arg-type]
        bots.append(bot)
        path = tmp_path / "contacts.csv"
        path.write_text(CSV)
        await import_contacts(app.core.ctx, path, "customers")
        await send(bot, "news")
        await bot.settle()
        return bot

    yield factory
    for bot in bots:
        await bot.app.close()


async def suppressed(bot: ChatBot) -> dict[str, str]:
    async with bot.core.ctx.sessions() as session:
        return dict((await session.execute(select(Suppression.email, Suppression.reason))).all())  # type: ignore[arg-type]


async def failures(bot: ChatBot) -> int:
    async with bot.core.ctx.sessions() as session:
        return (
            await session.execute(
                select(func.count()).select_from(CampaignEvent).where(CampaignEvent.kind.in_(FAILURES))
            )
        ).scalar_one()


async def unchanged(bot: ChatBot, before: tuple[dict[str, str], int]) -> None:
    assert (await suppressed(bot), await failures(bot)) == before


# -- Amazon SES through SNS ---------------------------------------------------------------------------------
async def test_ses_through_sns_suppresses_the_right_recipient_once_and_refuses_forgeries(made, smtp) -> None:  # type: ignore[no-untyped-def]
    sns = FakeSns()
    async with serve(sns.app()) as sns_base:
        sns.base = sns_base
        bot = await made({"ses": {"topic_arns": [TOPIC], "unsafe_cert_url_pattern": FAKE_URLS}})
        async with serve(bot.app.web()) as base, httpx.AsyncClient(base_url=base) as web:
            # The subscription is confirmed by GETting SubscribeURL, for a configured topic only.
            confirm = {
                "Type": "SubscriptionConfirmation",
                "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
                "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a7",
                "TopicArn": TOPIC,
                "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, "
                "visit the SubscribeURL included in this message.",
                "SubscribeURL": f"{sns_base}/confirm?Action=ConfirmSubscription&Token=2336412f",
                "Timestamp": "2012-04-26T20:45:04.751Z",
            }
            r = await web.post("/hooks/ses", content=sns.sign(confirm, "1"))
            assert r.status_code == 200, r.text
            assert sns.confirmations == ["2336412f"]
            other = {**confirm, "TopicArn": "arn:aws:sns:us-west-2:123456789012:someone-else"}
            r = await web.post("/hooks/ses", content=sns.sign(other, "1"))
            assert r.status_code == 403 and "topic_arns" in r.json()["error"]
            assert sns.confirmations == ["2336412f"]

            lena_path = smtp.handler.to("lena@example.com")[0].mail_from  # SES reports the VERP MAIL FROM
            before = (await suppressed(bot), await failures(bot))
            assert before == ({}, 0)
            hard = notification(
                ses_bounce("lena@example.com", lena_path), "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"
            )
            signed = sns.sign(hard, "2")

            # Forged: signed by another key, a field changed after signing, unsigned, an unknown version.
            stranger, _ = self_signed()
            r = await web.post("/hooks/ses", content=sns.sign(hard, "2", key=stranger))
            assert r.status_code == 401 and "signature" in r.json()["error"]
            tampered = json.loads(signed)
            tampered["Message"] = json.dumps(ses_bounce("raj@example.net", "news@corp.example"))
            r = await web.post("/hooks/ses", content=json.dumps(tampered))
            assert r.status_code == 401
            bare = {k: v for k, v in json.loads(signed).items() if k not in ("Signature", "SignatureVersion")}
            r = await web.post("/hooks/ses", content=json.dumps(bare))
            assert r.status_code == 401 and "unsigned" in r.json()["error"]
            away = {**json.loads(signed), "SigningCertURL": "https://sns.evil.example/cert.pem"}
            r = await web.post("/hooks/ses", content=json.dumps(away))
            assert r.status_code == 403 and "SigningCertURL" in r.json()["error"]
            await unchanged(bot, before)

            r = await web.post("/hooks/ses", content=signed)
            assert r.json() == {"accepted": 1, "ignored": 0}
            again = await web.post("/hooks/ses", content=signed)  # SNS redelivers with the same MessageId
            assert again.json() == {"accepted": 0, "ignored": 1}
            complaint = sns.sign(
                notification(ses_complaint("kim@example.org"), "f8a2c2a1-0000-4b9e-8e0e-5e3a9e0b0001"), "1"
            )
            assert (await web.post("/hooks/ses", content=complaint)).json() == {"accepted": 1, "ignored": 0}
            both = {"lena@example.com": "hard_bounce", "kim@example.org": "complaint"}
            assert await suppressed(bot) == both
            assert await failures(bot) == 2
            async with bot.core.ctx.sessions() as session:
                evidence = (
                    await session.execute(
                        select(Suppression.source, Suppression.evidence).where(
                            Suppression.email == "lena@example.com"
                        )
                    )
                ).one()
            assert evidence.source == "webhook:ses" and "5.1.1" in (evidence.evidence or "")
            # Lena's return path with Raj named as the bounced recipient: evidence against neither.
            crossed = notification(ses_bounce("raj@example.net", lena_path), "crossed-1")
            r = await web.post("/hooks/ses", content=sns.sign(crossed, "2"))
            assert r.status_code == 200
            assert await suppressed(bot) == both and await failures(bot) == 2

            # Not the recipient's fault, whatever SES calls it: nothing changes.
            after = (await suppressed(bot), await failures(bot))
            for i, note in enumerate(
                [
                    ses_bounce("raj@example.net", "news@corp.example", "Undetermined", "Undetermined", ""),
                    ses_bounce("raj@example.net", "news@corp.example", "Permanent", "General", ""),
                    ses_bounce("raj@example.net", "news@corp.example", "Permanent", "General", "5.7.1"),
                    ses_bounce(
                        "raj@example.net", "news@corp.example", "Transient", "ContentRejected", "5.6.0"
                    ),
                ]
            ):
                r = await web.post("/hooks/ses", content=sns.sign(notification(note, f"sender-{i}"), "2"))
                assert r.json() == {"accepted": 0, "ignored": 1}, note
            # A full mailbox is counted as a soft bounce, not suppressed; a hostile shape is ignored.
            full = ses_bounce("raj@example.net", "news@corp.example", "Transient", "MailboxFull", "5.2.2")
            r = await web.post("/hooks/ses", content=sns.sign(notification(full, "soft-1"), "2"))
            assert r.json() == {"accepted": 1, "ignored": 0}
            assert await failures(bot) == after[1] + 1 and await suppressed(bot) == after[0]
            odd = {
                "notificationType": "Bounce",
                "bounce": {"bounceType": "Permanent", "bouncedRecipients": 7},
            }
            r = await web.post("/hooks/ses", content=sns.sign(notification(odd, "odd-1"), "2"))
            assert r.json() == {"accepted": 0, "ignored": 0}
            after = (await suppressed(bot), await failures(bot))
            # Someone Postroom never mailed: answered 200, nothing written.
            stranger_note = notification(
                ses_bounce("nobody@elsewhere.example", "x@corp.example"), "unknown-1"
            )
            r = await web.post("/hooks/ses", content=sns.sign(stranger_note, "2"))
            assert r.status_code == 200
            await unchanged(bot, after)
            r = await web.post("/hooks/ses", content=b"{" + b" " * 1_000_001 + b"}")
            assert r.status_code == 413
        assert sns.cert_gets == 1  # fetched once, then cached


def test_only_amazon_sns_urls_are_fetched_without_the_test_pattern() -> None:
    assert sns_url_allowed("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", pem=True)
    assert sns_url_allowed(
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", pem=True
    )
    for url in (
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",  # not https
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem",
        "https://sns.us-east-1.amazonaws.com/x.txt",
        "https://s3.amazonaws.com/x.pem",
        "https://127.0.0.1:1/SimpleNotificationService-fake.pem",
    ):
        assert not sns_url_allowed(url, pem=True), url


def test_enhanced_codes_are_read_by_whose_fault_they_are() -> None:
    assert judge_status("smtp; 550 5.1.1 user unknown") == "hard_bounce"
    assert judge_status("5.2.1") == "hard_bounce"
    assert (
        judge_status("5.1.8")
        == judge_status("5.7.1")
        == judge_status("5.6.0")
        == judge_status("5.3.4")
        == "sender"
    )
    assert judge_status("5.2.2") == judge_status("4.2.2") == judge_status("5.4.4") == "soft_bounce"
    assert judge_status("550 no code here") is None


# -- SendGrid ---------------------------------------------------------------------------------------------
async def test_sendgrid_signed_events_suppress_once_and_unsigned_or_stale_ones_are_refused(made) -> None:  # type: ignore[no-untyped-def]
    key, public = sendgrid_keys()
    bot = await made({"sendgrid": {"public_key": public}})
    events = [
        {
            "email": "ode@example.com",
            "timestamp": 1513299569,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "bounce_classification": "Invalid Address",
            "event": "bounce",
            "category": "cat facts",
            "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "reason": "500 unknown recipient",
            "status": "5.0.0",
            "type": "bounce",
        },
        {
            "email": "raj@example.net",
            "timestamp": 1513299569,
            "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
            "event": "spamreport",
            "category": "cat facts",
            "sg_event_id": "37nvH5QBz858KGVYCM4uOA==",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        },
        {  # blocked for our sending IP's reputation: not the recipient's fault
            "email": "lena@example.com",
            "timestamp": 1513299569,
            "bounce_classification": "Reputation",
            "event": "bounce",
            "sg_event_id": "blocked-rep-1",
            "reason": "550 5.7.1 Service unavailable; Client host blocked using Spamhaus",
            "status": "5.7.1",
            "type": "blocked",
        },
        {
            "email": "kim@example.org",
            "timestamp": 1513299569,
            "event": "delivered",
            "sg_event_id": "d-1",
            "response": "250 OK",
        },
        {
            "email": "kim@example.org",
            "timestamp": 1513299569,
            "event": "deferred",
            "sg_event_id": "d-2",
            "attempt": "5",
        },
    ]
    body = json.dumps(events).encode()
    async with serve(bot.app.web()) as base, httpx.AsyncClient(base_url=base) as web:
        before = (await suppressed(bot), await failures(bot))
        other, _ = sendgrid_keys()
        for headers, content in (
            (sendgrid_headers(other, body), body),  # signed by someone else
            ({"Content-Type": "application/json"}, body),  # unsigned
            (sendgrid_headers(key, body, int(time.time()) - 3600), body),  # an hour old: a replay
            (sendgrid_headers(key, body), body.replace(b"ode@", b"kim@")),  # changed after signing
        ):
            r = await web.post("/hooks/sendgrid", content=content, headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"].endswith(".")
        await unchanged(bot, before)
        r = await web.post("/hooks/sendgrid", content=body, headers=sendgrid_headers(key, body))
        assert r.json() == {"accepted": 2, "ignored": 1}
        r = await web.post("/hooks/sendgrid", content=body, headers=sendgrid_headers(key, body))
        assert r.json() == {"accepted": 0, "ignored": 3}
        assert await suppressed(bot) == {"ode@example.com": "hard_bounce", "raj@example.net": "complaint"}
        assert await failures(bot) == 2
        big = b"[" + b" " * 1_000_001 + b"]"
        r = await web.post("/hooks/sendgrid", content=big, headers=sendgrid_headers(key, big))
        assert r.status_code == 413


# -- Mailgun ----------------------------------------------------------------------------------------------
async def test_mailgun_signed_events_suppress_once_and_replays_are_refused(made) -> None:  # type: ignore[no-untyped-def]
    bot = await made({"mailgun": {"signing_key": MAILGUN_KEY}})
    hard = mailgun_failed(
        "kim@example.org",
        "permanent",
        "bounce",
        550,
        "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
        "recipient's email address for typos or unnecessary spaces.",
        "",
        "G9Bn5sl1TC6nu79C8C0bwg",
    )
    temporary = mailgun_failed(
        "lena@example.com",
        "temporary",
        "generic",
        452,
        "4.2.2 The email account that you tried to reach is over quota.",
        "",
        "Fs7-5t81S2ms-j5WVBcWyQ",
    )
    complained = {
        "event": "complained",
        "id": "-Agny091SquKnsrW2NEKUA",
        "timestamp": 1521233123.501324,
        "log-level": "warn",
        "envelope": {"sending-ip": "173.193.210.33"},
        "flags": {"is-test-mode": False},
        "message": {
            "headers": {"to": "ode@example.com", "message-id": "20110215055645.25246.63817@corp.example"}
        },
        "recipient": "ode@example.com",
    }
    async with serve(bot.app.web()) as base, httpx.AsyncClient(base_url=base) as web:
        before = (await suppressed(bot), await failures(bot))
        stale = await web.post("/hooks/mailgun", content=mailgun_body(hard, ts=int(time.time()) - 600))
        wrong = await web.post("/hooks/mailgun", content=mailgun_body(hard, key="0" * 32))
        unsigned = await web.post("/hooks/mailgun", content=json.dumps({"event-data": hard}))
        for r in (stale, wrong, unsigned):
            assert r.status_code == 401 and r.json()["error"].endswith("."), r.text
        await unchanged(bot, before)
        token = secrets.token_hex(25)
        r = await web.post("/hooks/mailgun", content=mailgun_body(hard, token=token))
        assert r.json() == {"accepted": 1, "ignored": 0}
        replay = await web.post(
            "/hooks/mailgun", content=mailgun_body(complained, token=token)
        )  # token again
        assert replay.status_code == 401 and "replay" in replay.json()["error"]
        resent = await web.post("/hooks/mailgun", content=mailgun_body(hard))  # Mailgun retries, newly signed
        assert resent.json() == {"accepted": 0, "ignored": 1}
        r = await web.post("/hooks/mailgun", content=mailgun_body(temporary))
        assert r.json() == {"accepted": 0, "ignored": 1}
        r = await web.post("/hooks/mailgun", content=mailgun_body(complained))
        assert r.json() == {"accepted": 1, "ignored": 0}
        assert await suppressed(bot) == {"kim@example.org": "hard_bounce", "ode@example.com": "complaint"}
        assert await failures(bot) == 2
        r = await web.post("/hooks/mailgun", content=b"{" + b" " * 1_000_001 + b"}")
        assert r.status_code == 413


# -- Postmark ---------------------------------------------------------------------------------------------
async def test_postmark_webhooks_need_the_password_and_suppress_once(made) -> None:  # type: ignore[no-untyped-def]
    password = "pm-" + secrets.token_hex(16)
    bot = await made({"postmark": {"user": "postmark-hooks", "password": password}})
    hard = postmark_record("raj@example.net", "Bounce", "HardBounce", 1, 4323372036854775807)
    spam = postmark_record("lena@example.com", "SpamComplaint", "SpamComplaint", 100001, 42)
    blocked = postmark_record("kim@example.org", "Bounce", "Blocked", 100006, 43)
    good = basic("postmark-hooks", password)
    async with serve(bot.app.web()) as base, httpx.AsyncClient(base_url=base) as web:
        before = (await suppressed(bot), await failures(bot))
        for headers in (
            {},
            basic("postmark-hooks", password + "x"),
            basic("someone", password),
            {"Authorization": "Basic !!"},
        ):
            r = await web.post("/hooks/postmark", json=hard, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), r.text
        await unchanged(bot, before)
        assert (await web.post("/hooks/postmark", json=hard, headers=good)).json() == {
            "accepted": 1,
            "ignored": 0,
        }
        assert (await web.post("/hooks/postmark", json=hard, headers=good)).json() == {
            "accepted": 0,
            "ignored": 1,
        }
        assert (await web.post("/hooks/postmark", json=spam, headers=good)).json() == {
            "accepted": 1,
            "ignored": 0,
        }
        assert (await web.post("/hooks/postmark", json=blocked, headers=good)).json() == {
            "accepted": 0,
            "ignored": 1,
        }
        assert await suppressed(bot) == {"raj@example.net": "hard_bounce", "lena@example.com": "complaint"}
        assert await failures(bot) == 2
        r = await web.post("/hooks/postmark", content=b"{" + b" " * 1_000_001 + b"}", headers=good)
        assert r.status_code == 413


async def test_each_service_is_off_until_configured(made) -> None:  # type: ignore[no-untyped-def]
    bot = await made({})
    async with serve(bot.app.web()) as base, httpx.AsyncClient(base_url=base) as web:
        for service in ("ses", "sendgrid", "mailgun", "postmark"):
            r = await web.post(f"/hooks/{service}", content=b"{}")
            assert r.status_code == 404, service
    assert await suppressed(bot) == {}


async def test_serve_warns_while_the_sns_certificate_rule_is_relaxed(tmp_path: Path) -> None:
    from bot.app import Runtime
    from bot.cli import startup_lines

    lines = {}
    for name, ses in (
        ("strict", {"topic_arns": [TOPIC]}),
        ("relaxed", {"topic_arns": [TOPIC], "unsafe_cert_url_pattern": FAKE_URLS}),
    ):
        settings = make_settings(
            "sqlite+aiosqlite:///" + str(tmp_path / f"{name}.db"), 2525, tmp_path, email_events={"ses": ses}
        )
        app = await build_app(settings)
        try:
            lines[name] = startup_lines(settings, Runtime(app))
        finally:
            await app.close()
    assert "Email service webhooks: /hooks/ses" in lines["strict"]
    assert not any("unsafe_cert_url_pattern" in line for line in lines["strict"])
    assert any(
        line.startswith("Warning: email_events.ses.unsafe_cert_url_pattern is set")
        for line in lines["relaxed"]
    )
