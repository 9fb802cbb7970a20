"""/automation new|edit|submit|pause|resume|status|report|list|delete: standing campaigns, approved once.

Approving is the campaign approval (`/approve automation:<name>`, or the card's buttons): each handler
here parses, checks who may do it, calls bot/campaigns/automations.py and phrases the answer.
"""

from __future__ import annotations

from bot.campaigns.automations import Automations, running_name, trigger_of
from bot.campaigns.cards import audience
from bot.campaigns.notes import show
from bot.campaigns.triggers import delay_text
from bot.commandline import Arg, Flag, Parsed, Spec, usage_of
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import PermissionDenied, UserError
from bot.events import Message
from bot.i18n import sentence_gap, t

NAME = Arg("name")
ON = Flag("on", help="what sends a message: confirmed:<list>, joined, inactive:<N>d, or “renewal_date - 14d”")
TEMPLATE = Flag("template", help="a template in campaigns.templates_dir (name.html, optional name.txt)")
SUBJECT = Flag("subject", help='the subject line; a template too, e.g. "Hello {{ first_name }}"')
DELAY = Flag("delay", help="wait this long after the trigger: 30m, 12h, 2d, 1w")
TO = Flag("to", help="the contact list or segment it mails (a confirmed automation: that list)")
WHERE = Flag("where", help='narrow the list with a segment expression, e.g. "country in (\\"DE\\")"')
ROUTE = Flag("route", help="the SMTP route it leaves by: default ([smtp]) or a [smtp.routes.<name>]")
CAP = Flag("cap", help="at most this many messages a day (default automations.daily_cap)")
EITHER, SENDERS = ("senders", "approvers"), ("senders",)


def _spec(sub: str, summary: str, *flags: Flag, roles: tuple[str, ...] = EITHER, name: bool = True) -> Spec:
    return Spec(("automation", sub), (NAME,) if name else (), flags, summary, roles)


NEW = _spec(
    "new",
    "Start a draft automation: a message sent whenever its trigger fires, once approved (senders).",
    Flag("on", help=ON.help, required=True),
    Flag("template", help=TEMPLATE.help, required=True),
    SUBJECT,
    DELAY,
    TO,
    WHERE,
    CAP,
    ROUTE,
    Flag("no-tracking", False, "no open pixel and no click redirects in its mail"),
    roles=SENDERS,
)
EDIT = _spec(
    "edit",
    "Change an automation; any edit voids its approval until it is approved again.",
    ON,
    TEMPLATE,
    SUBJECT,
    DELAY,
    TO,
    WHERE,
    CAP,
    ROUTE,
    Flag("tracking", help="on or off: open and click tracking in its mail"),
    roles=SENDERS,
)
SUBMIT = _spec("submit", "Ask the approvers to approve an automation.", roles=SENDERS)
PAUSE = _spec("pause", "Pause a running automation: triggers wait, nothing is sent.")
RESUME = _spec("resume", "Resume a paused automation (its approval is checked again).")
STATUS = _spec("status", "Where an automation stands: trigger, delay, cap, messages.")
REPORT = _spec("report", "Sent, bounces, unsubscribes, complaints, opens and clicks of an automation.")
LIST = _spec("list", "All automations and their states.", name=False)
DELETE = _spec(
    "delete",
    "Delete a draft or paused automation; what it sent stays in the history.",
    roles=SENDERS,
)
SPECS = (NEW, EDIT, SUBMIT, PAUSE, RESUME, STATUS, REPORT, LIST, DELETE)


