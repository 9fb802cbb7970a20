"""Bounces and complaints: the embedded SMTP server's VERP route, DSN parsing, and recording.

A campaign message's return path is `bounces+<delivery>-<mac>@<domain>` (bot/campaigns/tracking.py),
so a bounce names its delivery without trusting the bounce's body. The body is parsed as a
delivery status notification (RFC 3464, `multipart/report; report-type=delivery-status`) to tell
a hard bounce (the address's own permanent failure: 5.1.x but 5.1.7/5.1.8, which are about our sender,
and 5.2.1 mailbox disabled: suppressed at once) from a soft one (4.x.x and every other 5.x.x — mailbox
full, policy blocks, routing, content: suppressed after `campaigns.soft_bounce_limit` of them), and an
abuse report (RFC 5965, `report-type=feedback-report`) is a complaint (suppressed at once). Each
suppression keeps the DSN's status and diagnostic as its evidence.

Anyone who got a message has seen its return path, so a report to it counts only when it is about that
delivery: its Final-Recipient (or Original-Recipient), when it names one, must be the delivery's
recipient, and it must arrive within `campaigns.bounce_window_days` (30) of the send. Anything else is
ignored and logged. The same holds for the email-events webhook (its `email` is the named recipient) and
the email services' endpoints, with one more rule: a reported return path that claims to be ours
(`bounces+…`) but fails its MAC makes the event ignored — it is never matched by address instead
(`return_path_delivery`). `record_event` says whether an event was recorded or ignored, so an endpoint's
answer counts what changed nothing as ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, timedelta
from email import message_from_bytes, policy
from email.utils import parseaddr

from sqlalchemy import func, select

from bot import audit
from bot.addresses import email_hash
from bot.campaigns.tracking import VERP_RE, verp_delivery
from bot.context import Context
from bot.db.models import CampaignEvent, Delivery, ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.links import Signer
from bot.mail.dsn import STATUS_RE, Finding, classify_status, parse_report
from bot.mail.server import Route
from bot.suppressions import Evidence, suppress

log = logging.getLogger(__name__)
__all__ = [
    "STATUS_RE",
    "BounceMailbox",
    "Finding",
    "Recorded",
    "classify_status",
    "parse_report",
    "record_event",
    "record_finding",
    "return_path_delivery",
]


def return_path_delivery(signer: Signer, return_path: str) -> tuple[int | None, bool]:
    """The delivery a reported return path names, and whether it is forged: shaped like ours
    (`bounces+…`) but failing its MAC. A forged one is no evidence, and neither is "the latest message to
    this address" in its place. A return path that is not ours at all (a service's own sender) names
    nothing and forges nothing."""
    raw = return_path.strip().lower()
    # "<bounces+…@…>", "Name <bounces+…@…>", "mailto:…": the address inside, however it is written (a
    # return path in angle brackets was not recognised as ours and fell back to matching by address).
    address = parseaddr(raw.removeprefix("mailto:"))[1] or raw
    address = address.strip("<> \t")
    if not address:
        return None, False
    found = verp_delivery(signer, address)
    if found is not None:
        return found, False
    return None, address.startswith("bounces+") or "bounces+" in raw


@dataclass(frozen=True)
class Recorded:
    """What became of one reported event: `ignored` says why nothing was written ("" when it was recorded);
    `reason` is the suppression applied, if any."""

    ignored: str = ""
    reason: str | None = None


async def record_finding(
    ctx: Context, delivery_id: int | None, finding: Finding, *, via: str, email: str | None = None
) -> str | None:
    """Store the event and suppress as its kind says. Returns the suppression reason applied, if any."""
    return (await record_event(ctx, delivery_id, finding, via=via, email=email)).reason


async def record_event(
    ctx: Context, delivery_id: int | None, finding: Finding, *, via: str, email: str | None = None
) -> Recorded:
    """Store the event and suppress as its kind says, or ignore it (logged) when it is not evidence about
    the delivery it names."""
    async with ctx.sessions() as session, session.begin():
        row = None
        if delivery_id is not None:
            row = (
                await session.execute(
                    select(Delivery.campaign_id, Delivery.email, Delivery.sent_at).where(
                        Delivery.id == delivery_id
                    )
                )
            ).first()
        elif email is not None:  # an email service's notification without our return path
            row = (
                await session.execute(
                    select(Delivery.campaign_id, Delivery.email, Delivery.sent_at, Delivery.id)
                    .where(Delivery.email == email.lower(), Delivery.status == "sent")
                    .order_by(Delivery.sent_at.desc())
                    .limit(1)
                )
            ).first()
            if row is not None:
                delivery_id = row.id
        if row is None:
            log.info("a %s for an unknown delivery was ignored", finding.kind)
            return Recorded(ignored="no delivery to this address")
        address = row.email
        named = (finding.recipient or "").strip().strip("<>").strip().lower()
        if named and named != address.lower():
            # A report to one recipient's return path about someone else: not evidence against either.
            log.warning(
                "a %s to delivery %s's return path names another recipient; ignored",
                finding.kind,
                delivery_id,
            )
            return Recorded(ignored="names another recipient")
        window = timedelta(days=ctx.settings.campaigns.bounce_window_days)
        sent_at = row.sent_at
        if sent_at is not None and sent_at.tzinfo is None:
            sent_at = sent_at.replace(tzinfo=UTC)
        if sent_at is None or ctx.now() - sent_at > window:
            # A return path is seen by everyone who got the message: it is taken as a bounce address
            # only for the window after the send, not by anyone who saw it at any time later.
            log.warning(
                "a %s for delivery %s outside campaigns.bounce_window_days (sent %s); ignored",
                finding.kind,
                delivery_id,
                sent_at,
            )
            return Recorded(ignored="outside campaigns.bounce_window_days")
        hashed = email_hash(address)
        session.add(
            CampaignEvent(
                campaign_id=row.campaign_id,
                delivery_id=delivery_id,
                email_hash=hashed,
                kind=finding.kind,
                detail=finding.detail or None,
                at=ctx.now(),
            )
        )
        await session.flush()
        reason: str | None = None
        if finding.kind == "hard_bounce":
            reason = "hard_bounce"
        elif finding.kind == "complaint":
            reason = "complaint"
        else:
            soft = (
                await session.execute(
                    select(func.count())
                    .select_from(CampaignEvent)
                    .where(CampaignEvent.email_hash == hashed, CampaignEvent.kind == "soft_bounce")
                )
            ).scalar_one()
            if soft >= ctx.settings.campaigns.soft_bounce_limit:
                reason = "soft_bounce"
        if reason is not None and "@erased.invalid" not in address:
            kind = "complaint" if reason == "complaint" else "dsn"
            evidence = Evidence(kind, via, finding.detail or finding.kind, row.campaign_id, "system")
            if await suppress(session, address, reason, evidence):
                audit.record(
                    session,
                    actor="system",
                    via=via,
                    action="suppression.add",
                    subject=f"contact:{address}",
                    after={"reason": reason},
                    detail=finding.detail,
                )
        return Recorded(reason=reason)


class BounceMailbox:
    """The embedded SMTP server's route for VERP return paths."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def accepts(self, rcpt: str, mail_from: str) -> str | None:
        if verp_delivery(self.ctx.signer, rcpt) is not None:
            return "250 OK"
        if VERP_RE.match(rcpt) or rcpt.startswith("bounces+"):
            return f"550 5.1.1 <{rcpt}>: not a return path of this server"
        return None

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        msg_id = message_from_bytes(data[:20000], policy=policy.compat32).get("Message-ID")
        if msg_id:
            async with self.ctx.sessions() as session, session.begin():
                first = (
                    await insert_ignore(
                        session,
                        ProcessedEvent,
                        [{"source": "dsn", "event_id": str(msg_id).strip()[:300]}],
                        ["source", "event_id"],
                    )
                    == 1
                )
            if not first:
                return "250 OK (already processed)"
        findings = parse_report(data)
        if not findings:
            log.info("mail to a return path was neither a bounce nor a complaint (an auto-reply?); ignored")
            return "250 OK"
        order = {"complaint": 0, "hard_bounce": 1, "soft_bounce": 2}
        finding = min(findings, key=lambda f: order[f.kind])  # a return path stands for one delivery
        for rcpt in rcpts:
            await record_finding(self.ctx, verp_delivery(self.ctx.signer, rcpt), finding, via="dsn")
        return "250 OK"

    def route(self) -> Route:
        return Route("bounces", self.accepts, self.deliver)
