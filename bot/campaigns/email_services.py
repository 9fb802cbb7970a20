"""The email services' own bounce and complaint webhooks: Amazon SES (through SNS), SendGrid, Mailgun
and Postmark, each at `POST /hooks/<service>` and off until its `[email_events.<service>]` is configured.
docs/email-services.md says what to set on each service's side.

Each request is checked the service's way before its body is believed: SNS's certificate signature
(bot/campaigns/sns.py) and a configured TopicArn; SendGrid's ECDSA signature over timestamp + body,
the timestamp within `tolerance_s`; Mailgun's HMAC over timestamp + token, the timestamp within
`tolerance_s` and the token never seen before; Postmark, which signs nothing, by HTTP basic auth. Every
body is read under MAX_WEBHOOK_BYTES.

Each event is then classified by whose fault it is before anything is written (invariant 8), the way
the SMTP path does (bot/mail/replies.py) and in its terms:

- hard: the address's own permanent failure — a service's "no such mailbox" verdict (SES
  Permanent/NoEmail, Postmark HardBounce/BadEmailAddress, SendGrid "Invalid Address"), the service's
  own suppression of an address that bounced before (SES Suppressed, Mailgun suppress-bounce), or an
  enhanced status of 5.1.x (not 5.1.7/5.1.8), 5.2.1, 5.7.17/5.7.18 → suppressed at once;
- soft: a full mailbox, a transient or unexplained failure → counted like a soft bounce, suppressed after
  `campaigns.soft_bounce_limit`;
- complaint: SES Complaint (not "not-spam"), SendGrid spamreport, Mailgun complained, Postmark
  SpamComplaint → suppressed at once;
- not the recipient's: our sender, content, reputation or policy (5.1.7/5.1.8, 5.3.4, 5.6.x, 5.7.x;
  SES Undetermined, a Permanent/General without a mailbox code (5.1.x…), as a 5xx at RCPT not shown to
  be the address's is `rejected` there, Transient/ContentRejected…; SendGrid
  "Reputation", "Content", "Frequency or Volume Too High", "Technical"; Postmark Blocked, DMARCPolicy…),
  and a failure the service is still retrying (Mailgun severity temporary, SendGrid deferred) →
  nothing changes; the log says why.

What is recorded goes through `record_finding`, the one path DSNs take: the delivery is found by the
VERP return path when the service reports it (SES `mail.source`, Mailgun `envelope.sender`), else the
latest message sent to the address; a return path shaped like ours (`bounces+…`) that fails its MAC makes
the event ignored, never matched by address instead; a recipient Postroom never mailed is ignored with a
log line and still answered 200 (so the service does not retry). The answer counts every event that
changed nothing as `ignored`. Events are idempotent by the service's own id
(SNS MessageId with the recipient, sg_event_id, Mailgun event-data id, Postmark RecordType and ID),
kept in processed_events under `hook:<service>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.campaigns.bounces import record_event, return_path_delivery
from bot.campaigns.sns import SnsVerifier, sns_url_allowed
from bot.context import Context
from bot.db.models import ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.mail.dsn import STATUS_RE, Finding
from bot.values import clean_text
from bot.webhooks import Refused, parse_json, parse_timestamp, read_capped, signatures_match

log = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1_000_000
MAX_EVENTS = 1000  # per request; more is refused whole (413), never cut short, so the service retries
NOT_JSON = "The body is not JSON."


@dataclass(frozen=True)
class ServiceEvent:
    """One recipient's bounce or complaint as a service reported it, classified."""

    event_id: str
    email: str
    kind: (
        str | None
    )  # hard_bounce | soft_bounce | complaint; None: not the recipient's fault, or not a failure
    status: str = ""  # the enhanced status code when the service gave one
    detail: str = ""  # the service's words, kept as the suppression's evidence
    return_path: str = ""
    why: str = ""  # for the log when kind is None


