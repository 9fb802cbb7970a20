"""`POST /hooks/hr`: joined / changed / left events from an HR system, signed with a shared secret.

Contract (docs/hr-webhook.md): headers `X-Postroom-Timestamp: <unix seconds>` and
`X-Postroom-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` keyed with
`hr.webhook_secret`; a JSON body with `event_id`, `type`, `occurred_at` and `employee`
(`id`, `email`, `name`, `attributes`). Every bad input gets a 4xx with one sentence and changes
nothing; a redelivered event id answers 200 with status "duplicate".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DataError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot import values
from bot.addresses import routing_refusal
from bot.config import HrSettings
from bot.errors import UserError
from bot.events import PersonEvent
from bot.hr.admission import time_problem
from bot.hr.lifecycle import Lifecycle
from bot.webhooks import Refused, parse_json, parse_timestamp, signatures_match, utf8_text
from bot.webhooks import read_capped as _read_capped

log = logging.getLogger(__name__)
SOURCE = "hr-webhook"


def sign(secret: str, timestamp: str | int, body: bytes) -> str:
    """The signature header value for a body (what an HR system computes)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def _refuse(status: int, sentence: str) -> Response:
    return JSONResponse({"status": "refused", "error": sentence}, status_code=status)


def verify(secret: str, headers: Any, body: bytes, tolerance_s: int, now: float) -> None:
    ts = headers.get("x-postroom-timestamp")
    sig = headers.get("x-postroom-signature")
    if not ts or not sig:
        raise Refused(401, "The X-Postroom-Timestamp and X-Postroom-Signature headers are required.")
    stamp = parse_timestamp(ts)
    if stamp is None:
        raise Refused(400, "X-Postroom-Timestamp must be a whole number of seconds since 1970.")
    if abs(now - stamp) > tolerance_s:
        raise Refused(
            401, f"The timestamp is more than {tolerance_s // 60} minutes from now; sign the request again."
        )
    if not signatures_match(sign(secret, ts.strip(), body), sig.strip()):
        raise Refused(401, "The signature does not match the body and timestamp.")


def _text(value: Any, what: str, limit: int, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Refused(422, f"{what} is missing.")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Refused(422, f"{what} must be a string.")
    if isinstance(value, int) and abs(value) > values.MAX_INT:
        # Beyond ±2^53 a JSON number is rounded by most parsers: HR's system may hold another id than ours.
        raise Refused(
            422, f"{what} is a number too large to keep exactly (beyond ±2^53); send it as a string."
        )
    text = str(value).strip()
    try:
        return values.check_text(text, what, limit)
    except UserError as exc:
        raise Refused(422, exc.sentence) from None


def parse_event(body: bytes, content_type: str | None = None) -> PersonEvent:
    data = parse_json(
        utf8_text(body, content_type),
        "The body is not valid JSON.",
        "The body is not valid JSON: {name} is not a number in JSON.",
        "The key “{name}” appears twice in one JSON object; send each field once.",
    )
    if not isinstance(data, dict):
        raise Refused(400, "The body must be a JSON object.")
    event_id = _text(data.get("event_id"), "event_id", 300)
    kind = data.get("type")
    if kind not in ("joined", "changed", "left"):
        raise Refused(422, f"type must be joined, changed or left, not {json.dumps(kind)[:40]}.")
    raw_at = data.get("occurred_at")
    if not isinstance(raw_at, str):
        raise Refused(
            422, "occurred_at must be an ISO 8601 time with a time zone, e.g. 2026-11-26T09:00:00Z."
        )
    try:
        at = datetime.fromisoformat(raw_at.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(
            422, "occurred_at must be an ISO 8601 time with a time zone, e.g. 2026-11-26T09:00:00Z."
        ) from None
    if at.tzinfo is None:
        raise Refused(422, "occurred_at has no time zone; add Z or +hh:mm.")
    employee = data.get("employee")
    if not isinstance(employee, dict):
        raise Refused(422, "employee must be an object with id, email, name and attributes.")
    emp_id = _text(employee.get("id"), "employee.id", 200)
    email = _text(employee.get("email"), "employee.email", 320, required=kind != "left")
    name = _text(employee.get("name"), "employee.name", 200, required=False)
    if name is not None:
        try:
            values.check_name(name, "employee.name")
        except UserError as exc:
            raise Refused(422, exc.sentence) from None
    attributes = employee.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise Refused(422, 'employee.attributes must be a flat JSON object such as {"department": "Sales"}.')
    try:
        attributes = values.check_attributes(attributes, "employee.attributes")
    except UserError as exc:
        raise Refused(422, exc.sentence) from None
    assert event_id is not None and emp_id is not None
    return PersonEvent(
        kind,
        SOURCE,
        emp_id,
        email,
        {k: v for k, v in attributes.items() if v is not None},
        event_id,
        at.astimezone(UTC),
        name,
    )


def webhook_routes(settings: HrSettings, hr: Lifecycle) -> list[Route]:

    async def hook(request: Request) -> Response:
        try:
            if not settings.webhook_secret:
                raise Refused(403, "The HR webhook is not configured (hr.webhook_secret is unset).")
            body = await _read_capped(request, settings.webhook_max_bytes)
            verify(settings.webhook_secret, request.headers, body, settings.webhook_tolerance_s, time.time())
            event = parse_event(body, request.headers.get("content-type"))
            routed = routing_refusal(event.email, hr.ctx.settings) if event.email else None
            if (
                routed is not None
            ):  # x%gmail.com@corp.example: mail to it leaves the company, whatever the kind
                raise Refused(422, f"{routed}; correct employee.email.")
            late = time_problem(event.at, hr.ctx.now(), settings.max_future_skew_s)
            if late is not None:
                raise Refused(422, late)
            try:
                outcome = await hr.apply(event)
            except UserError as exc:
                raise Refused(422, exc.sentence) from None
            except DataError as exc:  # the database refuses the value itself: sending it again can't help
                log.warning("HR event %s refused by the database: %s", event.event_id, exc.orig)
                raise Refused(
                    422, "Postroom can't store a value in this event; correct the record."
                ) from None
        except Refused as exc:
            return _refuse(exc.status, exc.sentence)
        except Exception:
            log.exception("HR webhook failed")
            return _refuse(503, "Postroom could not apply the event just now; send it again later.")
        result: dict[str, Any] = {"status": outcome.status}
        if outcome.status == "queued":  # a leaver nobody is known by yet: HR is told, and it is tried again
            result["detail"] = outcome.note
            return JSONResponse(result, status_code=202)
        if outcome.status == "applied":
            result.update({"added": outcome.added, "removed": outcome.removed})
            if outcome.removal_due is not None:
                result["removal_due"] = outcome.removal_due.isoformat()
            if outcome.held is not None:
                result["held_plan"] = outcome.held
        return JSONResponse(result)

    return [Route("/hooks/hr", hook, methods=["POST"])]
