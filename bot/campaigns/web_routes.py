"""Campaign endpoints on the web app: open pixel, click redirect, the email-events webhook, and the
signed report page (`/report/<token>`, linked from `/campaign report`; the token expires with
`campaigns.report_link_hours`) with its chart (`/report/<token>/chart.png`).

Click redirects go only to URLs signed into a message by Postroom (no open redirect): a tampered
or foreign token gets a 400 page, never a redirect.

The webhook is the extension point for an email service that reports bounces and complaints over HTTP
instead of by mail (SES, SendGrid, Mailgun and Postmark have their own endpoints:
bot/campaigns/email_services.py). A small translator on your side turns the service's payload into
this one and signs it:

    POST /hooks/email-events
    X-Postroom-Timestamp: <unix seconds>
    X-Postroom-Signature: v1=<hex HMAC-SHA256(campaigns.webhook_secret, "<timestamp>.<raw body>")>
    {"events": [{"id": "evt-1", "type": "bounce", "bounce": "hard", "email": "x@example.com",
                 "return_path": "bounces+…@…", "status": "5.1.1", "detail": "user unknown"},
                {"id": "evt-2", "type": "complaint", "email": "y@example.com"}]}

`return_path` (the VERP address the message went out with) is preferred; without it the latest
message sent to `email` is the one meant. A `return_path` shaped like Postroom's (`bounces+…`) that fails
its MAC makes the event ignored, never matched by `email` instead. When `status` holds an enhanced code it
decides, whatever `bounce` says (4.x.x is never hard; 5.2.2 mailbox full is soft; 2.x.x is no failure and
is ignored); `bounce` ("hard"/"soft") decides only without one. Events are idempotent by `id`. The answer
counts as `ignored` every event that changed nothing: a duplicate, a forged return path, an address
Postroom never mailed, a return path naming another recipient, a report outside the bounce window.
Timestamps older than five minutes are refused. With no webhook_secret configured the endpoint answers 404.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import time
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bot import html_pages, i18n
from bot.addresses import email_hash
from bot.campaigns.bounces import STATUS_RE, Finding, classify_status, record_event, return_path_delivery
from bot.campaigns.report import REPORT_KIND, cached_report, chart_png
from bot.campaigns.report_cache import Busy
from bot.campaigns.tracking import verify_click, verify_open
from bot.context import Context
from bot.db.models import Campaign, CampaignEvent, Delivery, ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.i18n import t
from bot.links import row_id
from bot.values import clean_text
from bot.webhooks import Refused, parse_json, parse_timestamp, read_capped, signatures_match

PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
MAX_WEBHOOK_BYTES = 1_000_000
MAX_WEBHOOK_EVENTS = 1000  # per request; more is refused whole (413), never cut short, so the service retries
MAX_SKEW_S = 300

log = logging.getLogger(__name__)


def campaign_routes(ctx: Context) -> list[Route]:
    signer = ctx.signer

    async def record(delivery_id: int, kind: str, detail: str | None) -> None:
        async with ctx.sessions() as session, session.begin():
            row = (
                await session.execute(
                    select(Delivery.campaign_id, Delivery.email).where(Delivery.id == delivery_id)
                )
            ).first()
            if row is None:
                return  # erased or deleted since: nothing to count
            session.add(
                CampaignEvent(
                    campaign_id=row.campaign_id,
                    delivery_id=delivery_id,
                    email_hash=email_hash(row.email),
                    kind=kind,
                    detail=detail,
                    at=ctx.now(),
                )
            )

    async def open_pixel(request: Request) -> Response:
        delivery_id = verify_open(signer, request.path_params["token"])
        if delivery_id is None:
            return Response(status_code=400)
        await record(delivery_id, "open", None)
        return Response(
            PIXEL,
            media_type="image/gif",
            headers={"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"},
        )

    async def click(request: Request) -> Response:
        found = verify_click(signer, request.path_params["token"])
        if found is None:
            title = html.escape(t("Link not valid"))
            said = html.escape(
                t("This link is not valid. If you copied it from an email, check that it is complete.")
            )
            lang = i18n.current().replace("_", "-")
            return HTMLResponse(
                f"<!doctype html><html lang='{lang}'><meta charset='utf-8'><title>{title}</title><p>{said}</p>",
                status_code=400,
                headers={"Cache-Control": "no-store"},
            )
        delivery_id, url = found
        await record(delivery_id, "click", url[:2000])
        return RedirectResponse(
            url, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        )

    async def email_events(request: Request) -> Response:
        secret = ctx.settings.campaigns.webhook_secret
        if not secret:
            return JSONResponse({"error": "not enabled"}, status_code=404)
        try:  # capped while reading: an oversize body is refused before it is held in memory whole
            body = await read_capped(request, MAX_WEBHOOK_BYTES)
        except Refused as exc:
            return JSONResponse({"error": exc.sentence}, status_code=exc.status)
        ts = request.headers.get("x-postroom-timestamp", "")
        given = request.headers.get("x-postroom-signature", "")
        stamp = parse_timestamp(ts)
        if stamp is None or abs(time.time() - stamp) > MAX_SKEW_S:
            return JSONResponse({"error": "stale or missing timestamp"}, status_code=401)
        expected = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not signatures_match(expected, given):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        try:
            payload = parse_json(
                body,
                'The body is not JSON: send {"events": [...]}.',
                duplicate="The key “{name}” appears twice in one JSON object; send each field once.",
            )
            events = payload["events"]
            if not isinstance(events, list):
                raise TypeError
        except Refused as exc:  # not JSON, or a key named twice: say which
            return JSONResponse({"error": exc.sentence}, status_code=400)
        except (KeyError, TypeError):
            return JSONResponse({"error": 'expected {"events": [...]}'}, status_code=400)
        if len(events) > MAX_WEBHOOK_EVENTS:
            return JSONResponse(
                {
                    "error": f"Send at most {MAX_WEBHOOK_EVENTS} events per request; "
                    "none of these was recorded."
                },
                status_code=413,
            )
        accepted = ignored = 0
        for event in events:
            finding, delivery_id, email = _translate(event, signer)
            if finding is None:
                ignored += 1
                continue
            event_id = clean_text(str(event.get("id") or ""))[:300]
            if event_id:
                async with ctx.sessions() as session, session.begin():
                    if (
                        await insert_ignore(
                            session,
                            ProcessedEvent,
                            [{"source": "hook:email-events", "event_id": event_id}],
                            ["source", "event_id"],
                        )
                        != 1
                    ):
                        ignored += 1
                        continue
            recorded = await record_event(ctx, delivery_id, finding, via="webhook", email=email)
            if recorded.ignored:
                ignored += 1
            else:
                accepted += 1
        return JSONResponse({"accepted": accepted, "ignored": ignored})

    def page(title: str, body: str, status: int = 200, *, wide: bool = False) -> HTMLResponse:
        return html_pages.page(title, body, status, wide=wide, images=True)

    async def reported(request: Request) -> tuple[Campaign | None, str | None]:
        """The campaign a report token names, and the language it was asked in (signed with it; a
        token from before languages were signed has none: the organisation's)."""
        parts = signer.verify_expiring(request.path_params["token"], REPORT_KIND)
        if not parts or len(parts) > 2 or (campaign_id := row_id(parts[0])) is None:
            return None, None
        locale = i18n.match_locale(parts[1]) if len(parts) == 2 else None
        async with ctx.sessions() as session:
            return await session.get(Campaign, campaign_id), locale

    def refused() -> HTMLResponse:
        return page(
            t("Link not valid"),
            f"<p>{html.escape(t('This report link is not valid or has expired: run /campaign report again for a new one.'))}</p>",
            403,
        )

    def busy() -> str:
        return t("Too many reports are being drawn right now: try again in a few seconds.")

    async def report_page(request: Request) -> Response:
        campaign, locale = await reported(request)
        if campaign is None:
            return refused()
        locale = locale or i18n.current()
        with i18n.using(locale):
            return await report_body(request, campaign, locale)

    async def report_body(request: Request, campaign: Campaign, locale: str) -> Response:
        if request.method == "HEAD":  # no render for a HEAD
            return page(t("Report: “{name}”", name=campaign.name), "")

        try:
            figures = await cached_report(ctx, campaign)  # the chart's request reuses these figures
        except Busy as exc:
            response = page(t("Busy"), f"<p>{html.escape(busy())}</p>", 503)
            response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        name, text = figures.campaign, figures.text()
        token = html.escape(request.path_params["token"], quote=True)
        alt = html.escape(
            t("The report's chart: sent, bounced, unsubscribed, complained, opened and clicked over time."),
            quote=True,
        )
        body = (
            f"<p><img id='pr-chart' src='/report/{token}/chart.png' alt='{alt}' width='800' height='640'></p>"
            f"<pre id='pr-figures'>{html.escape(text)}</pre>"
        )
        return page(t("Report: “{name}”", name=name), body, wide=True)

    async def report_chart(request: Request) -> Response:
        campaign, locale = await reported(request)
        if campaign is None:
            return Response(status_code=403, headers={"Cache-Control": "no-store"})
        headers = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}
        if request.method == "HEAD":  # no render for a HEAD
            return Response(media_type="image/png", headers=headers)
        shown_in = locale or i18n.current()

        try:
            with i18n.using(shown_in):  # labels in the page's language
                png = await chart_png(ctx, campaign, await cached_report(ctx, campaign))
        except Busy as exc:
            with i18n.using(shown_in):
                said = busy()
            return Response(
                said,
                status_code=503,
                media_type="text/plain; charset=utf-8",
                headers={"Retry-After": str(exc.retry_after_s), "Cache-Control": "no-store"},
            )
        return Response(png, media_type="image/png", headers=headers)

    return [
        Route("/report/{token}", report_page, methods=["GET"]),
        Route("/report/{token}/chart.png", report_chart, methods=["GET"]),
        Route("/o/{token}", open_pixel, methods=["GET"]),
        Route("/c/{token}", click, methods=["GET"]),
        Route("/hooks/email-events", email_events, methods=["POST"]),
    ]


