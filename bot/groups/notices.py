"""Short notices Postroom mails about group mail: a rejected or expired post to its sender, bounces to
a group's owners. Sent with a null envelope sender, so a notice that fails never bounces back into a loop,
`Auto-Submitted: auto-replied` (RFC 3834: autoresponders stay quiet), and From `noreply@` the bounce
domain, never the group's address: an answer or an out-of-office reply to a notice must not become a
post to the group (which could be held, noticed again, and so on). Mail to the bounce domain reaches
Postroom's bounce handling, which drops what is not a bounce of its own.

A group's owners and moderators are told only while they are at the company: a leaver owns nothing
(`still_here`). When nobody is left to tell, HR's chat report is the notice, as for a group with no owner."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid

from sqlalchemy import select

from bot.context import Context
from bot.db.models import Person
from bot.mail.compose import date_header

log = logging.getLogger(__name__)


def notice_bytes(from_address: str, to: list[str], subject: str, text: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = date_header()
    msg["Message-ID"] = make_msgid(domain=from_address.rsplit("@", 1)[-1])
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(text)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def still_here(ctx: Context, addresses: list[str]) -> list[str]:
    """`addresses` less the people who have left (an address nobody has on record stays: an outside owner
    HR named on purpose)."""
    if not addresses:
        return []
    async with ctx.sessions() as session:
        gone = set(
            (
                await session.execute(
                    select(Person.email).where(Person.email.in_(addresses), Person.status == "left")
                )
            ).scalars()
        )
    return [a for a in addresses if a not in gone]


def notice_sender(ctx: Context) -> str:
    return f"noreply@{ctx.settings.campaigns.bounce_domain}"


async def send_notice(ctx: Context, to: list[str], subject: str, text: str) -> int:
    """Mail the notice to each address; returns how many took it (a failure is logged, not raised)."""
    if not to:
        return 0
    data = notice_bytes(notice_sender(ctx), to, subject, text)
    transport = ctx.new_transport(1)
    delivered = 0
    try:
        for rcpt in to:
            outcome = await transport.send("", rcpt, data)
            if outcome.ok:
                delivered += 1
            else:
                log.warning("notice %r to %s not delivered: %s", subject, rcpt, outcome.detail)
    finally:
        await transport.close()
    return delivered
