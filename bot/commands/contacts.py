"""/contacts add|show|find|remove|inactive|sunset, /lists (open|close|form), /sunset approve|reject.

Contacts from chat: a sales person records someone's consent with its wording; anyone sending
campaigns looks a contact up with its consent record; lists open for double opt-in signup.
"""

from __future__ import annotations

from bot.addresses import normalise
from bot.campaigns.sunset import Sunsets, check_window, find_inactive
from bot.commandline import Arg, Flag, Parsed, Spec, usage_of
from bot.contacts import directory
from bot.contacts.signup import Signups, find_list
from bot.contacts.web_routes import form_html
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Message
from bot.i18n import t

EMAIL, LIST_ARG = Arg("email"), Arg("list")
EITHER, SENDERS = ("senders", "approvers"), ("senders",)
LIST_FLAG = Flag("list", help="the contact list", required=True)

ADD = Spec(
    ("contacts", "add"),
    (EMAIL,),
    (
        LIST_FLAG,
        Flag("consent", help="the consent they gave you, in their words or the form's", required=True),
        Flag("name", help="their name"),
    ),
    "Add a contact whose consent you recorded; you are its source (senders).",
    SENDERS,
)
SHOW = Spec(
    ("contacts", "show"), (EMAIL,), (), "A contact: lists, consent record step by step, suppression.", EITHER
)
FIND = Spec(
    ("contacts", "find"), (Arg("text"),), (), "Contacts whose address or name contains the text.", EITHER
)
REMOVE = Spec(
    ("contacts", "remove"),
    (EMAIL,),
    (LIST_FLAG,),
    "Take a contact off a list at their word (senders).",
    SENDERS,
)
INACTIVE = Spec(
    ("contacts", "inactive"),
    (LIST_ARG,),
    (Flag("days", help="no open or click for this many days (default signup.sunset_days)"),),
    "Contacts of a list with no open or click for a while (the sunset policy).",
    EITHER,
)
SUNSET = Spec(
    ("contacts", "sunset"),
    (LIST_ARG,),
    (
        Flag(
            "after",
            help="the re-permission automation (--on inactive:<N>d) they did not answer",
            required=True,
        ),
        Flag("window", help="days they had to answer (default 14d)"),
    ),
    "Ask approvers to suppress those who did not answer the re-permission message (senders).",
    SENDERS,
)
LISTS = Spec(("lists",), (), (), "Contact lists: members, consent, signup.", EITHER)
OPEN = Spec(
    ("lists", "open"),
    (Arg("name"),),
    (
        Flag(
            "wording",
            help="the consent text the signup page shows (a new text is a new version)",
            required=True,
        ),
    ),
    "Open a list's double opt-in signup page /s/<list> (admins).",
    ("admins",),
)
CLOSE = Spec(("lists", "close"), (Arg("name"),), (), "Close a list's signup page (admins).", ("admins",))
FORM = Spec(
    ("lists", "form"), (Arg("name"),), (), "The HTML form a website embeds to sign people up.", EITHER
)
APPROVE = Spec(
    ("sunset", "approve"),
    (Arg("id"),),
    (),
    "Approve a held sunset: suppress them (approvers).",
    ("approvers",),
)
REJECT = Spec(
    ("sunset", "reject"),
    (Arg("id"),),
    (),
    "Reject a held sunset: nobody is suppressed (approvers).",
    ("approvers",),
)
SPECS = (ADD, SHOW, FIND, REMOVE, INACTIVE, SUNSET, LISTS, OPEN, CLOSE, FORM, APPROVE, REJECT)