def _translate(event: Any, signer: Any) -> tuple[Finding | None, int | None, str | None]:
    if not isinstance(event, dict):
        return None, None, None
    kind = str(event.get("type", "")).lower()
    email = clean_text(str(event.get("email") or "")).strip().lower() or None
    delivery_id, forged = return_path_delivery(signer, str(event.get("return_path") or ""))
    if forged:  # claims to be our return path and is not: no evidence, and no address to fall back on
        log.warning("an email-events %s with a return path that fails its MAC was ignored", kind or "event")
        return None, None, None
    if delivery_id is None and email is None:
        return None, None, None
    # The service's own words: kept, without what would break a chat line or a database text column.
    detail = clean_text(" ".join(str(event.get("detail") or "").split()))[:300]
    if kind == "complaint":
        return Finding("complaint", "", email, detail or "complaint"), delivery_id, email
    if kind == "bounce":
        status = str(event.get("status") or "")
        hint = str(event.get("bounce") or "").lower()
        if STATUS_RE.search(status):  # the code is the receiving server's own word: it decides
            code = classify_status(status)
            if code is None:  # 2.x.x: delivered, not a bounce
                return None, None, None
            found = code
        elif hint in ("hard", "permanent"):
            found = "hard_bounce"
        else:
            found = "soft_bounce"
        return Finding(found, status, email, detail), delivery_id, email
    return None, None, None
