"""The HTML of the pages people open from mail (unsubscribe, preferences, signup): one accessible,
script-free layout in the current language, with nothing cached and no referrer leaked."""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse

from bot import i18n

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;line-height:1.5}"
    "button{font-size:1rem;padding:.5rem 1rem;margin:.25rem 0}label{display:block;margin-top:1rem}"
    "input[type=email],input[type=text]{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box}"
    ".hp{position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden}"
    "fieldset{border:1px solid #ccc;margin:1rem 0;padding:.5rem 1rem}"
    ":focus{outline:3px solid #1a73e8;outline-offset:2px}"
    "pre{white-space:pre-wrap;background:#f6f6f6;padding:1rem;border-radius:.4rem}"
    "img{max-width:100%;height:auto;border:1px solid #ddd}"
)


def page(
    title: str, body: str, status: int = 200, *, wide: bool = False, images: bool = False
) -> HTMLResponse:
    """A whole page: `body` is HTML already escaped by the caller. `wide`: room for a chart (a report);
    `images`: the page shows pictures of its own origin."""
    lang = i18n.current().replace("_", "-")
    width = "<style>body{max-width:52rem}</style>" if wide else ""
    doc = (
        f"<!doctype html><html lang='{lang}'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'><link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>{width}"
        f"</head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    pictures = " img-src 'self' data:;" if images else ""
    return HTMLResponse(
        doc,
        status_code=status,
        headers={
            "Cache-Control": "no-store, private",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": f"default-src 'none';{pictures} style-src 'unsafe-inline'; form-action 'self'",
            "X-Frame-Options": "DENY",
            "X-Robots-Tag": "noindex",
        },
    )


def para(sentence: str) -> str:
    return f"<p>{html.escape(sentence)}</p>"


def attr(value: str) -> str:
    return html.escape(value, quote=True)
