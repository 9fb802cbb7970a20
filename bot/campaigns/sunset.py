"""Keeping lists clean: who is inactive (no open or click for `signup.sunset_days`), and the sunset —
suppressing those who did not answer a re-permission automation within its window. Each step waits for
an approver: the re-permission automation has its approval card, and so does the suppression.

Opens count as engagement although mail-privacy proxies inflate them (an image fetched by Apple's proxy
looks like an open), so some inactive people look active; clicks are the firmer signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, exists, func, select, update

from bot import audit, consent
from bot.campaigns.engagement import ENGAGED, inactive
from bot.context import Context
from bot.db.models import (
    Automation,
    Campaign,
    CampaignEvent,
    Contact,
    ContactList,
    Delivery,
    ListMember,
    Sunset,
)
from bot.errors import PermissionDenied, Refusal, UserError
from bot.events import Button, Card, Message
from bot.i18n import t
from bot.messengers import Messengers
from bot.suppressions import Evidence, suppress

SAMPLE = 10
MAX_IDS = 200_000


@dataclass
class Inactive:
    list_name: str
    days: int
    count: int
    sample: list[str]


def _on_list(list_name: str):
    return (
        select(Contact.id, Contact.email)
        .join(ListMember, ListMember.contact_id == Contact.id)
        .join(ContactList, ContactList.id == ListMember.list_id)
        .where(ContactList.named(list_name), Contact.consent_at.is_not(None))
    )


async def find_inactive(ctx: Context, list_name: str, days: int | None = None) -> Inactive:
    days = days or ctx.settings.signup.sunset_days
    since = ctx.now() - timedelta(days=days)
    async with ctx.sessions() as session:
        if (
            await session.execute(select(ContactList.id).where(ContactList.named(list_name)))
        ).first() is None:
            raise UserError(t("There is no contact list “{name}”. /lists shows them.", name=list_name[:60]))
        query = _on_list(list_name).where(inactive(since))
        count = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
        sample = [r.email for r in (await session.execute(query.order_by(Contact.id).limit(SAMPLE))).all()]
    return Inactive(list_name, days, count, sample)


class Sunsets:
    def __init__(self, ctx: Context, messengers: Messengers):
        self.ctx = ctx
        self.messengers = messengers

    async def request(
        self, list_name: str, automation: str, window_days: int, *, actor: str, via: str
    ) -> Sunset:
        """Hold the suppression of everyone the re-permission automation mailed at least `window_days`
        ago who has not opened, clicked or consented again since; approvers get a card."""
        ctx = self.ctx
        if not 1 <= window_days <= 365:
            raise UserError(t("--window takes 1 to 365 days."))
        async with ctx.sessions() as session, session.begin():
            row = (
                await session.execute(
                    select(Automation, Campaign)
                    .join(Campaign, Campaign.id == Automation.campaign_id)
                    .where(Automation.name == automation)
                )
            ).first()
            if row is None:
                raise Refusal(
                    t("There is no automation “{name}”. /automation list shows them.", name=automation[:60])
                )
            a, campaign = row
            if a.trigger != "inactive" or campaign.audience_name != list_name:
                raise UserError(
                    t(
                        "“{name}” is not a re-permission automation of the list “{list}” (one with --on inactive:<N>d "
                        "--to {list}).",
                        name=automation,
                        list=list_name,
                    )
                )
            ever_sent = (
                await session.execute(
                    select(Delivery.id)
                    .where(Delivery.campaign_id == campaign.id, Delivery.status == "sent")
                    .limit(1)
                )
            ).first()
            if ever_sent is None and campaign.state in ("draft", "pending_approval", "rejected"):
                raise UserError(
                    t(
                        "Nobody to sunset on “{list}”: “{name}” was never approved, so it has asked nobody yet. "
                        "Once it is approved (/automation submit {name}) and its window has passed, a sunset can "
                        "follow.",
                        list=list_name,
                        name=automation,
                    )
                )
            cutoff = ctx.now() - timedelta(days=window_days)
            mailed = (
                select(Contact.id, Contact.email)
                .join(Delivery, and_(Delivery.email == Contact.email, Delivery.campaign_id == campaign.id))
                .join(ListMember, ListMember.contact_id == Contact.id)
                .join(ContactList, ContactList.id == ListMember.list_id)
                .where(
                    ContactList.named(list_name),
                    Delivery.status == "sent",
                    Delivery.sent_at <= cutoff,
                    Contact.consent_at < Delivery.sent_at,
                    ~events_of_after_send(campaign.id),
                )
                .order_by(Contact.id)
                .limit(MAX_IDS)
            )
            rows = (await session.execute(mailed)).all()
            if not rows:
                raise UserError(
                    t(
                        "Nobody to sunset on “{list}”: everyone “{name}” mailed at least {days} days ago has answered "
                        "(or nobody was mailed that long ago).",
                        list=list_name,
                        name=automation,
                        days=window_days,
                    )
                )
            held = Sunset(
                list_name=list_name,
                automation=automation,
                requested_by=actor,
                created_at=ctx.now(),
                payload={
                    "ids": [r.id for r in rows],
                    "sample": [r.email for r in rows[:SAMPLE]],
                    "window": window_days,
                },
            )
            session.add(held)
            await session.flush()
            audit.record(
                session,
                actor=actor,
                via=via,
                action="sunset.request",
                subject=f"list:{list_name}",
                after={"sunset": held.id, "count": len(rows)},
            )
        await self.messengers.post("approvals", lambda: self._card_message(held), subject=f"sunset:{held.id}")
        return held

    def _card_message(self, held: Sunset, outcome: str | None = None) -> Message:
        ids = held.payload.get("ids", [])
        fields = (
            (t("Requested by"), held.requested_by),
            (t("List"), held.list_name),
            (t("Re-permission automation"), held.automation),
            (
                t("Would suppress"),
                t("1 contact who did not answer within {days} days", days=held.payload.get("window"))
                if len(ids) == 1
                else t(
                    "{count} contacts who did not answer within {days} days",
                    count=len(ids),
                    days=held.payload.get("window"),
                ),
            ),
            (t("Sample"), ", ".join(held.payload.get("sample", []))),
        )
        if outcome is not None:
            return Message(
                outcome,
                Card(
                    title=t("Sunset #{id} of “{list}”", id=held.id, list=held.list_name),
                    fields=(*fields, (t("Outcome"), outcome)),
                ),
            )
        return Message(
            t(
                "{email} asks to suppress inactive contacts of “{list}”.",
                email=held.requested_by,
                list=held.list_name,
            ),
            Card(
                title=t("Approval needed: sunset #{id} of “{list}”", id=held.id, list=held.list_name),
                fields=fields,
                buttons=(
                    Button(
                        "sunset.approve",
                        t("Approve"),
                        str(held.id),
                        style="primary",
                        text_command=f"/sunset approve {held.id}",
                    ),
                    Button(
                        "sunset.reject",
                        t("Reject"),
                        str(held.id),
                        style="danger",
                        confirm=t("Reject sunset #{id}? Nobody is suppressed.", id=held.id),
                        text_command=f"/sunset reject {held.id}",
                    ),
                ),
            ),
        )

    async def decide(self, sunset_id: int, *, approver: str, via: str, approve: bool) -> tuple[Sunset, int]:
        """Approve (suppress them, each with a consent event) or reject a held sunset, once."""
        ctx = self.ctx
        suppressed = 0
        async with ctx.sessions() as session, session.begin():
            held = await session.get(Sunset, sunset_id)
            if held is None:
                raise UserError(t("There is no sunset #{id}.", id=sunset_id))
            if approver == held.requested_by:
                raise PermissionDenied(
                    t("You asked for sunset #{id}, so another approver must decide it.", id=sunset_id)
                )
            won = await session.execute(
                update(Sunset)
                .where(Sunset.id == sunset_id, Sunset.state == "pending")
                .values(
                    state="approved" if approve else "rejected", decided_by=approver, decided_at=ctx.now()
                )
                .execution_options(synchronize_session=False)
            )
            if won.rowcount != 1:
                raise UserError(t("Sunset #{id} was decided already.", id=sunset_id))
            if approve:
                ids = list(held.payload.get("ids", []))
                for start in range(0, len(ids), 1000):
                    rows = (
                        await session.execute(
                            select(Contact.id, Contact.email).where(Contact.id.in_(ids[start : start + 1000]))
                        )
                    ).all()
                    for cid, email in rows:
                        if await suppress(
                            session,
                            email,
                            "inactive",
                            Evidence(
                                "sunset",
                                "sunset",
                                f"sunset #{sunset_id}: no answer to {held.automation}",
                                None,
                                approver,
                            ),
                        ):
                            suppressed += 1
                        consent.record(
                            session,
                            email=email,
                            kind="sunset",
                            at=ctx.now(),
                            contact_id=cid,
                            list_name=held.list_name,
                            proof=consent.Proof(
                                source=f"sunset #{sunset_id} approved by {approver}", actor=approver
                            ),
                        )
            audit.record(
                session,
                actor=approver,
                via=via,
                action=f"sunset.{'approve' if approve else 'reject'}",
                subject=f"list:{held.list_name}",
                after={"sunset": sunset_id, "suppressed": suppressed},
            )
        outcome = (
            t("Approved by {email}: {count} suppressed.", email=approver, count=suppressed)
            if approve
            else t("Rejected by {email}: nobody suppressed.", email=approver)
        )
        await self.messengers.update_subject(f"sunset:{sunset_id}", lambda: self._card_message(held, outcome))
        return held, suppressed


def events_of_after_send(campaign_id: int):
    """An open or click on any mail to the contact after the re-permission message went out."""
    later = Delivery.__table__.alias("later")
    first = Delivery.__table__.alias("first")
    return exists(
        select(CampaignEvent.id)
        .join(later, later.c.id == CampaignEvent.delivery_id)
        .join(first, and_(first.c.email == later.c.email, first.c.campaign_id == campaign_id))
        .where(
            later.c.email == Contact.email,
            CampaignEvent.kind.in_(ENGAGED),
            CampaignEvent.at >= first.c.sent_at,
        )
        .correlate(Contact)
    )


def check_window(text: str | None) -> int:
    if text is None:
        return 14
    raw = text.strip().lower().removesuffix("d")
    if not raw.isdigit():
        raise UserError(t("--window takes a number of days, such as 14d."))
    return int(raw)