def judge_status(text: str) -> str | None:
    """What an enhanced status code in `text` says: "hard_bounce" (the address's own: 5.1.x but
    5.1.7/5.1.8, 5.2.1, 5.7.17/5.7.18), "soft_bounce" (4.x.x, 5.2.2 and the rest of 5.x.x),
    "sender" (ours: 5.1.7/5.1.8, 5.3.4, 5.6.x, 5.7.x), or None when there is no code."""
    m = STATUS_RE.search(text or "")
    if m is None or m.group(1) == "2":
        return None
    klass, subject, detail = m.groups()
    if klass == "4":
        return "soft_bounce"
    if (subject, detail) in (("1", "7"), ("1", "8"), ("3", "4")) or subject == "6":
        return "sender"
    if subject == "7":
        return "hard_bounce" if detail in ("17", "18") else "sender"
    if subject == "1" or (subject, detail) == ("2", "1"):
        return "hard_bounce"
    return "soft_bounce"


def _text(value: object, cap: int = 300) -> str:
    return clean_text(" ".join(str(value or "").split()))[:cap]


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _address(value: object) -> str:
    return _text(value, 320).strip().strip("<>").strip().lower()


# -- Amazon SES ------------------------------------------------------------------------------------
# https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html
SES_SENDER_SUBTYPES = {"MessageTooLarge", "ContentRejected", "AttachmentRejected"}
SES_SUPPRESSED = {"Suppressed", "OnAccountSuppressionList"}


def ses_events(message_id: str, note: dict[str, Any]) -> list[ServiceEvent]:
    kind = note.get("notificationType") or note.get("eventType")  # eventType: SES event publishing
    mail = _obj(note.get("mail"))
    source = _text(mail.get("source"), 320)
    out: list[ServiceEvent] = []
    if kind == "Bounce" and isinstance(note.get("bounce"), dict):
        bounce = note["bounce"]
        btype, sub = str(bounce.get("bounceType") or ""), str(bounce.get("bounceSubType") or "")
        for r in _list(bounce.get("bouncedRecipients")):
            if not isinstance(r, dict) or not _address(r.get("emailAddress")):
                continue
            email = _address(r.get("emailAddress"))
            status = _text(r.get("status"), 20)
            diag = _text(r.get("diagnosticCode"))
            verdict = judge_status(status) or judge_status(diag)
            found: str | None = None
            why = ""
            if btype == "Permanent":
                if sub == "NoEmail" or sub in SES_SUPPRESSED or verdict == "hard_bounce":
                    found = "hard_bounce"
                else:  # as at RCPT: a permanent refusal not shown to be the address's counts against nobody
                    why = f"Permanent/{sub} without a code about the mailbox ({status or 'none'})"
            elif btype == "Transient":
                if sub in SES_SENDER_SUBTYPES or verdict == "sender":
                    why = f"Transient/{sub}: about the message, not the address"
                else:
                    found = "soft_bounce"
            else:
                why = f"{btype or 'no'} bounce type: SES could not tell whose fault it is"
            out.append(
                ServiceEvent(
                    f"{message_id}:{email}",
                    email,
                    found,
                    status if STATUS_RE.fullmatch(status) else "",
                    _text(f"SES {btype}/{sub} {diag}"),
                    source,
                    why,
                )
            )
    elif kind == "Complaint" and isinstance(note.get("complaint"), dict):
        complaint = note["complaint"]
        feedback = str(complaint.get("complaintFeedbackType") or "")
        for r in _list(complaint.get("complainedRecipients")):
            email = _address(r.get("emailAddress")) if isinstance(r, dict) else ""
            if not email:
                continue
            not_spam = feedback == "not-spam"
            out.append(
                ServiceEvent(
                    f"{message_id}:{email}",
                    email,
                    None if not_spam else "complaint",
                    "",
                    _text(f"SES complaint {feedback}".strip()),
                    source,
                    "a not-spam report" if not_spam else "",
                )
            )
    return out


# -- SendGrid -------------------------------------------------------------------------------------
# https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
SENDGRID_SENDER_CLASSES = {"Reputation", "Content", "Frequency or Volume Too High", "Technical"}


