"""The web app: one-click unsubscribe (RFC 8058), the approver's preview, health, and the
adapters' HTTP callbacks. Starlette, served by uvicorn from `postroom serve` and the demo."""

from __future__ import annotations

import html
import logging
from typing import Any

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bot import html_pages, i18n
from bot.campaigns import preferences
from bot.campaigns.preview import RETRY_AFTER_S, PreviewCache
from bot.campaigns.unsubscribe import masked, read_token, target_of, unsubscribe
from bot.context import Context
from bot.i18n import t
from bot.links import row_id
from bot.webhooks import Refused, read_capped

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 4096


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """The recipient pages' frame: the shared one (`<main>`, the same headers as the signup pages)."""
    return html_pages.page(title, body, status)


def _gone_text() -> str:
    return t("This link's message is no longer on record, so there is nothing to unsubscribe.")


def _gone() -> HTMLResponse:
    return _page(t("Link no longer valid"), f"<p>{html.escape(_gone_text())}</p>", 404)


class OrgLanguage:
    """Pages recipients open speak the organisation's language (`org.locale`): set for every request."""

    def __init__(self, app: ASGIApp, locale: str):
        self.app = app
        self.locale = locale

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with i18n.using(self.locale):
            await self.app(scope, receive, send)


def build_web(ctx: Context, routes: list[Any]) -> ASGIApp:
    """The pages Postroom serves itself (health, unsubscribe, preview), then `routes`: the HR webhook,
    tracking and the email-events webhook, and the adapters' callbacks."""
    signer = ctx.signer
    org = ctx.settings.org

    async def health(request: Request) -> Response:
        async with ctx.sessions() as session:
            await session.execute(select(1))
        return JSONResponse({"status": "ok"})

    async def unsubscribe_page(request: Request) -> Response:
        link = read_token(ctx, request.path_params["token"])
        if link is None:
            return _page(
                t("Link not valid"),
                _p(t("This unsubscribe link is not valid. If you copied it, check that it is complete.")),
                400,
            )
        if link.kind == "preview":
            return _page(
                t("Unsubscribe (preview)"),
                _p(
                    t(
                        "This is a preview. In the real message, this link unsubscribes the recipient from "
                        "{org} campaign email. Nobody was unsubscribed.",
                        org=org.name,
                    )
                ),
            )
        target = await target_of(ctx, link)
        if target is None:
            return _gone()
        # The preference centre. GET never changes anything: mail scanners follow links. Its buttons POST.
        prefs = await preferences.load(ctx, target)
        return preferences.render(ctx, request.path_params["token"], prefs)

    async def preferences_post(request: Request) -> Response:
        link = read_token(ctx, request.path_params["token"])
        if link is None or link.kind == "preview":
            return _page(
                t("Link not valid"),
                _p(t("This unsubscribe link is not valid. If you copied it, check that it is complete.")),
                400,
            )
        target = await target_of(ctx, link)
        if target is None:
            return _gone()
        return await preferences.handle_post(ctx, request, request.path_params["token"], target)

    async def unsubscribe_post(request: Request) -> Response:
        # Always a page in the org's language, like the GET page: a person who pressed the button reads
        # it, and a one-click client (RFC 8058) looks only at the status.
        link = read_token(ctx, request.path_params["token"])
        if link is None:
            return _page(
                t("Link not valid"),
                _p(t("This unsubscribe link is not valid. If you copied it, check that it is complete.")),
                400,
            )
        try:  # capped while reading: a public endpoint must not buffer whatever size a client sends
            await read_capped(request, MAX_FORM_BYTES)
        except Refused as exc:
            return _page(t("Link not valid"), _p(exc.sentence), exc.status)
        if link.kind == "preview":
            return _page(
                t("Unsubscribe (preview)"), _p(t("This is a preview link: nobody was unsubscribed."))
            )
        target = await target_of(ctx, link)
        if target is None:
            return _gone()
        await unsubscribe(ctx, target, via="web", how="one-click", detail="one-click unsubscribe (RFC 8058)")
        return _page(
            t("Unsubscribed"),
            _status(
                t(
                    "{email} will receive no more campaign email from {org}.",
                    email=masked(target.email),
                    org=org.name,
                )
            ),
        )

    previews = PreviewCache()

    async def preview(request: Request) -> Response:
        parts = signer.verify_expiring(request.path_params["token"], "p")
        campaign_id = row_id(parts[0]) if parts and len(parts) == 1 else None
        if campaign_id is None:
            return _page(t("Link not valid"), _p(t("This preview link is not valid or has expired.")), 403)
        page = await previews.page(ctx, campaign_id)
        if not page.document:
            shown = _page(page.title, f"<p>{html.escape(page.body)}</p>", page.status)
            if page.status == 503:
                shown.headers["Retry-After"] = str(RETRY_AFTER_S)
            return shown
        return HTMLResponse(
            page.body,
            headers={
                "Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline'",
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Robots-Tag": "noindex",
            },
        )

    app = Starlette(
        routes=[
            Route("/healthz", health),
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe_post, methods=["POST"]),
            Route("/u/{token}/preferences", preferences_post, methods=["POST"]),
            Route("/preview/{token}", preview),
            *routes,
        ]
    )
    return OrgLanguage(app, org.locale)


def _p(sentence: str) -> str:
    return f"<p>{html.escape(sentence)}</p>"


def _status(sentence: str) -> str:
    """The sentence that says what just happened, announced to screen readers."""
    return f"<p role='status'>{html.escape(sentence)}</p>"