class AutomationCommands:
    def __init__(self, ctx: Context, automations: Automations):
        self.ctx = ctx
        self.automations = automations

    def register(self, table: CommandTable) -> None:
        for spec in SPECS:
            table.command(spec, getattr(self, spec.path[-1]))

    async def new(self, req: Request, p: Parsed) -> Message:
        with usage_of(NEW):
            shown = await self.automations.create(
                p.arg("name"),
                on=p.flag("on") or "",
                template=p.flag("template") or "",
                subject=p.flag("subject"),
                delay=p.flag("delay"),
                to=p.flag("to"),
                where=p.flag("where"),
                cap=p.flag("cap"),
                tracking=not p.switch("no-tracking"),
                actor=req.email,
                via=req.via,
                route=p.flag("route"),
            )
        c, a = shown.campaign, shown.automation
        return Message(
            t(
                "Draft automation “{name}”: when {trigger}, after {delay}, template {template} to {audience}. "
                "Next: /automation submit {name}; nothing is sent before it is approved.",
                name=a.name,
                trigger=trigger_of(a).describe(),
                delay=delay_text(a.delay_s),
                template=c.template,
                audience=audience(c.audience_kind, c.audience_name, c.audience_where),
            )
        )

    async def edit(self, req: Request, p: Parsed) -> Message:
        names = ("on", "template", "subject", "delay", "to", "where", "cap", "tracking", "route")
        if not any(p.flag(n) for n in names):
            raise UserError(
                t(
                    "/automation edit needs at least one of {flags}.",
                    flags=", ".join("--" + n for n in names),
                ),
                EDIT.usage,
            )
        tracking = (p.flag("tracking") or "").lower()
        if tracking and tracking not in ("on", "off"):
            raise UserError(t("--tracking takes on or off, not “{value}”.", value=tracking[:20]), EDIT.usage)
        with usage_of(EDIT):
            shown, before = await self.automations.edit(
                p.arg("name"),
                on=p.flag("on"),
                template=p.flag("template"),
                subject=p.flag("subject"),
                delay=p.flag("delay"),
                to=p.flag("to"),
                where=p.flag("where"),
                cap=p.flag("cap"),
                tracking=(tracking == "on") if tracking else None,
                actor=req.email,
                via=req.via,
                admin=req.has("admins"),
                route=p.flag("route"),
            )
        name = shown.automation.name
        if before in ("draft", "rejected"):
            return Message(t("Updated automation “{name}”.", name=name))
        return Message(
            t(
                "Updated automation “{name}”. Its approval is void: nothing is sent until /automation submit "
                "{name} is approved again.",
                name=name,
            )
        )

    async def submit(self, req: Request, p: Parsed) -> Message:
        with usage_of(SUBMIT):
            done = await self.automations.submit(
                p.arg("name"), requester=req.email, via=req.via, admin=req.has("admins")
            )
        name = p.arg("name")
        approvers = ", ".join(a for a in self.ctx.settings.roles.approvers if a != req.email) or t(
            "nobody yet"
        )
        return Message(
            sentence_gap().join(
                [
                    t("Submitted automation “{name}” for approval.", name=name),
                    t("Approvers: {names}.", names=approvers),
                    t(
                        "An approver types /approve automation:{name} or presses the card's button.",
                        name=name,
                    ),
                    t("Its audience has 1 contact now.")
                    if done.review.audience.total == 1
                    else t("Its audience has {count} contacts now.", count=done.review.audience.total),
                ]
            )
        )

    def _may_act(self, req: Request, created_by: str, name: str) -> None:
        if created_by != req.email and not req.has("approvers"):
            raise PermissionDenied(
                t(
                    "Only {email}, approvers and admins can pause or resume “{name}”.",
                    email=created_by,
                    name=name,
                )
            )

    async def pause(self, req: Request, p: Parsed) -> Message:
        with usage_of(PAUSE):
            shown = await self.automations.get(p.arg("name"))
            self._may_act(req, shown.campaign.created_by, shown.automation.name)
            await self.automations.pause(p.arg("name"), actor=req.email, via=req.via)
        return Message(
            t(
                "Paused automation “{name}”: its triggers wait and nothing is sent.",
                name=shown.automation.name,
            )
        )

    async def resume(self, req: Request, p: Parsed) -> Message:
        with usage_of(RESUME):
            shown = await self.automations.get(p.arg("name"))
            self._may_act(req, shown.campaign.created_by, shown.automation.name)
            shown, gap = await self.automations.resume(p.arg("name"), actor=req.email, via=req.via)
        if gap is not None:
            return Message(
                t(
                    "“{name}” was not resumed and has failed: {reason}",
                    name=shown.automation.name,
                    reason=show(gap),
                )
            )
        return Message(t("Resumed automation “{name}”.", name=shown.automation.name))

    async def status(self, req: Request, p: Parsed) -> Message:
        with usage_of(STATUS):
            return Message(await self.automations.status(p.arg("name")))

    async def delete(self, req: Request, p: Parsed) -> Message:
        with usage_of(DELETE):
            sent = await self.automations.delete(
                p.arg("name"), actor=req.email, via=req.via, admin=req.has("admins")
            )
        name = p.arg("name")
        if sent == 1:
            return Message(
                t(
                    "Deleted automation “{name}”; its 1 message sent and its report stay in the history.",
                    name=name,
                )
            )
        return Message(
            t(
                "Deleted automation “{name}”; its {count} messages sent and its report stay in the history.",
                name=name,
                count=sent,
            )
        )

    async def report(self, req: Request, p: Parsed) -> Message:
        with usage_of(REPORT):
            return await self.automations.report(p.arg("name"))

    async def list(self, req: Request, p: Parsed) -> Message:
        shown = await self.automations.listing()
        if not shown:
            return Message(t("There are no automations yet. /automation new starts one."))
        lines = [t("1 automation:") if len(shown) == 1 else t("{count} automations:", count=len(shown))]
        lines += [
            "  "
            + t(
                "{name} — {state}, when {trigger}, by {email}",
                name=s.automation.name,
                state=running_name(s.campaign.state),
                trigger=trigger_of(s.automation).describe(),
                email=s.campaign.created_by,
            )
            for s in shown
        ]
        return Message("\n".join(lines))