def sendgrid_event(event: dict[str, Any]) -> ServiceEvent | None:
    name = event.get("event")
    event_id = _text(event.get("sg_event_id"))
    email = _address(event.get("email"))
    if not event_id or not email or name not in ("bounce", "spamreport"):
        return None  # delivered, deferred (still retrying), dropped, opens, clicks: not a bounce
    if name == "spamreport":
        return ServiceEvent(event_id, email, "complaint", "", "SendGrid spamreport")
    btype = str(event.get("type") or "bounce")  # "bounce" or "blocked"
    cls = str(event.get("bounce_classification") or "")
    status = _text(event.get("status"), 20)
    reason = _text(event.get("reason"))
    verdict = judge_status(status) or judge_status(reason)
    detail = _text(f"SendGrid {btype} {cls} {status} {reason}")
    code = status if STATUS_RE.fullmatch(status) else ""
    if cls in SENDGRID_SENDER_CLASSES or verdict == "sender":
        return ServiceEvent(
            event_id, email, None, code, detail, why=f"classified {cls or status}: not the address"
        )
    if cls == "Invalid Address" or verdict == "hard_bounce":
        return ServiceEvent(event_id, email, "hard_bounce", code, detail)
    return ServiceEvent(event_id, email, "soft_bounce", code, detail)


# -- Mailgun --------------------------------------------------------------------------------------
# https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhooks


def mailgun_event(data: dict[str, Any]) -> ServiceEvent | None:
    name = data.get("event")
    event_id = _text(data.get("id"))
    email = _address(data.get("recipient"))
    if not event_id or not email or name not in ("failed", "complained"):
        return None
    envelope = _obj(data.get("envelope"))
    sender = _text(envelope.get("sender"), 320)
    if name == "complained":
        return ServiceEvent(event_id, email, "complaint", "", "Mailgun complained", sender)
    severity = str(data.get("severity") or "")
    reason = str(data.get("reason") or "")
    status = _obj(data.get("delivery-status"))
    words = _text(f"{status.get('message') or ''} {status.get('description') or ''}")
    detail = _text(f"Mailgun {severity} {reason} {status.get('code') or ''} {words}")
    m = STATUS_RE.search(words)
    code = m.group(0) if m else ""
    if severity != "permanent":
        return ServiceEvent(
            event_id, email, None, code, detail, sender, "severity temporary: Mailgun retries"
        )
    verdict = judge_status(words)
    if reason == "suppress-bounce" or verdict == "hard_bounce":
        return ServiceEvent(event_id, email, "hard_bounce", code, detail, sender)
    if verdict == "sender" or reason.startswith("suppress-"):
        return ServiceEvent(event_id, email, None, code, detail, sender, f"{reason}: not the address")
    return ServiceEvent(event_id, email, "soft_bounce", code, detail, sender)


# -- Postmark -------------------------------------------------------------------------------------
# https://postmarkapp.com/developer/webhooks/bounce-webhook, …/spam-complaint-webhook
POSTMARK_HARD = {"HardBounce", "BadEmailAddress"}
POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError"}


def postmark_event(record: dict[str, Any]) -> ServiceEvent | None:
    kind = record.get("RecordType")
    email = _address(record.get("Email"))
    if kind not in ("Bounce", "SpamComplaint") or record.get("ID") is None or not email:
        return None
    event_id = _text(f"{kind}:{record.get('ID')}")
    btype = str(record.get("Type") or "")
    detail = _text(f"Postmark {btype} {record.get('Details') or record.get('Description') or ''}")
    if kind == "SpamComplaint" or btype == "SpamComplaint":
        return ServiceEvent(event_id, email, "complaint", "", detail)
    if btype in POSTMARK_HARD:
        return ServiceEvent(event_id, email, "hard_bounce", "", detail)
    if btype in POSTMARK_SOFT:
        return ServiceEvent(event_id, email, "soft_bounce", "", detail)
    # Blocked, DMARCPolicy, SpamNotification, AutoResponder, ManuallyDeactivated, Unknown, …
    return ServiceEvent(event_id, email, None, "", detail, why=f"{btype}: not shown to be the address")


# -- the endpoints ---------------------------------------------------------------------------------
def _refused(exc: Refused) -> Response:
    return JSONResponse({"error": exc.sentence}, status_code=exc.status, headers=exc.headers)


def _fresh(stamp: int | None, tolerance_s: int, what: str) -> None:
    if stamp is None:
        raise Refused(401, f"The request has no {what} timestamp, so it cannot be checked.")
    if abs(time.time() - stamp) > tolerance_s:
        raise Refused(
            401,
            f"The {what} timestamp is more than {tolerance_s} seconds from now; it is refused as a replay.",
        )


