"""Per-recipient links in campaign mail: unsubscribe, the VERP return path, the open pixel and clicks.

Every token names a delivery row (or, for previews, a campaign) by its id, never an address: the web
app looks the recipient up. Token kinds: `ud` unsubscribe, `up` a preview's inert unsubscribe, `c`
click, `o` open, `p` the approver's preview page (expiring); VERP return paths carry a MAC of their own.

Every link is signed, so the web app only ever redirects to a URL that Postroom itself put in a
message for that delivery (no open redirect), and a bounce is attributed by its return path
without trusting what the bounce says about the recipient.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from bot.links import Signer, base36_id, row_id

_HREF = re.compile(r'(<a\b[^>]*?\bhref=")(https?://[^"]+)(")', re.I)
VERP_RE = re.compile(r"^bounces\+([0-9a-z]{1,13})-([0-9a-f]{16})@([a-z0-9.-]+)$")


def verp_address(signer: Signer, delivery_id: int, domain: str) -> str:
    ident = _base36(delivery_id)
    return f"bounces+{ident}-{signer.short_mac('verp:' + ident)}@{domain}"


def verp_delivery(signer: Signer, address: str) -> int | None:
    """The delivery id a VERP return path stands for, or None when it is not one of ours."""
    m = VERP_RE.match(address.strip().lower())
    if m is None or signer.short_mac("verp:" + m.group(1)) != m.group(2):
        return None
    return base36_id(m.group(1))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class UnsubscribeLink:
    """What an unsubscribe token stands for. `kind` is `delivery` (a sent message: the delivery row
    names the address), `preview` (a preview or test message: it unsubscribes nobody) or `legacy`
    (a token from before 0.2, which carried the campaign id and the address itself)."""

    kind: str
    id: int  # the delivery id, or the campaign id for a preview or legacy token
    email: str | None = None  # legacy tokens only


def unsubscribe_token(signer: Signer, delivery_id: int) -> str:
    return signer.sign("ud", str(delivery_id))


def preview_unsubscribe_token(signer: Signer, campaign_id: int) -> str:
    return signer.sign("up", str(campaign_id))


def verify_unsubscribe(signer: Signer, token: str, *, legacy: bool = True) -> UnsubscribeLink | None:
    """What an untampered unsubscribe token stands for, or None.

    Tokens that carried the address (`u|campaign|email`) are no longer made, but they are in mail
    already sent, and an unsubscribe must keep working: they are accepted while `legacy` is true
    (`web.legacy_unsubscribe_tokens`)."""
    for kind, name in (("ud", "delivery"), ("up", "preview")):
        parts = signer.verify(token, kind)
        if parts is not None:
            ident = row_id(parts[0]) if len(parts) == 1 else None
            return None if ident is None else UnsubscribeLink(name, ident)
    if legacy:
        parts = signer.verify(token, "u")
        if parts and len(parts) == 2 and "@" in parts[1] and (ident := row_id(parts[0])) is not None:
            return UnsubscribeLink("legacy", ident, parts[1].lower())
    return None


def click_token(signer: Signer, delivery_id: int, url: str) -> str:
    # '|' separates signed parts: escape it (and '%', so the URL comes back byte for byte).
    if "|" in url or "%" in url:
        url = url.replace("%", "%25").replace("|", "%7C")
    return signer.sign("c", str(delivery_id), url)


def open_token(signer: Signer, delivery_id: int) -> str:
    return signer.sign("o", str(delivery_id))


def verify_click(signer: Signer, token: str) -> tuple[int, str] | None:
    """(delivery id, URL) for an untampered click token whose URL is http(s); else None."""
    parts = signer.verify(token, "c")
    if not parts or len(parts) != 2 or (ident := row_id(parts[0])) is None:
        return None
    url = parts[1].replace("%7C", "|").replace("%25", "%")
    if not re.match(r"^https?://[^/\s\\]+", url, re.I) or any(c in url for c in "\r\n"):
        return None
    return ident, url


def verify_open(signer: Signer, token: str) -> int | None:
    parts = signer.verify(token.removesuffix(".gif"), "o")
    return row_id(parts[0]) if parts and len(parts) == 1 else None


class LinkTracker:
    """Rewrites a rendered HTML part for one delivery: links through /c/, a pixel through /o/."""

    def __init__(self, signer: Signer, base_url: str):
        self.signer = signer
        self.base = base_url
        self._skip = base_url + "/u/"  # the unsubscribe link stays direct and readable

    def rewrite(self, body: str, delivery_id: int) -> str:
        signer, base, skip = self.signer, self.base, self._skip

        def link(m: re.Match[str]) -> str:
            url = m.group(2)
            if "&" in url:
                url = html.unescape(url)
            # The unsubscribe link stays direct; so does a link that carries an address (a template that
            # personalises a URL with {{ email }}): a tracking token must never hold one.
            if url.startswith(skip) or "@" in url or "%40" in url.lower():
                return m.group(0)
            return f"{m.group(1)}{base}/c/{click_token(signer, delivery_id, url)}{m.group(3)}"

        body = _HREF.sub(link, body)
        pixel = (
            f'<img src="{base}/o/{open_token(signer, delivery_id)}.gif" width="1" height="1" alt="" '
            'style="display:block;border:0">'
        )
        end = body.lower().rfind("</body")
        if end < 0:
            return body + pixel
        return body[:end] + pixel + body[end:]
