"""What a contact did with campaign mail, as SQL over deliveries and their events (opens, clicks).

Events carry the delivery id, and the delivery the address: a contact's engagement is the events of
the deliveries to its address. Opens are inflated by mail-privacy proxies (Apple Mail Privacy
Protection fetches every image), so an open counts as engagement but says less than a click.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, select

from bot.db.models import CampaignEvent, Contact, Delivery

ENGAGED = ("open", "click")


def events_of(email: Any, kinds: tuple[str, ...], since: datetime | None = None) -> ColumnElement[bool]:
    """There is an event of one of `kinds` (since `since`) on mail to `email`."""
    conditions = [Delivery.email == email, CampaignEvent.kind.in_(kinds)]
    if since is not None:
        conditions.append(CampaignEvent.at >= since)
    return exists(
        select(CampaignEvent.id)
        .join(Delivery, Delivery.id == CampaignEvent.delivery_id)
        .where(and_(*conditions))
    )


def event_count(email: Any, kind: str) -> ColumnElement[int]:
    return (
        select(func.count(CampaignEvent.id))
        .join(Delivery, Delivery.id == CampaignEvent.delivery_id)
        .where(Delivery.email == email, CampaignEvent.kind == kind)
        .correlate_except(CampaignEvent, Delivery)
        .scalar_subquery()
    )


def sent_count(email: Any) -> ColumnElement[int]:
    return (
        select(func.count(Delivery.id))
        .where(Delivery.email == email, Delivery.status == "sent")
        .scalar_subquery()
    )


def sent_since(email: Any, since: datetime) -> ColumnElement[bool]:
    return exists(
        select(Delivery.id).where(
            Delivery.email == email, Delivery.status == "sent", Delivery.sent_at >= since
        )
    )


def inactive(since: datetime) -> ColumnElement[bool]:
    """A contact on record before `since` with no open or click since then."""
    return and_(Contact.created_at < since, ~events_of(Contact.email, ENGAGED, since))
