"""Contacts as people look them up: one with its lists and consent record, a search, leaving a list by
someone's word, the lists themselves, and a CSV export with consent columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, or_, select

from bot import audit, consent
from bot.addresses import email_hash, normalise
from bot.context import Context
from bot.csvfiles import write_rows
from bot.db.models import ConsentEvent, Contact, ContactList, ListMember, Signup, Suppression
from bot.errors import UserError
from bot.i18n import t

FIND_LIMIT = 20


@dataclass
class ContactView:
    email: str
    contact: Contact | None
    lists: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # lists with an unconfirmed signup
    history: list[ConsentEvent] = field(default_factory=list)
    suppression: str | None = None


async def show(ctx: Context, email: str) -> ContactView:
    address = normalise(email, existing=True)
    async with ctx.sessions() as session:
        contact = (
            await session.execute(select(Contact).where(Contact.email == address))
        ).scalar_one_or_none()
        view = ContactView(address, contact)
        if contact is not None:
            view.lists = sorted(
                (
                    await session.execute(
                        select(ContactList.name)
                        .join(ListMember, ListMember.list_id == ContactList.id)
                        .where(ListMember.contact_id == contact.id)
                    )
                ).scalars()
            )
        view.pending = sorted(
            (
                await session.execute(
                    select(ContactList.name)
                    .join(Signup, Signup.list_id == ContactList.id)
                    .where(Signup.email == address, Signup.state == "pending", Signup.expires_at > ctx.now())
                )
            ).scalars()
        )
        view.history = await consent.history(session, address)
        view.suppression = (
            await session.execute(
                select(Suppression.reason).where(Suppression.email_hash == email_hash(address))
            )
        ).scalar_one_or_none()
    if contact is None and not view.history and not view.pending:
        raise UserError(t("There is no contact {email}.", email=address))
    return view


async def find(ctx: Context, text: str) -> list[Contact]:
    needle = text.strip().lower()
    if len(needle) < 2 or len(needle) > 200 or any(not c.isprintable() for c in needle):
        raise UserError(t("Search for 2 to 200 characters of an address or a name."))
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    async with ctx.sessions() as session:
        return list(
            (
                await session.execute(
                    select(Contact)
                    .where(
                        or_(
                            Contact.email.like(pattern, escape="\\"),
                            func.lower(Contact.name).like(pattern, escape="\\"),
                        )
                    )
                    .order_by(Contact.email)
                    .limit(FIND_LIMIT)
                )
            ).scalars()
        )


async def remove(ctx: Context, email: str, list_name: str, *, actor: str, via: str) -> None:
    """Take a contact off a list at their word (told to a sales person): recorded like leaving it."""
    address = normalise(email, existing=True)
    async with ctx.sessions() as session, session.begin():
        contact = (
            await session.execute(select(Contact).where(Contact.email == address))
        ).scalar_one_or_none()
        lst = (
            await session.execute(select(ContactList).where(ContactList.named(list_name)))
        ).scalar_one_or_none()
        if lst is None:
            raise UserError(t("There is no contact list “{name}”. /lists shows them.", name=list_name[:60]))
        gone = None
        if contact is not None:
            gone = await session.execute(
                delete(ListMember).where(ListMember.list_id == lst.id, ListMember.contact_id == contact.id)
            )
        if contact is None or not gone or not gone.rowcount:
            raise UserError(t("{email} is not on the list “{name}”.", email=address, name=lst.name))
        consent.record(
            session,
            email=address,
            kind="left",
            at=ctx.now(),
            contact_id=contact.id,
            list_name=lst.name,
            proof=consent.Proof(source=f"chat:{actor} via {via}", actor=actor),
        )
        audit.record(
            session,
            actor=actor,
            via=via,
            action="contact.remove",
            subject=f"contact:{address}",
            after={"list": lst.name},
        )


@dataclass
class ListRow:
    name: str
    members: int
    consented: int
    signup_open: bool
    wording_version: int


async def lists(ctx: Context) -> list[ListRow]:
    async with ctx.sessions() as session:
        rows = (
            await session.execute(
                select(
                    ContactList.name,
                    ContactList.signup_open,
                    ContactList.wording_version,
                    func.count(ListMember.contact_id),
                    func.count(Contact.consent_at),
                )
                .outerjoin(ListMember, ListMember.list_id == ContactList.id)
                .outerjoin(Contact, Contact.id == ListMember.contact_id)
                .group_by(
                    ContactList.id, ContactList.name, ContactList.signup_open, ContactList.wording_version
                )
                .order_by(ContactList.name)
                .limit(200)
            )
        ).all()
    return [ListRow(r[0], r[3], r[4], bool(r[1]), r[2] or 0) for r in rows]


EXPORT_COLUMNS = [
    "email",
    "name",
    "list",
    "consent_at",
    "consent_source",
    "consent_method",
    "wording_version",
    "suppressed",
]
# How consent was given, by the kind of its event (an import keeps the method its file named).
METHOD_OF_KIND = {"confirmed": "double opt-in", "added": "chat", "resubscribed": "preference centre"}


@dataclass
class Export:
    text: str
    contacts: int
    rows: int


async def export_csv(ctx: Context, list_name: str | None) -> Export:
    """One row per contact and list (of one list), with that list's consent — when, where, how, the
    wording version — and the contact's suppression if any; attributes as columns. `contacts import`
    reads it back. A contact on no list is one row with an empty list."""
    async with ctx.sessions() as session:
        lst_id = None
        if list_name is not None:
            lst_id = (
                await session.execute(select(ContactList.id).where(ContactList.named(list_name)))
            ).scalar_one_or_none()
            if lst_id is None:
                raise UserError(
                    t("There is no contact list “{name}”. /lists shows them.", name=list_name[:60])
                )
        members = select(ListMember.contact_id, ContactList.name, ListMember.subscribed_at).join(
            ContactList, ContactList.id == ListMember.list_id
        )
        query = select(Contact).order_by(Contact.id)
        if lst_id is not None:
            members = members.where(ListMember.list_id == lst_id)
            query = query.join(ListMember, ListMember.contact_id == Contact.id).where(
                ListMember.list_id == lst_id
            )
        contacts = list((await session.execute(query)).scalars())
        memberships: dict[int, list[tuple[str, datetime | None]]] = {}
        for cid, name, since in (await session.execute(members)).all():
            memberships.setdefault(cid, []).append((name, since))
        granted: dict[tuple[int, str], ConsentEvent] = {}  # the latest consent given per contact and list
        for event in (
            await session.execute(
                select(ConsentEvent)
                .where(ConsentEvent.kind.in_(consent.GRANTING), ConsentEvent.contact_id.is_not(None))
                .order_by(ConsentEvent.id)
            )
        ).scalars():
            if event.contact_id is not None and event.list_name is not None:
                granted[(event.contact_id, event.list_name)] = event
        suppressed: dict[str, str] = {
            h: r for h, r in (await session.execute(select(Suppression.email_hash, Suppression.reason))).all()
        }
    keys = sorted({k for c in contacts for k in (c.attributes or {})} - set(EXPORT_COLUMNS))
    rows: list[list[object]] = []
    for c in contacts:
        attrs = [(c.attributes or {}).get(k) for k in keys]
        reason = suppressed.get(email_hash(c.email), "")
        for name, _since in sorted(memberships.get(c.id, []), key=lambda m: m[0]) or [("", None)]:
            event = granted.get((c.id, name))
            if event is None:  # on the list without consent (an import without consent_at): never mailed
                rows.append([c.email, c.name, name, "", "", "", "", reason, *attrs])
                continue
            at = consent.given_at(event)  # the consent's own time, never when they joined the list
            method = METHOD_OF_KIND.get(event.kind) or event.wording or c.consent_method or event.kind
            rows.append(
                [
                    c.email,
                    c.name,
                    name,
                    at.isoformat(),
                    event.source,
                    method,
                    event.wording_version,
                    reason,
                    *attrs,
                ]
            )
    return Export(write_rows(EXPORT_COLUMNS + keys, rows), len(contacts), len(rows))