class ContactCommands:
    def __init__(self, ctx: Context, signups: Signups, sunsets: Sunsets):
        self.ctx = ctx
        self.signups = signups
        self.sunsets = sunsets

    def register(self, table: CommandTable) -> None:
        for spec, handler in (
            (ADD, self.add),
            (SHOW, self.show),
            (FIND, self.find),
            (REMOVE, self.remove),
            (INACTIVE, self.inactive),
            (SUNSET, self.sunset),
            (LISTS, self.lists),
            (OPEN, self.open),
            (CLOSE, self.close),
            (FORM, self.form),
            (APPROVE, self.approve),
            (REJECT, self.reject),
        ):
            table.command(spec, handler)
        table.action("sunset.approve", self.approve_click)
        table.action("sunset.reject", self.reject_click)

    async def add(self, req: Request, p: Parsed) -> Message:
        with usage_of(ADD):
            contact, list_name = await self.signups.add_from_chat(
                p.arg("email"),
                p.flag("list") or "",
                p.flag("consent") or "",
                actor=req.email,
                via=req.via,
                name=p.flag("name"),
            )
        return Message(
            t(
                "Added {email} to “{list}” with the consent you recorded; you are its source.",
                email=contact.email,
                list=list_name,
            )
        )

    async def show(self, req: Request, p: Parsed) -> Message:
        with usage_of(SHOW):
            view = await directory.show(self.ctx, p.arg("email"))
        c = view.contact
        lines = [t("{email} — {name}", email=view.email, name=(c.name if c and c.name else t("no name")))]
        lines.append("  " + t("lists: {names}", names=", ".join(view.lists) or t("none")))
        if view.pending:
            lines.append("  " + t("signup waiting for confirmation: {names}", names=", ".join(view.pending)))
        if c is not None and c.consent_at:
            lines.append(
                "  "
                + t(
                    "consent {time} UTC — {source}",
                    time=f"{c.consent_at:%Y-%m-%d %H:%M}",
                    source=c.consent_source or "—",
                )
            )
        if view.suppression:
            lines.append("  " + t("suppressed: {reason}", reason=view.suppression.replace("_", " ")))
        if view.history:
            lines.append("  " + t("consent record:"))
        for e in view.history[-30:]:
            extra = [x for x in (e.list_name, e.source, e.wording_version) if x]
            if e.ip:
                extra.append(f"IP {e.ip}")
            lines.append(f"    {e.at:%Y-%m-%d %H:%M} {e.kind}" + (f" — {'; '.join(extra)}" if extra else ""))
            if e.wording:
                lines.append("      “" + " ".join(e.wording.split())[:300] + "”")
        attrs = (c.attributes or {}) if c else {}
        if attrs:
            lines.append(
                "  "
                + t(
                    "attributes: {items}", items=", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))[:600]
                )
            )
        return Message("\n".join(lines), ephemeral=True)

    async def find(self, req: Request, p: Parsed) -> Message:
        with usage_of(FIND):
            found = await directory.find(self.ctx, p.arg("text"))
        if not found:
            return Message(t("No contact matches “{text}”.", text=p.arg("text")[:60]), ephemeral=True)
        lines = [
            t("1 contact matches:")
            if len(found) == 1
            else t("{count} contacts match (at most 20 shown):", count=len(found))
        ]
        lines += [
            f"  {c.email}"
            + (f" — {c.name}" if c.name else "")
            + ("" if c.consent_at else " " + t("(no consent)"))
            for c in found
        ]
        return Message("\n".join(lines), ephemeral=True)

    async def remove(self, req: Request, p: Parsed) -> Message:
        with usage_of(REMOVE):
            await directory.remove(
                self.ctx, p.arg("email"), p.flag("list") or "", actor=req.email, via=req.via
            )
        return Message(
            t(
                "Took {email} off “{list}”; the consent record says you did.",
                email=normalise(p.arg("email")),
                list=p.flag("list"),
            )
        )

    async def inactive(self, req: Request, p: Parsed) -> Message:
        days = p.flag("days")
        if days is not None and (
            not days.removesuffix("d").isdigit() or not 1 <= int(days.removesuffix("d")) <= 3650
        ):
            raise UserError(t("--days takes 1 to 3650 days."), INACTIVE.usage)
        with usage_of(INACTIVE):
            found = await find_inactive(
                self.ctx, p.arg("list"), int(days.removesuffix("d")) if days else None
            )
        text = (
            t(
                "1 contact of “{list}” has not opened or clicked for {days} days",
                list=found.list_name,
                days=found.days,
            )
            if found.count == 1
            else t(
                "{count} contacts of “{list}” have not opened or clicked for {days} days",
                count=found.count,
                list=found.list_name,
                days=found.days,
            )
        )
        if found.sample:
            text += t(", e.g. {sample}.", sample=", ".join(found.sample))
        else:
            text += "."
        return Message(
            text
            + "\n"
            + t(
                "Opens are inflated by mail-privacy proxies, so some inactive people look active. A re-permission "
                "automation (--on inactive:<N>d), then /contacts sunset, cleans the list — each after an approval."
            )
        )

    async def sunset(self, req: Request, p: Parsed) -> Message:
        with usage_of(SUNSET):
            held = await self.sunsets.request(
                p.arg("list"),
                p.flag("after") or "",
                check_window(p.flag("window")),
                actor=req.email,
                via=req.via,
            )
        count = len(held.payload.get("ids", []))
        if count == 1:
            return Message(
                t(
                    "Sunset #{id} waits for an approver: 1 contact of “{list}” would be suppressed.",
                    id=held.id,
                    list=held.list_name,
                )
            )
        return Message(
            t(
                "Sunset #{id} waits for an approver: {count} contacts of “{list}” would be suppressed.",
                id=held.id,
                count=count,
                list=held.list_name,
            )
        )

    async def lists(self, req: Request, p: Parsed) -> Message:
        rows = await directory.lists(self.ctx)
        if not rows:
            return Message(
                t("There are no contact lists yet. postroom contacts import or /lists open makes one.")
            )
        lines = [t("1 contact list:") if len(rows) == 1 else t("{count} contact lists:", count=len(rows))]
        for r in rows:
            signup = (
                t(
                    "signup open at {url} (wording v{version})",
                    url=f"{self.ctx.settings.web.base_url}/s/{r.name}",
                    version=r.wording_version,
                )
                if r.signup_open
                else t("signup closed")
            )
            lines.append(
                "  "
                + t(
                    "{name} — {members}, {consented} with consent; {signup}",
                    name=r.name,
                    members=t("1 member") if r.members == 1 else t("{count} members", count=r.members),
                    consented=r.consented,
                    signup=signup,
                )
            )
        return Message("\n".join(lines))

    async def open(self, req: Request, p: Parsed) -> Message:
        before = await find_list(self.ctx, p.arg("name"))
        with usage_of(OPEN):
            lst = await self.signups.open_list(
                p.arg("name"), p.flag("wording") or "", actor=req.email, via=req.via
            )
        url = f"{self.ctx.settings.web.base_url}/s/{lst.name}"
        if before is not None and before.wording_version and before.wording_version != lst.wording_version:
            # Forms embedded earlier keep showing the old wording (and record it): they must be replaced.
            return Message(
                t(
                    "The signup page for “{name}” is open at {url} with the new consent wording v{version}. "
                    "Forms embedded on websites still show v{old} and record v{old}: paste the new form from "
                    "/lists form {name} in their place.",
                    name=lst.name,
                    url=url,
                    version=lst.wording_version,
                    old=before.wording_version,
                )
            )
        return Message(
            t(
                "The signup page for “{name}” is open at {url} (consent wording v{version}). /lists form {name} gives "
                "the form to embed.",
                name=lst.name,
                url=url,
                version=lst.wording_version,
            )
        )

    async def close(self, req: Request, p: Parsed) -> Message:
        with usage_of(CLOSE):
            closed = await self.signups.close_list(p.arg("name"), actor=req.email, via=req.via)
        if not closed:
            raise UserError(t("“{name}” has no open signup.", name=p.arg("name")[:60]), CLOSE.usage)
        return Message(t("Closed the signup page of “{name}”.", name=p.arg("name")))

    async def form(self, req: Request, p: Parsed) -> Message:
        from bot.contacts.signup import find_list

        lst = await find_list(self.ctx, p.arg("name"))
        if lst is None or not lst.signup_open:
            raise UserError(t("“{name}” has no open signup.", name=p.arg("name")[:60]), FORM.usage)
        return Message(
            t("Paste this into your website's page:") + "\n" + form_html(self.ctx, lst, hosted=False)
        )

    async def _decide(self, req: Request, ref: str, approve: bool, spec: Spec) -> Message:
        if not req.has("approvers"):
            raise PermissionDenied(t("Only approvers can approve or reject a sunset."))
        if not (ref.isascii() and ref.isdigit() and len(ref) <= 18):
            raise UserError(t("“{text}” is not a sunset number.", text=ref[:40]), spec.usage)
        with usage_of(spec):
            held, count = await self.sunsets.decide(
                int(ref), approver=req.email, via=req.via, approve=approve
            )
        if approve:
            if count == 1:
                return Message(t("Approved sunset #{id}: 1 contact suppressed.", id=held.id))
            return Message(t("Approved sunset #{id}: {count} contacts suppressed.", id=held.id, count=count))
        return Message(t("Rejected sunset #{id}: nobody was suppressed.", id=held.id))

    async def approve(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), True, APPROVE)

    async def reject(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), False, REJECT)

    async def approve_click(self, req: Request, action: Action) -> Message | None:
        return await self._decide(req, action.value, True, APPROVE)

    async def reject_click(self, req: Request, action: Action) -> Message | None:
        return await self._decide(req, action.value, False, REJECT)
