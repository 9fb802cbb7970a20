"""Slack's markup in command text, turned back into what the person meant.

With `should_escape: true` (our manifest) Slack sends `<@U123|name>` for a mention,
`<mailto:a@b.example|a@b.example>` for a typed address, `<http://x.example|x.example>` for a
typed domain, `<#C123|general>` for a channel, and escapes `& < >`. The core wants email
addresses and plain words, so mentions become emails (looked up in the directory) and links
become what was typed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from bot.errors import UserError

TOKEN = re.compile(r"<([^<>]*)>")
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")

Lookup = Callable[[str], Awaitable[str | None]]  # Slack user id -> email, or None


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


async def resolve_markup(text: str, email_of: Lookup) -> str:
    """`text` with every Slack markup token replaced; raises UserError for a mention without email."""
    out: list[str] = []
    pos = 0
    for m in TOKEN.finditer(text):
        out.append(unescape(text[pos : m.start()]))
        out.append(await _replace(m.group(1), email_of))
        pos = m.end()
    out.append(unescape(text[pos:]))
    return "".join(out)


async def _replace(inner: str, email_of: Lookup) -> str:
    target, _, label = inner.partition("|")
    label = unescape(label)
    if target.startswith("@"):
        user_id = target[1:]
        if not USER_ID.match(user_id):
            return label or target
        email = await email_of(user_id)
        if not email:
            who = f"@{label}" if label else "the person you mentioned"
            raise UserError(f"{who} has no email address I can read in Slack; type their address instead.")
        return email
    if target.startswith("mailto:"):
        return unescape(target[len("mailto:") :])
    if target.startswith("#"):
        return "#" + label if label else target
    if target.startswith("!"):
        # @here, @channel, user groups: not a person with one address.
        shown = label or "@" + target[1:].split("^", 1)[0]
        raise UserError(f"{shown} is not one person; name people by their email address or @mention.")
    return label or unescape(target)  # a link: what the person typed
