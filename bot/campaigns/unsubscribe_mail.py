"""The mailto: half of List-Unsubscribe: mail to campaigns.unsubscribe_mailbox whose subject is
`unsubscribe <token>` (what the header's link pre-fills) suppresses the address the token names."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

from bot import audit
from bot.context import Context
from bot.mail.server import Route
from bot.suppressions import Evidence, suppress

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
        parts = self.ctx.signer.verify(m.group(1), "u") if m else None
        if not parts or len(parts) != 2 or not parts[0].isdigit():
            return "250 OK (no valid unsubscribe token; nothing done)"
        campaign_id, email = int(parts[0]), parts[1]
        async with self.ctx.sessions() as session, session.begin():
            evidence = Evidence(
                "unsubscribe", "mailto", f"unsubscribe mail from <{mail_from[:200]}>", campaign_id, email
            )
            if await suppress(session, email, "unsubscribed", evidence):
                audit.record(
                    session,
                    actor=email,
                    via="mail",
                    action="suppression.add",
                    subject=f"contact:{email}",
                    after={"reason": "unsubscribed"},
                    detail=f"mailto unsubscribe from campaign {campaign_id}",
                )
        return "250 OK unsubscribed"

    def route(self) -> Route:
        return Route("unsubscribe", self.accepts, self.deliver)
