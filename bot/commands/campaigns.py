"""/campaign …, /approve, /reject — and the approval card's buttons, which share their code.

Each handler parses, checks who may do it, calls the campaign workflow (bot/campaigns/) and phrases
the answer.
"""

from __future__ import annotations

from bot.campaigns import service
from bot.campaigns.approval import Approvals
from bot.campaigns.cards import CampaignCards, created, preview_text, schedule_line
from bot.campaigns.drafts import Drafts
from bot.campaigns.notes import show
from bot.campaigns.report import refuse_unsent, report_message
from bot.campaigns.runs import CampaignRuns
from bot.commandline import Arg, Flag, Parsed, Spec, usage_of
from bot.context import Context
from bot.core import CommandTable, Request
from bot.db.models import Campaign
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Message
from bot.i18n import sentence_gap, t

NAME = Arg("name")
TO = Flag("to", help="a contact list, a segment or a group")
WHERE = Flag("where", help='narrow the list: a segment expression, e.g. "country in ("DE", "AT")"')
EDIT_WHERE = Flag(
    "where",
    help="narrow the audience further: AND-ed with its segment or earlier --where (with --to: start over)",
)
TEMPLATE = Flag("template", help="a template in campaigns.templates_dir (name.html, optional name.txt)")
SUBJECT = Flag("subject", help='the subject line; a template too, e.g. "Hello {{ first_name }}"')
NO_TRACKING = Flag("no-tracking", False, "no open pixel and no click redirects in this campaign's mail")
TRACKING = Flag("tracking", help="on or off: open and click tracking for this campaign")
ROUTE = Flag("route", help="the SMTP route it leaves by: default ([smtp]) or a [smtp.routes.<name>]")
AT = Flag("at", help="start time, ISO 8601 with an offset, e.g. 2026-12-01T09:00:00+01:00")
EITHER, SENDERS = ("senders", "approvers"), ("senders",)


def _campaign(
    sub: str, summary: str, *args: Arg, flags: tuple[Flag, ...] = (), roles: tuple[str, ...] = EITHER
) -> Spec:
    return Spec(("campaign", sub), args, flags, summary, roles)


REQUIRED = (Flag("to", help=TO.help, required=True), Flag("template", help=TEMPLATE.help, required=True))
NEW = _campaign(
    "new",
    "Start a draft campaign (senders).",
    NAME,
    flags=(*REQUIRED, WHERE, SUBJECT, NO_TRACKING, ROUTE),
    roles=SENDERS,
)
EDIT = _campaign(
    "edit",
    "Change a campaign; an edit voids any approval.",
    NAME,
    flags=(TO, EDIT_WHERE, TEMPLATE, SUBJECT, TRACKING, NO_TRACKING, ROUTE),
    roles=SENDERS,
)
PREVIEW = _campaign(
    "preview",
    "Render a campaign for one recipient and check the whole audience.",
    NAME,
    Arg("recipient", False),
)
TEST = _campaign(
    "test", "Send one test message to yourself or a colleague.", NAME, Arg("email"), roles=SENDERS
)
SUBMIT = _campaign(
    "submit",
    "Ask the approvers to approve a campaign; --at schedules its start.",
    NAME,
    flags=(AT,),
    roles=SENDERS,
)
REPORT = _campaign("report", "Sent, bounces, unsubscribes, complaints, opens and clicks, with a chart.", NAME)
STATUS = _campaign("status", "Where a campaign stands.", NAME)
PAUSE = _campaign("pause", "Pause a sending campaign.", NAME)
RESUME = _campaign("resume", "Resume a paused campaign.", NAME)
CANCEL = _campaign("cancel", "Cancel a campaign for good.", NAME)
LIST = _campaign("list", "All campaigns and their states.")
APPROVE = Spec(
    ("approve",), (Arg("campaign"),), (), "Approve a campaign (approvers; not your own).", ("approvers",)
)
REJECT = Spec(
    ("reject",),
    (Arg("campaign"), Arg("reason", rest=True)),
    (),
    "Reject a campaign, saying why (approvers).",
    ("approvers",),
)
SPECS = (NEW, EDIT, PREVIEW, TEST, SUBMIT, STATUS, PAUSE, RESUME, CANCEL, LIST, APPROVE, REJECT, REPORT)