def _sendgrid_key(text: str) -> ec.EllipticCurvePublicKey | None:
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def email_service_routes(ctx: Context) -> list[Route]:
    settings = ctx.settings.email_events
    sns = cast(
        SnsVerifier, ctx.extras.setdefault("sns_verifier", SnsVerifier(settings.ses.unsafe_cert_url_pattern))
    )

    async def record(service: str, events: list[ServiceEvent]) -> JSONResponse:
        if len(events) > MAX_EVENTS:
            raise Refused(413, f"Send at most {MAX_EVENTS} events per request; none of these was recorded.")
        accepted = ignored = 0
        for event in events:
            if event.kind is None:
                log.info(
                    "%s event %s for a recipient was not recorded: %s", service, event.event_id, event.why
                )
                ignored += 1
                continue
            delivery_id, forged = return_path_delivery(ctx.signer, event.return_path)
            if forged:  # claims to be our return path and is not: no evidence, and no address to fall back on
                log.warning("%s event %s: its return path fails its MAC; ignored", service, event.event_id)
                ignored += 1
                continue
            async with ctx.sessions() as session, session.begin():
                first = (
                    await insert_ignore(
                        session,
                        ProcessedEvent,
                        [{"source": f"hook:{service}", "event_id": event.event_id[:300]}],
                        ["source", "event_id"],
                    )
                    == 1
                )
            if not first:
                ignored += 1
                continue
            finding = Finding(event.kind, event.status, event.email, event.detail)
            recorded = await record_event(
                ctx,
                delivery_id,
                finding,
                via=f"webhook:{service}",
                email=None if delivery_id else event.email,
            )
            if recorded.ignored:
                log.info("%s %s for a recipient was ignored: %s", service, event.kind, recorded.ignored)
                ignored += 1
                continue
            log.info(
                "%s %s for a recipient: %s",
                service,
                event.kind,
                recorded.reason or "recorded, nobody suppressed",
            )
            accepted += 1
        return JSONResponse({"accepted": accepted, "ignored": ignored})

    def guarded(handler: Callable[[Request, bytes], Awaitable[Response]], enabled: Callable[[], bool]) -> Any:
        async def endpoint(request: Request) -> Response:
            if not enabled():
                return JSONResponse({"error": "not enabled"}, status_code=404)
            try:  # capped while reading: an oversize body is refused before it is held in memory whole
                body = await read_capped(request, MAX_WEBHOOK_BYTES)
                return await handler(request, body)
            except Refused as exc:
                return _refused(exc)

        return endpoint

    async def ses(request: Request, body: bytes) -> Response:
        message = parse_json(body, "The body is not an Amazon SNS message (JSON).")
        if not isinstance(message, dict):
            raise Refused(400, "The body is not an Amazon SNS message (JSON object).")
        if message.get("TopicArn") not in settings.ses.topic_arns:
            raise Refused(403, "The SNS topic is not one of email_events.ses.topic_arns.")
        await sns.verify(message)
        kind = message["Type"]
        if kind == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL") or "")
            if not sns_url_allowed(url, settings.ses.unsafe_cert_url_pattern):
                raise Refused(403, "The SubscribeURL is not an Amazon SNS URL.")
            try:
                async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
                    answer = await client.get(url)
            except httpx.HTTPError:
                raise Refused(
                    503, "The subscription could not be confirmed (SNS did not answer); SNS will try again."
                ) from None
            if answer.status_code != 200:
                raise Refused(
                    503, f"SNS answered HTTP {answer.status_code} to the subscription confirmation."
                )
            log.info("confirmed the SNS subscription to %s", message["TopicArn"])
            return JSONResponse({"confirmed": message["TopicArn"]})
        if kind == "UnsubscribeConfirmation":
            log.warning(
                "SNS says %s was unsubscribed from; SES bounces no longer arrive", message["TopicArn"]
            )
            return JSONResponse({"accepted": 0, "ignored": 0})
        note = parse_json(str(message["Message"]), "The SNS Message is not an SES notification (JSON).")
        if not isinstance(note, dict):
            raise Refused(400, "The SNS Message is not an SES notification (JSON object).")
        return await record("ses", ses_events(str(message["MessageId"]), note))

    async def sendgrid(request: Request, body: bytes) -> Response:
        key = _sendgrid_key(settings.sendgrid.public_key)
        if key is None:
            raise Refused(
                503, "email_events.sendgrid.public_key is not an EC public key; copy it from SendGrid again."
            )
        ts = request.headers.get("x-twilio-email-event-webhook-timestamp", "")
        given = request.headers.get("x-twilio-email-event-webhook-signature", "")
        if not given:
            raise Refused(401, "The request is unsigned (no X-Twilio-Email-Event-Webhook-Signature).")
        _fresh(parse_timestamp(ts), settings.sendgrid.tolerance_s, "X-Twilio-Email-Event-Webhook-Timestamp")
        try:
            key.verify(
                base64.b64decode(given, validate=True), ts.strip().encode() + body, ec.ECDSA(hashes.SHA256())
            )
        except (InvalidSignature, ValueError, binascii.Error):
            raise Refused(401, "The SendGrid signature does not match the body.") from None
        events = parse_json(body, NOT_JSON)
        if not isinstance(events, list):
            raise Refused(400, "The body is not a JSON array of SendGrid events.")
        return await record("sendgrid", [e for e in map(_each(sendgrid_event), events) if e])

    async def mailgun(request: Request, body: bytes) -> Response:
        payload = parse_json(body, NOT_JSON)
        signature = payload.get("signature") if isinstance(payload, dict) else None
        data = payload.get("event-data") if isinstance(payload, dict) else None
        if not isinstance(signature, dict):
            raise Refused(401, "The request is unsigned (no Mailgun signature object).")
        ts, token, given = (str(signature.get(k) or "") for k in ("timestamp", "token", "signature"))
        _fresh(parse_timestamp(ts), settings.mailgun.tolerance_s, "Mailgun signature")
        secret = settings.mailgun.signing_key.get_secret_value() if settings.mailgun.signing_key else ""
        expected = hmac.new(secret.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
        if not token or not signatures_match(expected, given.lower()):
            raise Refused(401, "The Mailgun signature does not match its timestamp and token.")
        async with ctx.sessions() as session, session.begin():
            # The signature covers only timestamp + token, not the event: a token seen once is never taken again.
            fresh = await insert_ignore(
                session,
                ProcessedEvent,
                [{"source": "mailgun-token", "event_id": token[:300]}],
                ["source", "event_id"],
            )
        if fresh != 1:
            raise Refused(
                401, "This Mailgun signature token was used before; the request is refused as a replay."
            )
        if not isinstance(data, dict):
            raise Refused(400, "The body has no Mailgun event-data object.")
        event = mailgun_event(data)
        return await record("mailgun", [event] if event else [])

    async def postmark(request: Request, body: bytes) -> Response:
        password = settings.postmark.password.get_secret_value() if settings.postmark.password else ""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            user, _, given = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (ValueError, binascii.Error):
            user = given = ""
        ok_user = signatures_match(settings.postmark.user, user)
        if scheme.lower() != "basic" or not (signatures_match(password, given) and ok_user):
            return JSONResponse(
                {
                    "error": "The request needs the user and password of email_events.postmark (HTTP basic auth)."
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="postroom"'},
            )
        record_ = parse_json(body, NOT_JSON)
        if not isinstance(record_, dict):
            raise Refused(400, "The body is not a Postmark webhook record (JSON object).")
        event = postmark_event(record_)
        return await record("postmark", [event] if event else [])

    return [
        Route("/hooks/ses", guarded(ses, lambda: bool(settings.ses.topic_arns)), methods=["POST"]),
        Route(
            "/hooks/sendgrid", guarded(sendgrid, lambda: bool(settings.sendgrid.public_key)), methods=["POST"]
        ),
        Route(
            "/hooks/mailgun", guarded(mailgun, lambda: bool(settings.mailgun.signing_key)), methods=["POST"]
        ),
        Route(
            "/hooks/postmark", guarded(postmark, lambda: bool(settings.postmark.password)), methods=["POST"]
        ),
    ]


def _each(translate: Callable[[dict[str, Any]], ServiceEvent | None]) -> Callable[[Any], ServiceEvent | None]:
    def one(item: Any) -> ServiceEvent | None:
        return translate(item) if isinstance(item, dict) else None

    return one
