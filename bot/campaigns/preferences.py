"""The preference centre behind every unsubscribe link: leave one list, leave them all, or come back.

The link is the unsubscribe token of one delivery (bot/campaigns/tracking.py): it names the delivery,
never the address. GET only shows (mail scanners follow links); every change is a POST of a plain HTML
form, so no JavaScript is needed. Each change is a consent event (bot/consent.py): leaving a list,
unsubscribing, and coming back — which is fresh consent, with the exact wording the page showed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

from sqlalchemy import delete, select
from starlette.requests import Request
from starlette.responses import Response

from bot import consent
from bot.addresses import email_hash
from bot.campaigns.unsubscribe import Target, masked, unsubscribe
from bot.context import Context
from bot.db.models import ConsentEvent, Contact, ContactList, ListMember, Suppression
from bot.html_pages import attr, page, para
from bot.i18n import t
from bot.webhooks import Refused, read_capped

MAX_FORM_BYTES = 4096
WORDING_VERSION = "preference-centre#1"


def list_wording(org: str, list_name: str) -> str:
    return t("I want to receive email from {org} on the list “{list}” again.", org=org, list=list_name)


def all_wording(org: str) -> str:
    return t("I want to receive campaign email from {org} again.", org=org)


@dataclass
class Preferences:
    email: str
    lists: list[str] = field(default_factory=list)  # on now
    left: list[str] = field(default_factory=list)  # left before, and not back
    unsubscribed: bool = False
    blocked: bool = False  # bounced, complained or erased: not something this page can undo
    contact_id: int | None = None


async def load(ctx: Context, target: Target) -> Preferences:
    prefs = Preferences(target.email)
    async with ctx.sessions() as session:
        reason = (
            await session.execute(
                select(Suppression.reason).where(Suppression.email_hash == email_hash(target.email))
            )
        ).scalar_one_or_none()
        prefs.unsubscribed = reason == "unsubscribed"
        prefs.blocked = reason is not None and not prefs.unsubscribed
        prefs.contact_id = (
            await session.execute(select(Contact.id).where(Contact.email == target.email))
        ).scalar_one_or_none()
        if prefs.contact_id is None:
            return prefs
        prefs.lists = sorted(
            (
                await session.execute(
                    select(ContactList.name)
                    .join(ListMember, ListMember.list_id == ContactList.id)
                    .where(ListMember.contact_id == prefs.contact_id)
                )
            ).scalars()
        )
        left = (
            await session.execute(
                select(ConsentEvent.list_name)
                .where(ConsentEvent.contact_id == prefs.contact_id, ConsentEvent.kind == "left")
                .distinct()
            )
        ).scalars()
        names = {n for n in left if n}
        if names:
            still = set(
                (await session.execute(select(ContactList.name).where(ContactList.name.in_(names)))).scalars()
            )
            prefs.left = sorted(still - set(prefs.lists))
    return prefs


async def leave(ctx: Context, target: Target, list_name: str) -> bool:
    async with ctx.sessions() as session, session.begin():
        contact_id = (
            await session.execute(select(Contact.id).where(Contact.email == target.email))
        ).scalar_one_or_none()
        lst = (
            await session.execute(select(ContactList).where(ContactList.named(list_name)))
        ).scalar_one_or_none()
        if contact_id is None or lst is None:
            return False
        result = await session.execute(
            delete(ListMember).where(ListMember.list_id == lst.id, ListMember.contact_id == contact_id)
        )
        if not result.rowcount:
            return False
        consent.record(
            session,
            email=target.email,
            kind="left",
            at=ctx.now(),
            contact_id=contact_id,
            list_name=lst.name,
            proof=consent.Proof(
                source=f"preference centre (campaign {target.campaign_id})", actor=target.email
            ),
        )
    return True


async def come_back(ctx: Context, target: Target, list_name: str | None) -> bool:
    """Fresh consent from the person's own link: to one list they left, or to campaign mail at all."""
    org = ctx.settings.org.name
    now = ctx.now()
    source = f"preference centre (campaign {target.campaign_id})"
    async with ctx.sessions() as session, session.begin():
        contact = (
            await session.execute(select(Contact).where(Contact.email == target.email))
        ).scalar_one_or_none()
        if list_name is None:
            lifted = await consent.lift_unsubscribe(
                session, target.email, at=now, actor=target.email, via="web"
            )
            if not lifted:
                return False
            if contact is not None:
                contact.consent_at, contact.consent_source, contact.consent_method = (
                    now,
                    source,
                    "preference centre",
                )
            consent.record(
                session,
                email=target.email,
                kind="resubscribed",
                at=now,
                contact_id=contact.id if contact else None,
                proof=consent.Proof(
                    source=source,
                    wording=all_wording(org),
                    wording_version=WORDING_VERSION,
                    actor=target.email,
                ),
            )
            return True
        lst = (
            await session.execute(select(ContactList).where(ContactList.named(list_name)))
        ).scalar_one_or_none()
        if contact is None or lst is None:
            return False
        # Only back to a list they left: a tampered form must not sign anyone up to another list.
        left = (
            await session.execute(
                select(ConsentEvent.id).where(
                    ConsentEvent.contact_id == contact.id,
                    ConsentEvent.kind == "left",
                    ConsentEvent.list_name == lst.name,
                )
            )
        ).first()
        if left is None:
            return False
        await consent.grant(
            session,
            email=target.email,
            lst=lst,
            kind="resubscribed",
            at=now,
            proof=consent.Proof(
                source=source,
                wording=list_wording(org, lst.name),
                wording_version=WORDING_VERSION,
                actor=target.email,
            ),
            method="preference centre",
        )
    return True


