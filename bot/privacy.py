"""What Postroom holds about one external contact (GDPR Art. 15), and erasing it (Art. 17).

Erasure deletes the contact, its list memberships and its consent record, replaces its address
in past deliveries with a placeholder, scrubs it from the audit trail, and keeps only a SHA-256
of the address in the suppression list (reason `erased`): no campaign mails it again and a later
import skips it. Events (opens, clicks, bounces) never held the address, only its hash.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, or_, select, update

from bot import audit
from bot.addresses import email_hash
from bot.context import Context
from bot.db.models import (
    AuditEntry,
    Campaign,
    CampaignEvent,
    ConsentEvent,
    Contact,
    ContactList,
    Delivery,
    ListMember,
    Signup,
    Suppression,
)


async def export(ctx: Context, email: str) -> dict[str, Any]:
    hashed = email_hash(email)
    async with ctx.sessions() as session:
        contact = (await session.execute(select(Contact).where(Contact.email == email))).scalar_one_or_none()
        out: dict[str, Any] = {
            "email": email,
            "contact": None,
            "lists": [],
            "suppression": None,
            "messages": [],
            "events": {},
            "consent_history": [],
            "signups": [],
        }
        if contact is not None:
            out["contact"] = {
                "name": contact.name,
                "attributes": contact.attributes,
                "consent": {
                    "at": contact.consent_at.isoformat() if contact.consent_at else None,
                    "source": contact.consent_source,
                    "method": contact.consent_method,
                },
                "created_at": contact.created_at.isoformat(),
            }
            out["lists"] = list(
                (
                    await session.execute(
                        select(ContactList.name)
                        .join(ListMember, ListMember.list_id == ContactList.id)
                        .where(ListMember.contact_id == contact.id)
                    )
                ).scalars()
            )
        sup = (
            await session.execute(select(Suppression).where(Suppression.email_hash == hashed))
        ).scalar_one_or_none()
        if sup is not None:
            out["suppression"] = {
                "reason": sup.reason,
                "since": sup.created_at.isoformat(),
                "source": sup.source,
                "kind": sup.kind,
                "evidence": sup.evidence,
            }
        rows = (
            await session.execute(
                select(Campaign.name, Delivery.status, Delivery.sent_at)
                .join(Campaign, Campaign.id == Delivery.campaign_id)
                .where(Delivery.email == email)
                .order_by(Delivery.id)
            )
        ).all()
        out["messages"] = [
            {"campaign": r.name, "status": r.status, "sent_at": r.sent_at.isoformat() if r.sent_at else None}
            for r in rows
        ]
        out["consent_history"] = [
            {
                "at": e.at.isoformat(),
                "kind": e.kind,
                "list": e.list_name,
                "source": e.source,
                "wording": e.wording,
                "wording_version": e.wording_version,
                "ip": e.ip,
                "user_agent": e.user_agent,
            }
            for e in (
                await session.execute(
                    select(ConsentEvent).where(ConsentEvent.email_hash == hashed).order_by(ConsentEvent.id)
                )
            ).scalars()
        ]
        out["signups"] = [
            {"list_id": sg.list_id, "state": sg.state, "at": sg.created_at.isoformat(), "source": sg.source}
            for sg in (await session.execute(select(Signup).where(Signup.email == email))).scalars()
        ]
        out["events"] = dict(
            (
                await session.execute(
                    select(CampaignEvent.kind, func.count())
                    .where(CampaignEvent.email_hash == hashed)
                    .group_by(CampaignEvent.kind)
                )
            ).all()
        )
    return out


async def erase_preview(ctx: Context, email: str) -> dict[str, int]:
    """What `erase` would do, changing nothing: it can't be undone, so it is shown first."""
    async with ctx.sessions() as session:
        contact_id = (
            await session.execute(select(Contact.id).where(Contact.email == email))
        ).scalar_one_or_none()
        lists = 0
        if contact_id is not None:
            lists = (
                await session.execute(
                    select(func.count()).select_from(ListMember).where(ListMember.contact_id == contact_id)
                )
            ).scalar_one()
        messages = (
            await session.execute(select(func.count()).select_from(Delivery).where(Delivery.email == email))
        ).scalar_one()
        entries = (
            await session.execute(
                select(func.count())
                .select_from(AuditEntry)
                .where(or_(AuditEntry.subject == f"contact:{email}", AuditEntry.actor == email))
            )
        ).scalar_one()
    return {"contact": int(contact_id is not None), "lists": lists, "messages": messages, "audit": entries}


async def erase(ctx: Context, email: str, *, actor: str, via: str) -> dict[str, int]:
    hashed = email_hash(email)
    placeholder = f"erased-{hashed[:24]}@erased.invalid"
    tag = f"contact:sha256:{hashed[:16]}"
    done: dict[str, int] = {}
    async with ctx.sessions() as session, session.begin():
        contact_id = (
            await session.execute(select(Contact.id).where(Contact.email == email))
        ).scalar_one_or_none()
        if contact_id is not None:
            await session.execute(delete(ListMember).where(ListMember.contact_id == contact_id))
            await session.execute(delete(Contact).where(Contact.id == contact_id))
        done["contact"] = int(contact_id is not None)
        await session.execute(delete(Signup).where(Signup.email == email))
        # The consent history keeps its shape under the hash; what identifies the person goes.
        await session.execute(
            update(ConsentEvent)
            .where(ConsentEvent.email_hash == hashed)
            .values(ip=None, user_agent=None, contact_id=None)
        )
        await session.execute(
            update(ConsentEvent)
            .where(ConsentEvent.email_hash == hashed, ConsentEvent.actor == email)
            .values(actor=None)
        )
        # Not yet sent: never will be. Then the address leaves the campaign history.
        await session.execute(
            update(Delivery)
            .where(Delivery.email == email, Delivery.status.in_(("pending",)))
            .values(status="suppressed", last_error="erased on request")
        )
        result = await session.execute(
            update(Delivery)
            .where(Delivery.email == email)
            .values(email=placeholder, name=None, attributes={}, last_error=None)
        )
        done["messages"] = result.rowcount or 0
        existing = (
            await session.execute(select(Suppression).where(Suppression.email_hash == hashed))
        ).scalar_one_or_none()
        # Earlier evidence (a server's reply, a DSN) quotes the address: only the hash and the erasure stay.
        if existing is None:
            session.add(
                Suppression(
                    email_hash=hashed,
                    email=None,
                    reason="erased",
                    source="erasure request",
                    kind="erased",
                    actor=actor,
                )
            )
        else:
            existing.email, existing.reason, existing.source = None, "erased", "erasure request"
            existing.kind, existing.evidence, existing.actor = "erased", None, actor
        await session.execute(
            update(AuditEntry).where(AuditEntry.subject == f"contact:{email}").values(subject=tag)
        )
        await session.execute(update(AuditEntry).where(or_(AuditEntry.actor == email)).values(actor=tag))
        audit.record(
            session,
            actor=actor,
            via=via,
            action="privacy.erase",
            subject=tag,
            detail=f"contact {'deleted' if contact_id else 'not found'}; {done['messages']} messages anonymised",
        )
    return done
