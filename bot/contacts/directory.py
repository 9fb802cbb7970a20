"""Contacts as people look them up: one with its lists and consent record, a search, leaving a list by
someone's word, the lists themselves, and a CSV export with consent columns."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    address = normalise(email)
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
    address = normalise(email)
    async with ctx.sessions() as session, session.begin():
        contact = (
            await session.execute(select(Contact).where(Contact.email == address))
        ).scalar_one_or_none()
        lst = (
            await session.execute(select(ContactList).where(ContactList.name == list_name))
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


EXPORT_COLUMNS = ["email", "name", "consent_at", "consent_source", "consent_method", "lists"]


async def export_csv(ctx: Context, list_name: str | None) -> tuple[str, int]:
    """Every contact (of one list) as CSV that `postroom contacts import` reads back; attributes as columns."""
    async with ctx.sessions() as session:
        query = select(Contact).order_by(Contact.id)
        if list_name is not None:
            if (
                await session.execute(select(ContactList.id).where(ContactList.name == list_name))
            ).first() is None:
                raise UserError(
                    t("There is no contact list “{name}”. /lists shows them.", name=list_name[:60])
                )
            query = (
                query.join(ListMember, ListMember.contact_id == Contact.id)
                .join(ContactList, ContactList.id == ListMember.list_id)
                .where(ContactList.name == list_name)
            )
        contacts = list((await session.execute(query)).scalars())
        memberships: dict[int, list[str]] = {}
        for cid, name in (
            await session.execute(
                select(ListMember.contact_id, ContactList.name).join(
                    ContactList, ContactList.id == ListMember.list_id
                )
            )
        ).all():
            memberships.setdefault(cid, []).append(name)
    keys = sorted({k for c in contacts for k in (c.attributes or {})} - set(EXPORT_COLUMNS))
    rows = (
        [
            c.email,
            c.name or "",
            c.consent_at.isoformat() if c.consent_at else "",
            c.consent_source or "",
            c.consent_method or "",
            " ".join(sorted(memberships.get(c.id, []))),
        ]
        + [(c.attributes or {}).get(k) for k in keys]
        for c in contacts
    )
    return write_rows(EXPORT_COLUMNS + keys, rows), len(contacts)
