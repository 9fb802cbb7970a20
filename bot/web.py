"""The web app: one-click unsubscribe (RFC 8058), the approver's preview, health, and the
adapters' HTTP callbacks. Starlette, served by uvicorn from `postroom serve` and the demo."""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import audit
from bot.campaigns import service
from bot.campaigns.templates import TemplateProblem
from bot.db.models import Campaign
from bot.suppressions import suppress
from bot.webhooks import Refused, read_capped

if TYPE_CHECKING:
    from bot.core import Core

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 4096


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;"
        "margin:4rem auto;padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.5rem 1rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(
        doc, status_code=status, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    )


def build_web(core: Core) -> Starlette:
    signer = core.ctx.signer
    org = core.ctx.settings.org

    async def health(request: Request) -> Response:
        async with core.ctx.sessions() as session:
            await session.execute(select(1))
        return JSONResponse({"status": "ok"})

    def _unsubscribe_target(token: str) -> tuple[int, str] | None:
        parts = signer.verify(token, "u")
        if not parts or len(parts) != 2 or not parts[0].isdigit():
            return None
        return int(parts[0]), parts[1]

    async def unsubscribe_page(request: Request) -> Response:
        target = _unsubscribe_target(request.path_params["token"])
        if target is None:
            return _page(
                "Link not valid",
                "<p>This unsubscribe link is not valid. If you copied it, check that it is complete.</p>",
                400,
            )
        token = html.escape(request.path_params["token"], quote=True)
        # GET never unsubscribes: mail scanners follow links. The button POSTs.
        return _page(
            "Unsubscribe",
            f"<p>Stop receiving {html.escape(org.name)} campaign email at <b>{html.escape(target[1])}</b>?</p>"
            f"<form method='post' action='/u/{token}'><input type='hidden' name='List-Unsubscribe' "
            "value='One-Click'><button type='submit'>Unsubscribe</button></form>",
        )

    async def unsubscribe_post(request: Request) -> Response:
        target = _unsubscribe_target(request.path_params["token"])
        if target is None:
            return PlainTextResponse("This unsubscribe link is not valid.\n", status_code=400)
        try:  # capped while reading: a public endpoint must not buffer whatever size a client sends
            await read_capped(request, MAX_FORM_BYTES)
        except Refused as exc:
            return PlainTextResponse(f"{exc.sentence}\n", status_code=exc.status)
        campaign_id, email = target
        async with core.ctx.sessions() as session, session.begin():
            new = await suppress(session, email, "unsubscribed", "one-click", campaign_id)
            if new:
                audit.record(
                    session,
                    actor=email,
                    via="web",
                    action="suppression.add",
                    subject=f"contact:{email}",
                    after={"reason": "unsubscribed"},
                    detail=f"one-click from campaign {campaign_id}",
                )
        if "text/html" in request.headers.get("accept", ""):
            return _page(
                "Unsubscribed",
                f"<p>{html.escape(email)} will receive no more campaign email from "
                f"{html.escape(org.name)}.</p>",
            )
        return PlainTextResponse("Unsubscribed.\n")

    async def preview(request: Request) -> Response:
        parts = signer.verify_expiring(request.path_params["token"], "p")
        if not parts or not parts[0].isdigit():
            return _page("Link not valid", "<p>This preview link is not valid or has expired.</p>", 403)
        async with core.ctx.sessions() as session:
            campaign = await session.get(Campaign, int(parts[0]))
            if campaign is None:
                return _page("Not found", "<p>That campaign no longer exists.</p>", 404)
            try:
                review = await service.review(core.ctx, session, campaign)
                if review.sample is None:
                    return _page(
                        "No recipients", "<p>The audience is empty, so there is nothing to preview.</p>"
                    )
                rendered = review.messages.render(review.sample)
            except (TemplateProblem, Exception) as exc:  # a broken template is shown, not raised
                return _page("Preview failed", f"<p>{html.escape(str(exc))}</p>", 422)
        return HTMLResponse(
            rendered.html,
            headers={
                "Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline'",
                "Cache-Control": "no-store",
                "X-Robots-Tag": "noindex",
            },
        )

    routes = [
        Route("/healthz", health),
        Route("/u/{token}", unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", unsubscribe_post, methods=["POST"]),
        Route("/preview/{token}", preview),
    ]
    from bot.hr.webhook import webhook_routes

    routes.extend(webhook_routes(core))
    from bot.campaigns.web_routes import campaign_routes

    routes.extend(campaign_routes(core))  # open pixel, click redirect, email-events webhook
    for adapter in core.adapters.values():
        routes.extend(adapter.web_routes())
    routes.extend(core.services.get("web_routes", []))  # type: ignore[arg-type]
    return Starlette(routes=routes)
