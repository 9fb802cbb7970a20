"""The web app: one-click unsubscribe (RFC 8058), the approver's preview, health, and the
adapters' HTTP callbacks. Starlette, served by uvicorn from `postroom serve` and the demo."""

from __future__ import annotations

import html
import logging
from typing import Any

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.campaigns.preview import PreviewCache
from bot.campaigns.unsubscribe import masked, read_token, target_of, unsubscribe
from bot.context import Context

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


GONE = "This link's message is no longer on record, so there is nothing to unsubscribe."


def _gone() -> HTMLResponse:
    return _page("Link no longer valid", f"<p>{GONE}</p>", 404)


def build_web(ctx: Context, routes: list[Any]) -> Starlette:
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
                "Link not valid",
                "<p>This unsubscribe link is not valid. If you copied it, check that it is complete.</p>",
                400,
            )
        if link.kind == "preview":
            return _page(
                "Unsubscribe (preview)",
                f"<p>This is a preview. In the real message, this link unsubscribes the recipient from "
                f"{html.escape(org.name)} campaign email. Nobody was unsubscribed.</p>",
            )
        target = await target_of(ctx, link)
        if target is None:
            return _gone()
        token = html.escape(request.path_params["token"], quote=True)
        # GET never unsubscribes: mail scanners follow links. The button POSTs.
        return _page(
            "Unsubscribe",
            f"<p>Stop receiving {html.escape(org.name)} campaign email at "
            f"<b>{html.escape(masked(target.email))}</b>?</p>"
            f"<form method='post' action='/u/{token}'><input type='hidden' name='List-Unsubscribe' "
            "value='One-Click'><button type='submit'>Unsubscribe</button></form>",
        )

    async def unsubscribe_post(request: Request) -> Response:
        link = read_token(ctx, request.path_params["token"])
        if link is None:
            return PlainTextResponse("This unsubscribe link is not valid.\n", status_code=400)
        # Count while reading: a public endpoint must not buffer whatever size a client sends.
        declared = request.headers.get("content-length", "0")
        too_large = PlainTextResponse("Request body too large.\n", status_code=413)
        if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
            return too_large
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                return too_large
        wants_page = "text/html" in request.headers.get("accept", "")
        if link.kind == "preview":
            if wants_page:
                return _page(
                    "Unsubscribe (preview)", "<p>This is a preview link: nobody was unsubscribed.</p>"
                )
            return PlainTextResponse("This is a preview link: nobody was unsubscribed.\n")
        target = await target_of(ctx, link)
        if target is None:
            return _gone() if wants_page else PlainTextResponse(GONE + "\n", status_code=404)
        await unsubscribe(ctx, target, via="web", how="one-click", detail="one-click unsubscribe (RFC 8058)")
        if wants_page:
            return _page(
                "Unsubscribed",
                f"<p>{html.escape(masked(target.email))} will receive no more campaign email from "
                f"{html.escape(org.name)}.</p>",
            )
        return PlainTextResponse("Unsubscribed.\n")

    previews = PreviewCache()

    async def preview(request: Request) -> Response:
        parts = signer.verify_expiring(request.path_params["token"], "p")
        if not parts or len(parts) != 1 or not parts[0].isdigit():
            return _page("Link not valid", "<p>This preview link is not valid or has expired.</p>", 403)
        page = await previews.page(ctx, int(parts[0]))
        if not page.document:
            return _page(page.title, f"<p>{html.escape(page.body)}</p>", page.status)
        return HTMLResponse(
            page.body,
            headers={
                "Content-Security-Policy": "default-src 'none'; img-src * data:; style-src 'unsafe-inline'",
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Robots-Tag": "noindex",
            },
        )

    return Starlette(
        routes=[
            Route("/healthz", health),
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe_post, methods=["POST"]),
            Route("/preview/{token}", preview),
            *routes,
        ]
    )
