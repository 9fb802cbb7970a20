"""The suppression list: addresses that never receive a campaign message again (invariant 2).

Keyed by a SHA-256 of the address, so an erased contact stays suppressed without being stored.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot.addresses import email_hash
from bot.db.models import Suppression
from bot.db.upsert import insert_ignore


async def suppress(
    session: AsyncSession, email: str, reason: str, source: str | None = None, campaign_id: int | None = None
) -> bool:
    """True when the address was not suppressed before."""
    row = {
        "email_hash": email_hash(email),
        "email": email.lower(),
        "reason": reason,
        "source": source,
        "campaign_id": campaign_id,
    }
    return await insert_ignore(session, Suppression, [row], ["email_hash"]) == 1
