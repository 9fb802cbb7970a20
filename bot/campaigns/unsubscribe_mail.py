"""The mailto: half of List-Unsubscribe: mail to campaigns.unsubscribe_mailbox whose subject is
`unsubscribe <token>` (what the header's link pre-fills) suppresses the address of the delivery the
token names (bot/campaigns/unsubscribe.py)."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

from bot.campaigns.unsubscribe import read_token, target_of, unsubscribe
from bot.context import Context
from bot.mail.server import Route

TOKEN_RE = re.compile(r"unsubscribe\s+([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)", re.I)


class UnsubscribeMailbox:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.address = ctx.settings.campaigns.unsubscribe_mailbox.lower()

    async def accepts(self, rcpt: str, mail_from: str) -> str | None:
        return "250 OK" if rcpt == self.address else None

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        msg = message_from_bytes(data[:100_000], policy=policy.compat32)
        m = TOKEN_RE.search(str(msg.get("Subject", "")))
        link = read_token(self.ctx, m.group(1)) if m else None
        if link is None:
            return "250 OK (no valid unsubscribe token; nothing done)"
        if link.kind == "preview":
            return "250 OK (a preview's unsubscribe link; nothing done)"
        target = await target_of(self.ctx, link)
        if target is None:
            return "250 OK (that message is no longer on record; nothing done)"
        await unsubscribe(
            self.ctx, target, via="mail", how="mailto", detail=f"unsubscribe mail from <{mail_from[:200]}>"
        )
        return "250 OK unsubscribed"

    def route(self) -> Route:
        return Route("unsubscribe", self.accepts, self.deliver)
