"""Consent as it happened: every step is an event in `consent_events` (GDPR Art. 7 — consent must be
demonstrable: when, where, the exact wording shown, and the connection where the organisation records
it), and a confirmed subscription is granted in one place.

`contacts.consent_at` stays the latest consent, for the campaign audience's quick test; the history is
the record. Both the signup (bot/contacts/) and the preference centre (bot/campaigns/) write here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.addresses import email_hash
from bot.db.models import ConsentEvent, Contact, ContactList, ListMember, Suppression
from bot.db.upsert import insert_ignore

KINDS = ("requested", "confirmed", "added", "imported", "left", "unsubscribed", "resubscribed", "sunset")
GRANTING = ("confirmed", "added", "imported", "resubscribed")  # the kinds that are consent given


@dataclass(frozen=True)
class Proof:
    """Where and how consent was given (or withdrawn)."""

    source: str | None = None  # the form and its page, chat:<who>, csv:<file>, preference centre
    wording: str | None = None  # the exact text the person saw
    wording_version: str | None = None
    ip: str | None = None  # only when the organisation records it (signup.record_ip)
    user_agent: str | None = None
    actor: str | None = None


GIVEN_MARK = " (consent given "  # an import's source ends with the time the file says consent was given


def imported_source(source: str, given: datetime) -> str:
    """An imported consent's source: where the file says it came from, and when it was given."""
    return f"{source}{GIVEN_MARK}{given.isoformat()})"


def given_at(event: ConsentEvent) -> datetime:
    """When this consent was given: an import's own time (the file's consent_at, kept in its source),
    else when the event was recorded — never when the person first joined the list."""
    if event.kind == "imported" and event.source and event.source.endswith(")"):
        _, mark, rest = event.source.rpartition(GIVEN_MARK)
        if mark:
            try:
                given = datetime.fromisoformat(rest[:-1])
            except ValueError:
                return event.at
            return given.replace(tzinfo=UTC) if given.tzinfo is None else given.astimezone(UTC)
    return event.at


def _cut(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else None


def record(
    session: AsyncSession,
    *,
    email: str,
    kind: str,
    at: datetime,
    proof: Proof,
    contact_id: int | None = None,
    list_name: str | None = None,
) -> None:
    assert kind in KINDS, kind
    session.add(
        ConsentEvent(
            contact_id=contact_id,
            email_hash=email_hash(email),
            list_name=list_name,
            kind=kind,
            at=at,
            source=_cut(proof.source, 500),
            wording=_cut(proof.wording, 4000),
            wording_version=_cut(proof.wording_version, 100),
            ip=_cut(proof.ip, 64),
            user_agent=_cut(proof.user_agent, 400),
            actor=_cut(proof.actor, 320),
        )
    )


async def grant(
    session: AsyncSession,
    *,
    email: str,
    lst: ContactList,
    kind: str,
    at: datetime,
    proof: Proof,
    name: str | None = None,
    attributes: dict[str, Any] | None = None,
    method: str,
) -> Contact:
    """Consent given for `lst`: the contact (made if new) is on the list from now, its consent is this one,
    and the event is recorded. An unsubscribe before it is lifted: this is the newer word (audited)."""
    assert kind in GRANTING, kind
    contact = (await session.execute(select(Contact).where(Contact.email == email))).scalar_one_or_none()
    if contact is None:
        contact = Contact(email=email, name=name, attributes=dict(attributes or {}))
        session.add(contact)
        await session.flush()
    else:
        contact.name = name or contact.name
        if attributes:
            contact.attributes = {**(contact.attributes or {}), **attributes}
    contact.consent_at = at
    contact.consent_source = _cut(proof.source, 500)
    contact.consent_method = method[:200]
    await insert_ignore(
        session,
        ListMember,
        [{"list_id": lst.id, "contact_id": contact.id, "subscribed_at": at}],
        ["list_id", "contact_id"],
    )
    record(session, email=email, kind=kind, at=at, proof=proof, contact_id=contact.id, list_name=lst.name)
    await lift_unsubscribe(session, email, at=at, actor=proof.actor or email, via=kind)
    return contact


async def lift_unsubscribe(session: AsyncSession, email: str, *, at: datetime, actor: str, via: str) -> bool:
    """Consent given after an unsubscribe ends it (the person's newer word); bounces, complaints and
    erasures stay: they are not the person changing their mind."""
    sup = (
        await session.execute(
            select(Suppression).where(
                Suppression.email_hash == email_hash(email), Suppression.reason == "unsubscribed"
            )
        )
    ).scalar_one_or_none()
    if sup is None or sup.created_at >= at:
        return False
    await session.execute(delete(Suppression).where(Suppression.id == sup.id))
    audit.record(
        session,
        actor=actor,
        via=via,
        action="suppression.lift",
        subject=f"contact:{email}",
        before={"reason": sup.reason, "since": sup.created_at.isoformat()},
        detail="consent given again after the unsubscribe",
    )
    return True


async def own_leave(session: AsyncSession, email: str, list_name: str) -> datetime | None:
    """When the person left `list_name` themselves (the preference centre), if that is still their latest
    word on it — then only their own fresh consent (a signup, the preference centre) brings them back,
    never someone else's claim (chat, an import)."""
    latest = (
        await session.execute(
            select(ConsentEvent.kind, ConsentEvent.at, ConsentEvent.actor)
            .where(
                ConsentEvent.email_hash == email_hash(email),
                ConsentEvent.list_name == list_name,
                ConsentEvent.kind.in_(("left", *GRANTING)),
            )
            .order_by(ConsentEvent.id.desc())
            .limit(1)
        )
    ).first()
    if latest is None or latest.kind != "left" or (latest.actor or "").lower() != email.lower():
        return None
    return latest.at


async def history(session: AsyncSession, email: str, limit: int = 200) -> list[ConsentEvent]:
    """The consent record of an address, oldest first."""
    rows = (
        await session.execute(
            select(ConsentEvent)
            .where(ConsentEvent.email_hash == email_hash(email))
            .order_by(ConsentEvent.id)
            .limit(limit)
        )
    ).scalars()
    return list(rows)
