"""Unsubscribing, whichever way it arrives (the one-click POST, the mailto: half of List-Unsubscribe).

A token names a delivery by its id (bot/campaigns/tracking.py); the delivery row says who and which
campaign, so no address travels in a link. A preview's token names only its campaign and
unsubscribes nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from bot import audit, consent
from bot.campaigns.tracking import UnsubscribeLink, verify_unsubscribe
from bot.context import Context
from bot.db.models import Contact, Delivery
from bot.suppressions import Evidence, suppress


@dataclass(frozen=True)
class Target:
    email: str
    campaign_id: int


def read_token(ctx: Context, token: str) -> UnsubscribeLink | None:
    return verify_unsubscribe(ctx.signer, token, legacy=ctx.settings.web.legacy_unsubscribe_tokens)


async def target_of(ctx: Context, link: UnsubscribeLink) -> Target | None:
    """Whom a (non-preview) link unsubscribes; None for a preview link or a delivery that is gone."""
    if link.kind == "legacy" and link.email:
        return Target(link.email, link.id)
    if link.kind != "delivery":
        return None
    async with ctx.sessions() as session:
        row = (
            await session.execute(select(Delivery.email, Delivery.campaign_id).where(Delivery.id == link.id))
        ).first()
    return Target(row.email, row.campaign_id) if row is not None else None


async def unsubscribe(ctx: Context, target: Target, *, via: str, how: str, detail: str) -> bool:
    """Suppress the target's address (audited, with how it was asked); True when it was not suppressed
    before."""
    if target.email.endswith("@erased.invalid"):
        return False  # erased on request: already suppressed by its hash
    async with ctx.sessions() as session, session.begin():
        evidence = Evidence("unsubscribe", how, detail, target.campaign_id, target.email)
        new = await suppress(session, target.email, "unsubscribed", evidence)
        if new:
            audit.record(
                session,
                actor=target.email,
                via=via,
                action="suppression.add",
                subject=f"contact:{target.email}",
                after={"reason": "unsubscribed"},
                detail=f"{how} unsubscribe from campaign {target.campaign_id}",
            )
            contact_id = (
                await session.execute(select(Contact.id).where(Contact.email == target.email))
            ).scalar_one_or_none()
            consent.record(  # the consent history shows the withdrawal beside the consent it ends
                session,
                email=target.email,
                kind="unsubscribed",
                at=ctx.now(),
                contact_id=contact_id,
                proof=consent.Proof(source=f"{how} (campaign {target.campaign_id})", actor=target.email),
            )
    return new


def masked(email: str) -> str:
    """`l…@example.com`: enough for the recipient to recognise, little for whoever else holds the link."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}…@{domain}" if domain else "…"