def _is_id(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 18  # fits a BIGINT


def _may_act(req: Request, campaign: Campaign, verb: str) -> None:
    if campaign.created_by != req.email and not req.has("approvers"):
        values = {"email": campaign.created_by, "name": campaign.name}
        raise PermissionDenied(
            {
                "pause": t("Only {email}, approvers and admins can pause “{name}”.", **values),
                "resume": t("Only {email}, approvers and admins can resume “{name}”.", **values),
                "cancel": t("Only {email}, approvers and admins can cancel “{name}”.", **values),
            }[verb]
        )


class CampaignCommands:
    def __init__(
        self, ctx: Context, drafts: Drafts, approvals: Approvals, runs: CampaignRuns, cards: CampaignCards
    ):
        self.ctx = ctx
        self.drafts = drafts
        self.approvals = approvals
        self.runs = runs
        self.cards = cards

    def register(self, table: CommandTable) -> None:
        for spec in SPECS:  # each command's handler is the method named by its last word
            table.command(spec, getattr(self, spec.path[-1]))
        table.action("campaign.approve", self.approve_click)
        table.action("campaign.reject", self.reject_click)

    async def _load(self, name: str, spec: Spec) -> Campaign:
        async with self.ctx.sessions() as session:
            with usage_of(spec):
                return await service.get(session, name)

    async def new(self, req: Request, p: Parsed) -> Message:
        with usage_of(
            NEW
        ):  # --to and --template are required flags: the parser refused the command without them
            campaign = await self.drafts.create(
                p.arg("name"),
                to=p.flag("to") or "",
                where=p.flag("where"),
                template=p.flag("template") or "",
                subject=p.flag("subject"),
                tracking=not p.switch("no-tracking"),
                actor=req.email,
                via=req.via,
                route=p.flag("route"),
            )
        return Message(created(campaign) + await self.drafts.audience_note(campaign))

    async def edit(self, req: Request, p: Parsed) -> Message:
        off = p.switch("no-tracking")  # the same switch as /campaign new's: --tracking off
        if not off and not any(
            p.flag(f) for f in ("to", "where", "template", "subject", "tracking", "route")
        ):
            raise UserError(
                t(
                    "/campaign edit needs at least one of --to, --where, --template, --subject, --tracking, --route."
                ),
                EDIT.usage,
            )
        tracking = (p.flag("tracking") or "").lower()
        if tracking and tracking not in ("on", "off"):
            raise UserError(t("--tracking takes on or off, not “{value}”.", value=tracking[:20]), EDIT.usage)
        if off and tracking == "on":
            raise UserError(t("--no-tracking and --tracking on say opposite things: give one."), EDIT.usage)
        tracking = tracking or ("off" if off else "")
        with usage_of(EDIT):
            done = await self.drafts.edit(
                p.arg("name"),
                to=p.flag("to"),
                where=p.flag("where"),
                template=p.flag("template"),
                subject=p.flag("subject"),
                tracking=(tracking == "on") if tracking else None,
                actor=req.email,
                via=req.via,
                admin=req.has("admins"),
                route=p.flag("route"),
            )
        values = {"name": done.campaign.name, "fields": ", ".join(done.fields)}
        if done.before != "draft":
            return Message(
                t(
                    "Updated “{name}” ({fields}). The earlier approval request is void; submit it again.",
                    **values,
                )
            )
        return Message(t("Updated “{name}” ({fields}).", **values))

    async def preview(self, req: Request, p: Parsed) -> Message:
        with usage_of(PREVIEW):
            shown = await self.drafts.preview(p.arg("name"), p.opt("recipient"))
        return Message(preview_text(shown, self.cards.preview_url(shown.campaign)), ephemeral=True)

    async def test(self, req: Request, p: Parsed) -> Message:
        with usage_of(TEST):
            campaign, subject = await self.drafts.send_test(
                p.arg("name"), p.arg("email"), actor=req.email, via=req.via
            )
        return Message(
            t(
                "Sent a test of “{name}” to {email} (subject: {subject}).",
                name=campaign.name,
                email=p.arg("email").strip().lower(),
                subject=subject,
            )
        )

    async def submit(self, req: Request, p: Parsed) -> Message:
        with usage_of(SUBMIT):
            done = await self.approvals.submit(
                p.arg("name"), requester=req.email, via=req.via, admin=req.has("admins"), at=p.flag("at")
            )
        campaign, total = done.campaign, done.review.audience.total
        if done.posted:
            sentences = [t("Submitted “{name}” for approval to the approvers.", name=campaign.name)]
        else:
            sentences = [
                t(
                    "Submitted “{name}” for approval (no approvals channel is configured: approvers can type "
                    "/approve).",
                    name=campaign.name,
                )
            ]
        approvers = ", ".join(a for a in self.ctx.settings.roles.approvers if a != req.email) or t(
            "nobody yet"
        )
        sentences.append(t("Approvers: {names}.", names=approvers))
        sentences.append(
            t("It goes to 1 recipient once approved.")
            if total == 1
            else t("It goes to {count} recipients once approved.", count=total)
        )
        if campaign.scheduled_at:
            sentences.append(t("It starts at {time} once approved.", time=schedule_line(campaign)))
        return Message(sentence_gap().join(sentences))

    async def _decide(
        self, req: Request, ref: str, approve: bool, reason: str | None, spec: Spec, by_id: bool
    ) -> Message:
        if not req.has("approvers"):
            raise PermissionDenied(t("Only approvers can approve or reject campaigns."))
        with usage_of(spec):
            out = await self.approvals.decide(
                ref, approver=req.email, via=req.via, approve=approve, reason=reason, by_id=by_id
            )
        name, campaign = out.campaign.name, out.campaign
        if out.state == "rejected":
            who = campaign.submitted_by or campaign.created_by
            return Message(
                t("Rejected “{name}”. {email} can edit and submit it again.", name=name, email=who)
            )
        if out.state == "pending_approval":
            count, needed = len(out.approvers), out.needed
            return Message(
                t(
                    "Approved “{name}” ({count} of {needed} approvals); it needs {more} more before it is sent.",
                    name=name,
                    count=count,
                    needed=needed,
                    more=needed - count,
                )
            )
        if out.state == "scheduled":
            return Message(
                t(
                    "Approved “{name}”; it starts at {time}. /campaign status {name} shows it.",
                    name=name,
                    time=schedule_line(campaign),
                )
            )
        if campaign.kind == "automation":  # a standing campaign: live, sending as its trigger fires
            return Message(
                t(
                    "Approved automation “{name}”; it is live: it sends whenever its trigger fires. "
                    "/automation status {name} shows it.",
                    name=name.removeprefix(service.AUTOMATION_PREFIX),
                )
            )
        return Message(
            t("Approved “{name}”; sending has started. /campaign status {name} shows progress.", name=name)
        )

    async def approve(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("campaign"), True, None, APPROVE, False)

    async def reject(self, req: Request, p: Parsed) -> Message:
        reason = (p.opt("reason") or "").strip()
        if not reason:
            raise UserError(t("/reject needs a reason, so the sender knows what to change."), REJECT.usage)
        if len(reason) > 1000:
            raise UserError(t("Keep the reason under 1,000 characters."), REJECT.usage)
        return await self._decide(req, p.arg("campaign"), False, reason, REJECT, False)

    async def approve_click(self, req: Request, action: Action) -> Message | None:
        value = action.value.split(":", 1)[0]
        if not _is_id(value):
            raise UserError(t("That button's value is not a campaign."))
        return await self._decide(req, value, True, None, APPROVE, True)

    async def reject_click(self, req: Request, action: Action) -> Message | None:
        value, _, reason = action.value.partition(":")
        if not _is_id(value):
            raise UserError(t("That button's value is not a campaign."))
        return await self._decide(
            req, value, False, reason.strip()[:1000] or t("no reason given"), REJECT, True
        )

    async def status(self, req: Request, p: Parsed) -> Message:
        return Message(await self.cards.status(await self._load(p.arg("name"), STATUS)))

    async def list(self, req: Request, p: Parsed) -> Message:
        return Message(await self.cards.listing())

    async def report(self, req: Request, p: Parsed) -> Message:
        campaign = await self._load(p.arg("name"), REPORT)
        await refuse_unsent(self.ctx, campaign)  # a refusal: its sentence alone, no usage line
        return await report_message(self.ctx, campaign)

    async def pause(self, req: Request, p: Parsed) -> Message:
        campaign = await self._control(req, p, PAUSE, "pause")
        return Message(
            t("Paused “{name}”. /campaign resume {name} continues where it stopped.", name=campaign.name)
        )

    async def resume(self, req: Request, p: Parsed) -> Message:
        campaign = await self._control(req, p, RESUME, "resume")
        if campaign.state == "failed":
            return Message(
                t(
                    "“{name}” was not resumed and has failed: {reason}",
                    name=campaign.name,
                    reason=show(campaign.status_note),
                )
            )
        return Message(t("Resumed “{name}”.", name=campaign.name))

    async def cancel(self, req: Request, p: Parsed) -> Message:
        campaign = await self._control(req, p, CANCEL, "cancel")
        return Message(t("Cancelled “{name}”; no more messages will be sent.", name=campaign.name))

    async def _control(self, req: Request, p: Parsed, spec: Spec, verb: str) -> Campaign:
        campaign = await self._load(p.arg("name"), spec)
        _may_act(req, campaign, verb)
        with usage_of(spec):
            if verb == "pause":
                await self.runs.pause(campaign, actor=req.email, via=req.via)
            elif verb == "cancel":
                await self.runs.cancel(campaign, actor=req.email, via=req.via)
            else:
                gap = await self.runs.resume(campaign, actor=req.email, via=req.via)
                if gap is not None:
                    campaign.state, campaign.status_note = "failed", gap
        return campaign
