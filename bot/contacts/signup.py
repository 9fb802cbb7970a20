"""Double opt-in: a signup (the hosted page, an embedded form, the JSON endpoint) is a pending request
until the person opens the link in the confirmation mail and confirms; only then are they a contact on
the list, with the consent record of each step (bot/consent.py). A pending signup is never a campaign
recipient, and it expires (`signup.confirm_ttl_hours`, job `contacts.expire-signups`).

Abuse resistance without third parties: a honeypot field, per-IP and per-address limits and a cap on
confirmation mails per address (counted in the database, so every process shares them), and one answer
for every well-formed request — nobody learns whether an address is on a list. Everything that depends on
the address's standing (a member, suppressed, a company address, over a limit), the database writes and
the confirmation mail happen in the background after the answer, so its timing does not tell either.

The confirmation link (`sc` token) names the signup's id and the request it was made for (the request's
creation time, to the microsecond), never the address, and expires with it. One signup row per list and
address is reused by a later request, so a link is bound to its request: a newer request replaces every
earlier link, and a link confirms once — opened again it says so, and says "you are on the list" only
while that is true (after leaving or unsubscribing it is not).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, consent, values
from bot.addresses import domain_of, email_hash, normalise
from bot.background import Background
from bot.contacts import rate_limits
from bot.contacts.mx import domain_receives_mail
from bot.context import Context
from bot.db.models import AuditEntry, Contact, ContactList, ListMember, Signup, Suppression
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.i18n import t
from bot.links import row_id
from bot.mail.compose import build_message, new_message_id
from bot.webhooks import Refused

log = logging.getLogger(__name__)
EXPIRE_JOB = "contacts.expire-signups"
TOKEN_KIND = "sc"
SILENT_REASONS = ("erased", "complaint", "hard_bounce")  # no confirmation mail for these, and no tell
MAX_WORDING = 2000

ListHook = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class SignupForm:
    list_name: str
    email: str
    name: str = ""
    honeypot: str = ""
    source: str = "page"  # page | form | api
    page_url: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    trusted: bool = False  # a caller with signup.api_key (a CRM): not held by the per-IP limit
    wording_version: str | None = None  # the version the form showed (its hidden field); None: the newest


@dataclass(frozen=True)
class Pending:
    """A confirmation link as its page shows it."""

    signup_id: int
    list_name: str
    email: str
    state: str  # pending | confirmed (and on the list now) | used | replaced | expired
    requested_at: datetime | None = None


def accepted_sentence() -> str:
    return t(
        "Thank you. If this address can receive mail, a confirmation link is on its way: open it to complete "
        "your signup."
    )


def check_wording(text: str) -> str:
    wording = " ".join(text.split())
    if len(wording) < 10:
        raise UserError(t("The consent wording must say what people agree to, in at least 10 characters."))
    if len(wording) > MAX_WORDING:
        raise UserError(t("Keep the consent wording under 2,000 characters."))
    if any(not c.isprintable() for c in wording):
        raise UserError(
            t("The consent wording can't contain control characters or text-direction overrides.")
        )
    return wording


def clean_name(text: str) -> str | None:
    sentence = values.problem(text, t("The name"))  # names the direction override, as chat does
    if sentence is not None:
        raise UserError(sentence)
    name = " ".join(text.split())
    if len(name) > 200 or any(not c.isprintable() for c in name):
        raise UserError(t("A name is at most 200 printable characters."))
    return name or None


async def find_list(ctx: Context, name: str) -> ContactList | None:
    if not name or len(name) > 200:
        return None
    async with ctx.sessions() as session:
        return (
            await session.execute(select(ContactList).where(ContactList.named(name)))
        ).scalar_one_or_none()


class Signups:
    def __init__(self, ctx: Context, on_confirmed: ListHook | None = None):
        self.ctx = ctx
        self.on_confirmed = on_confirmed
        self.background = Background("signups", log)

    def jobs(self) -> dict[str, Callable[..., Awaitable[object]]]:
        return {EXPIRE_JOB: self.expire}

    # -- lists open for signup -----------------------------------------------------------------
    async def open_list(self, name: str, wording: str, *, actor: str, via: str) -> ContactList:
        """Open (or re-word) a list's public signup; a new wording is a new version."""
        from bot.contacts.importer import check_list_name

        check_list_name(name)
        text = check_wording(wording)
        async with self.ctx.sessions() as session, session.begin():
            lst = (
                await session.execute(select(ContactList).where(ContactList.named(name)))
            ).scalar_one_or_none()
            if lst is None:
                lst = ContactList(name=name, wording_version=0)
                session.add(lst)
                await session.flush()
            if lst.consent_wording != text:
                lst.wording_version = (lst.wording_version or 0) + 1
                lst.consent_wording = text
            lst.signup_open = True
            audit.record(
                session,
                actor=actor,
                via=via,
                action="list.signup-open",
                subject=f"list:{name}",
                after={"wording_version": lst.wording_version},
                detail=text,
            )
        return lst

    async def close_list(self, name: str, *, actor: str, via: str) -> bool:
        async with self.ctx.sessions() as session, session.begin():
            result = await session.execute(
                update(ContactList)
                .where(ContactList.named(name), ContactList.signup_open.is_(True))
                .values(signup_open=False)
            )
            if result.rowcount:
                audit.record(
                    session, actor=actor, via=via, action="list.signup-close", subject=f"list:{name}"
                )
            return bool(result.rowcount)

    # -- a signup -----------------------------------------------------------------------------
    async def request(self, form: SignupForm) -> None:
        """Take a signup; returns quietly whether or not a mail goes out (say `accepted_sentence()`).
        Raises Refused (status, sentence) for what the person must fix or wait for."""
        settings = self.ctx.settings.signup
        lst = await find_list(self.ctx, form.list_name)
        if lst is None or not lst.signup_open:
            raise Refused(
                404,
                t("There is no signup for a list named “{name}”.", name=values.visible(form.list_name[:60])),
            )
        if (
            form.ip
            and not form.trusted
            and await rate_limits.hit(self.ctx, f"signup-ip:{network_of(form.ip)}", 3600)
            > settings.per_ip_per_hour
        ):
            raise Refused(
                429,
                t("Too many signups came from your network in the last hour; try again later."),
                retry_after=rate_limits.seconds_left(self.ctx.now(), 3600),
            )
        if form.honeypot.strip():
            log.info("signup to %s: honeypot filled, nothing sent", lst.name)
            return
        try:
            email = normalise(form.email)
            name = clean_name(form.name)
        except UserError as exc:
            raise Refused(400, exc.sentence) from None
        if settings.mx_check and not await domain_receives_mail(settings, domain_of(email)):
            raise Refused(
                400, t("{domain} does not receive email; check the address.", domain=domain_of(email))
            )
        version, wording = await self._wording_shown(lst, form)
        now = self.ctx.now()
        proof = consent.Proof(
            source=_source(form),
            wording=wording,
            wording_version=f"{lst.name}#{version}",
            ip=form.ip if settings.record_ip else None,
            user_agent=form.user_agent if settings.record_user_agent else None,
            actor=email,
        )
        # Whether the address is on the list already, suppressed, a company address or over its limits is
        # decided in the background: every well-formed request returns after the same work (the checks
        # above), so the answer's timing tells nobody whether an address is a member.
        self.background.spawn(self._take(lst, email, name, proof, now), name=f"signup-{lst.id}")

    async def _wording_shown(self, lst: ContactList, form: SignupForm) -> tuple[int, str | None]:
        """The wording version the form showed and its exact text, from the list's kept history (the
        audit of every /lists open). A version the list never had is refused: consent to a wording nobody
        can show is no demonstrable consent."""
        given = (form.wording_version or "").strip()
        if not given or given == str(lst.wording_version):
            return lst.wording_version, lst.consent_wording
        if given.isdigit() and 0 < int(given) < lst.wording_version:
            async with self.ctx.sessions() as session:
                for after, detail in (
                    await session.execute(
                        select(AuditEntry.after, AuditEntry.detail)
                        .where(
                            AuditEntry.action == "list.signup-open",
                            func.lower(AuditEntry.subject) == f"list:{lst.name}".lower(),
                        )
                        .order_by(AuditEntry.id.desc())
                    )
                ).all():
                    if (after or {}).get("wording_version") == int(given) and detail:
                        return int(given), detail
        raise Refused(
            400,
            t(
                "This signup form is out of date: the consent wording it showed is not known here. Sign up on "
                "{url} instead.",
                url=f"{self.ctx.settings.web.base_url}/s/{lst.name}",
            ),
        )

    async def _take(
        self, lst: ContactList, email: str, name: str | None, proof: consent.Proof, now: datetime
    ) -> None:
        """The signup's work after the answer: the pending row, the consent event and the mail — or
        nothing, quietly, for a member, a suppressed or company address, or one over its limits."""
        settings = self.ctx.settings.signup
        hashed = email_hash(email)
        if self.ctx.settings.is_internal(email):
            # A company address is never an external list's contact (the rule /contacts add and imports
            # follow); the answer stays the neutral one, so the form tells nobody which domains are ours.
            log.info("signup to %s: a company address, nothing sent", lst.name)
            return
        if await rate_limits.hit(self.ctx, f"signup-addr:{hashed}", 86400) > settings.per_address_per_day:
            log.info("signup to %s: address over its daily limit, nothing sent", lst.name)
            return
        async with self.ctx.sessions() as session, session.begin():
            reason = (
                await session.execute(select(Suppression.reason).where(Suppression.email_hash == hashed))
            ).scalar_one_or_none()
            if reason in SILENT_REASONS:
                return
            member = (
                await session.execute(
                    select(Contact.id)
                    .join(ListMember, ListMember.contact_id == Contact.id)
                    .where(
                        ListMember.list_id == lst.id, Contact.email == email, Contact.consent_at.is_not(None)
                    )
                )
            ).first()
            if member is not None and reason is None:
                return  # already on the list: nothing to confirm, and the answer is the same
            values = {
                "state": "pending",
                "created_at": now,
                "expires_at": now + timedelta(hours=settings.confirm_ttl_hours),
                "confirmed_at": None,
                "name": name,
                "source": proof.source,
                "wording": proof.wording,
                "wording_version": proof.wording_version,
                "ip": proof.ip,
                "user_agent": proof.user_agent,
            }
            await insert_ignore(
                session,
                Signup,
                [{"list_id": lst.id, "email": email, "mails_sent": 0, **values}],
                ["list_id", "email"],
            )
            await session.execute(
                update(Signup).where(Signup.list_id == lst.id, Signup.email == email).values(**values)
            )
            signup_id = (
                await session.execute(
                    select(Signup.id).where(Signup.list_id == lst.id, Signup.email == email)
                )
            ).scalar_one()
            consent.record(session, email=email, kind="requested", at=now, proof=proof, list_name=lst.name)
        if (
            await rate_limits.hit(self.ctx, f"signup-mail:{hashed}", 86400)
            > settings.mails_per_address_per_day
        ):
            log.info("signup to %s: confirmation mails to this address capped for today", lst.name)
            return
        await self._mail(signup_id, now, email, name, lst.name)

    async def _mail(
        self, signup_id: int, requested_at: datetime, email: str, name: str | None, list_name: str
    ) -> None:
        ctx = self.ctx
        c, org = ctx.settings.campaigns, ctx.settings.org
        hours = ctx.settings.signup.confirm_ttl_hours
        token = ctx.signer.sign_expiring(
            TOKEN_KIND, str(signup_id), request_stamp(requested_at), ttl_s=int(hours * 3600)
        )
        url = f"{ctx.settings.web.base_url}/s/confirm/{token}"
        text = "\n\n".join(
            [
                t(
                    "Someone, hopefully you, asked to receive email from {org} on the list “{list}” at this "
                    "address.",
                    org=org.name,
                    list=list_name,
                ),
                t("To confirm, open this link and press the button on the page:") + f"\n{url}",
                t(
                    "If it was not you, ignore this message: nothing happens unless the link is confirmed, "
                    "and it expires in {hours} hours.",
                    hours=f"{hours:g}",
                ),
                f"{org.name}, {org.postal_address}",
            ]
        )
        data = build_message(
            from_name=c.from_name,
            from_address=c.from_address,
            to_name=name,
            to_address=email,
            subject=t("Confirm your subscription to {list}", list=list_name),
            text=text,
            html=None,
            message_id=new_message_id(c.from_address.rsplit("@", 1)[-1]),
            headers=[("Auto-Submitted", "auto-generated"), ("X-Postroom-Signup", str(signup_id))],
        )
        transport = ctx.new_transport(connections=1)
        try:
            outcome = await transport.send(c.from_address, email, data)
        finally:
            await transport.close()
        if not outcome.ok:
            log.warning("confirmation mail for signup %s not taken: %s", signup_id, outcome.detail)
            return
        async with ctx.sessions() as session, session.begin():
            await session.execute(
                update(Signup).where(Signup.id == signup_id).values(mails_sent=Signup.mails_sent + 1)
            )

    # -- the confirmation link ----------------------------------------------------------------
    def _link(self, token: str) -> tuple[int, str] | None:
        parts = self.ctx.signer.verify_expiring(token, TOKEN_KIND)
        if (
            not parts
            or len(parts) != 2
            or not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts)
        ):
            return None
        signup_id = row_id(parts[0])
        return None if signup_id is None else (signup_id, parts[1])

    async def pending(self, token: str) -> Pending | None:
        """What a confirmation link stands for, or None for a link that is not one of ours."""
        link = self._link(token)
        if link is None:
            return None
        signup_id, stamp = link
        async with self.ctx.sessions() as session:
            row = (
                await session.execute(
                    select(
                        Signup.id,
                        Signup.list_id,
                        Signup.email,
                        Signup.state,
                        Signup.created_at,
                        Signup.expires_at,
                        ContactList.name,
                    )
                    .join(ContactList, ContactList.id == Signup.list_id)
                    .where(Signup.id == signup_id)
                )
            ).first()
            if row is None:
                return None
            if request_stamp(row.created_at) != stamp:
                state = "replaced"  # a newer request for this list and address: only its link counts
            elif row.state == "pending":
                state = "expired" if row.expires_at <= self.ctx.now() else "pending"
            elif row.state == "confirmed":
                state = "confirmed" if await _on_list(session, row.list_id, row.email) else "used"
            else:
                state = row.state
        return Pending(row.id, row.name, row.email, state, row.created_at)

    async def confirm(self, token: str, *, ip: str | None, user_agent: str | None) -> Pending | None:
        """Confirm a pending signup: the person is on the list from now, with the consent record."""
        found = await self.pending(token)
        if found is None or found.state != "pending":
            return found
        settings = self.ctx.settings.signup
        now = self.ctx.now()
        async with self.ctx.sessions() as session, session.begin():
            won = await session.execute(
                update(Signup)
                .where(
                    Signup.id == found.signup_id,
                    Signup.created_at == found.requested_at,  # still the request this link was made for
                    Signup.state == "pending",
                    Signup.expires_at > now,
                )
                .values(state="confirmed", confirmed_at=now)
            )
            if won.rowcount != 1:
                return await self.pending(token)
            signup = await session.get(Signup, found.signup_id)
            lst = await session.get(ContactList, signup.list_id) if signup else None
            if signup is None or lst is None:
                return None
            proof = consent.Proof(
                source=signup.source,
                wording=signup.wording,
                wording_version=signup.wording_version,
                ip=ip if settings.record_ip else None,
                user_agent=user_agent if settings.record_user_agent else None,
                actor=signup.email,
            )
            await consent.grant(
                session,
                email=signup.email,
                lst=lst,
                kind="confirmed",
                at=now,
                proof=proof,
                name=signup.name,
                method="double opt-in",
            )
            audit.record(
                session,
                actor=signup.email,
                via="signup",
                action="contact.confirm",
                subject=f"list:{lst.name}",
                detail=f"signup {signup.id}, wording {signup.wording_version}",
            )
        if self.on_confirmed is not None:
            try:
                await self.on_confirmed(found.list_name)
            except Exception:  # the welcome is the automation's business; the consent is recorded
                log.exception("after confirming signup %s", found.signup_id)
        return Pending(found.signup_id, found.list_name, found.email, "confirmed")

    async def expire(self) -> int:
        """Scheduled job: pending signups past their time expire (and old rate counters go)."""
        async with self.ctx.sessions() as session, session.begin():
            result = await session.execute(
                update(Signup)
                .where(Signup.state == "pending", Signup.expires_at <= self.ctx.now())
                .values(state="expired", ip=None, user_agent=None)
            )
        await rate_limits.forget_before(self.ctx)
        return int(result.rowcount or 0)

    # -- from chat ----------------------------------------------------------------------------
    async def add_from_chat(
        self, email: str, list_name: str, wording: str, *, actor: str, via: str, name: str | None = None
    ) -> tuple[Contact, str]:
        """A sales person records someone's consent: the contact is on the list, the source is them.
        Returns the contact and the list's name as it is spelt."""
        text = check_wording(wording)
        if name is not None:  # an override (U+202E) would make the name read backwards in every To:
            name = " ".join(values.check_text(name, t("The name"), values.MAX_NAME).split()) or None
        address = normalise(email)
        if self.ctx.settings.is_internal(address):
            raise UserError(
                t("{email} is a company address: colleagues get internal mail through groups.", email=address)
            )
        now = self.ctx.now()
        async with self.ctx.sessions() as session, session.begin():
            lst = (
                await session.execute(select(ContactList).where(ContactList.named(list_name)))
            ).scalar_one_or_none()
            if lst is None:
                raise UserError(
                    t("There is no contact list “{name}”. /lists shows them.", name=list_name[:60])
                )
            sup = (
                await session.execute(
                    select(Suppression.reason, Suppression.created_at).where(
                        Suppression.email_hash == email_hash(address)
                    )
                )
            ).first()
            if sup is not None:
                raise UserError(
                    t(
                        "{email} is suppressed ({reason}, {date}); only they can come back, through the signup "
                        "page or the preferences link in our mail.",
                        email=address,
                        reason=sup.reason.replace("_", " "),
                        date=f"{sup.created_at:%Y-%m-%d}",
                    )
                )
            left_at = await consent.own_leave(session, address, lst.name)
            if left_at is not None:
                raise UserError(
                    t(
                        "{email} left “{list}” themselves on {date}; only their own fresh signup brings them "
                        "back.",
                        email=address,
                        list=lst.name,
                        date=f"{left_at:%Y-%m-%d}",
                    )
                )
            proof = consent.Proof(source=f"chat:{actor} via {via}", wording=text, actor=actor)
            contact = await consent.grant(
                session, email=address, lst=lst, kind="added", at=now, proof=proof, name=name, method="chat"
            )
            audit.record(
                session,
                actor=actor,
                via=via,
                action="contact.add",
                subject=f"contact:{address}",
                after={"list": lst.name},
                detail=text,
            )
            list_name = lst.name  # as the list is spelt, whatever case was typed
        if self.on_confirmed is not None:
            try:
                await self.on_confirmed(list_name)
            except Exception:
                log.exception("after adding %s to %s", address, list_name)
        return contact, list_name


def network_of(ip: str) -> str:
    """What the per-IP limit counts: an IPv4 address, or an IPv6 address's /64 — one subscriber's
    network, where every address is theirs to use."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def request_stamp(at: datetime) -> str:
    """A request's creation time as the link carries it: microseconds since 1970 (both databases keep them)."""
    return str(round(at.timestamp() * 1_000_000))


async def _on_list(session: AsyncSession, list_id: int, email: str) -> bool:
    """Whether the address is on the list now: a member with consent and not suppressed."""
    member = (
        await session.execute(
            select(Contact.id)
            .join(ListMember, ListMember.contact_id == Contact.id)
            .where(ListMember.list_id == list_id, Contact.email == email, Contact.consent_at.is_not(None))
        )
    ).first()
    if member is None:
        return False
    suppressed = (
        await session.execute(select(Suppression.id).where(Suppression.email_hash == email_hash(email)))
    ).first()
    return suppressed is None


def _source(form: SignupForm) -> str:
    where = {"page": "hosted signup page", "form": "embedded form", "api": "signup API"}.get(
        form.source, form.source
    )
    return f"{where}" + (f" on {form.page_url[:300]}" if form.page_url else "")