def render(ctx: Context, token: str, prefs: Preferences, status: str | None = None) -> Response:
    """The preference page: one small form per choice, each a POST, each with its own button."""
    org = ctx.settings.org.name
    action = f"/u/{attr(token)}/preferences"
    parts = []
    if status:
        parts.append(f"<p role='status'><strong>{attr(status)}</strong></p>")
    parts.append(para(t("Email from {org} to {email}.", org=org, email=masked(prefs.email))))

    def button(what: str, label: str, list_name: str | None = None) -> str:
        hidden = f"<input type='hidden' name='list' value='{attr(list_name)}'>" if list_name else ""
        return (
            f"<form method='post' action='{action}'><input type='hidden' name='action' value='{what}'>"
            f"{hidden}<button type='submit'>{attr(label)}</button></form>"
        )

    if prefs.blocked:
        parts.append(para(t("This address no longer receives campaign email from {org}.", org=org)))
        return page(t("Your email preferences"), "".join(parts))
    if prefs.unsubscribed:
        parts.append(para(t("You are unsubscribed from all campaign email from {org}.", org=org)))
        parts.append(
            "<fieldset><legend>"
            + attr(t("Come back"))
            + "</legend>"
            + para(all_wording(org))
            + button("back", t("Subscribe again"))
            + "</fieldset>"
        )
        return page(t("Your email preferences"), "".join(parts))
    if prefs.lists:
        parts.append("<fieldset><legend>" + attr(t("Your lists")) + "</legend>")
        for name in prefs.lists:
            parts.append(f"<p>{attr(name)}</p>" + button("leave", t("Leave “{list}”", list=name), name))
        parts.append("</fieldset>")
    if prefs.left:
        parts.append("<fieldset><legend>" + attr(t("Lists you left")) + "</legend>")
        for name in prefs.left:
            parts.append(
                para(list_wording(org, name)) + button("join", t("Come back to “{list}”", list=name), name)
            )
        parts.append("</fieldset>")
    question = attr(t("Stop receiving {org} campaign email at {email}?", org=org, email="\0"))
    parts.append(
        "<fieldset><legend>"
        + attr(t("Unsubscribe"))
        + "</legend><p>"
        + question.replace("\0", f"<b>{attr(masked(prefs.email))}</b>")
        + "</p>"
        f"<form method='post' action='/u/{attr(token)}'><input type='hidden' name='List-Unsubscribe' "
        f"value='One-Click'><button type='submit'>{attr(t('Unsubscribe from all'))}</button></form></fieldset>"
    )
    return page(t("Your email preferences"), "".join(parts))


async def handle_post(ctx: Context, request: Request, token: str, target: Target) -> Response:
    """A preference form's POST: leave, join (come back to a list), back (to campaign mail), all."""
    try:
        body = await read_capped(request, MAX_FORM_BYTES)
    except Refused as exc:
        return page(t("Request body too large."), para(t("Request body too large.")), exc.status)
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=10).items()}
    what, list_name = form.get("action", ""), form.get("list", "")[:200]
    status: str | None = None
    if what == "leave" and list_name:
        if await leave(ctx, target, list_name):
            status = t("You left “{list}”.", list=list_name)
    elif what == "join" and list_name:
        if await come_back(ctx, target, list_name):
            status = t("Welcome back to “{list}”.", list=list_name)
    elif what == "back":
        if await come_back(ctx, target, None):
            status = t("You receive campaign email from {org} again.", org=ctx.settings.org.name)
    elif what == "all":
        await unsubscribe(ctx, target, via="web", how="preference centre", detail="preference centre: all")
        status = t("Unsubscribed.")
    else:
        return page(t("Link not valid"), para(t("That choice is not one this page offers.")), 400)
    return render(ctx, token, await load(ctx, target), status or t("Nothing changed."))
