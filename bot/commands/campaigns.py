"""/campaign …, /approve, /reject — and the approval card's buttons, which share their code."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from bot.addresses import normalise
from bot.campaigns import service
from bot.campaigns.audience import Recipient, resolve_audience
from bot.campaigns.engine import DeliveryEngine
from bot.campaigns.notes import decision_name, english, note, sentence_gap, show, state_name, status_name
from bot.campaigns.templates import CompiledTemplate, TemplateProblem, load_source
from bot.commands.parser import Arg, Flag, Parsed, Spec
from bot.db.models import Approval, Campaign, Delivery
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Button, Card, Message
from bot.i18n import t

if TYPE_CHECKING:
    from bot.core import Core, Request

NAME = Arg("name")
TO = Flag("to", help="a contact list or a group")
TEMPLATE = Flag("template", help="a template in campaigns.templates_dir (name.html, optional name.txt)")
NEEDS_TO = Flag("to", help=TO.help, required=True)
NEEDS_TEMPLATE = Flag("template", help=TEMPLATE.help, required=True)
SUBJECT = Flag("subject", help='the subject line; a template too, e.g. "Hello {{ first_name }}"')

NO_TRACKING = Flag(
    "no-tracking", takes_value=False, help="no open pixel and no click redirects in this campaign's mail"
)
TRACKING = Flag("tracking", help="on or off: open and click tracking for this campaign")
AT = Flag("at", help="start time, ISO 8601 with an offset, e.g. 2026-12-01T09:00:00+01:00")
NEW = Spec(
    ("campaign", "new"),
    (NAME,),
    (NEEDS_TO, NEEDS_TEMPLATE, SUBJECT, NO_TRACKING),
    "Start a draft campaign (senders).",
    ("senders",),
)
EDIT = Spec(
    ("campaign", "edit"),
    (NAME,),
    (TO, TEMPLATE, SUBJECT, TRACKING),
    "Change a campaign; an edit voids any approval.",
    ("senders",),
)
PREVIEW = Spec(
    ("campaign", "preview"),
    (NAME, Arg("recipient", required=False)),
    (),
    "Render a campaign for one recipient and check the whole audience.",
    ("senders", "approvers"),
)
TEST = Spec(
    ("campaign", "test"),
    (NAME, Arg("email")),
    (),
    "Send one test message to an internal address.",
    ("senders",),
)
SUBMIT = Spec(
    ("campaign", "submit"),
    (NAME,),
    (AT,),
    "Ask the approvers to approve a campaign; --at schedules its start.",
    ("senders",),
)
REPORT = Spec(
    ("campaign", "report"),
    (NAME,),
    (),
    "Sent, bounces, unsubscribes, complaints, opens and clicks, with a chart.",
    ("senders", "approvers"),
)
STATUS = Spec(("campaign", "status"), (NAME,), (), "Where a campaign stands.", ("senders", "approvers"))
PAUSE = Spec(("campaign", "pause"), (NAME,), (), "Pause a sending campaign.", ("senders", "approvers"))
RESUME = Spec(("campaign", "resume"), (NAME,), (), "Resume a paused campaign.", ("senders", "approvers"))
CANCEL = Spec(("campaign", "cancel"), (NAME,), (), "Cancel a campaign for good.", ("senders", "approvers"))
LIST = Spec(("campaign", "list"), (), (), "All campaigns and their states.", ("senders", "approvers"))
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


def register(core: Core) -> None:
    for spec, fn in (
        (NEW, new),
        (EDIT, edit),
        (PREVIEW, preview),
        (TEST, test),
        (SUBMIT, submit),
        (STATUS, status),
        (PAUSE, pause),
        (RESUME, resume),
        (CANCEL, cancel),
        (LIST, list_campaigns),
        (APPROVE, approve),
        (REJECT, reject),
        (REPORT, report),
    ):
        core.command(spec)(fn)
    core.action("campaign.approve")(approve_click)
    core.action("campaign.reject")(reject_click)


def _with_usage(exc: UserError, spec: Spec) -> UserError:
    if isinstance(exc, PermissionDenied):
        return exc  # a refusal is not a usage problem
    return UserError(exc.sentence, exc.usage or spec.usage)


async def new(core: Core, req: Request, p: Parsed) -> Message:
    name = p.arg(
        "name"
    )  # --to and --template are required flags: the parser refused the command without them
    ctx = core.ctx
    try:
        service.check_name(name)
        source = load_source(ctx.settings.campaigns.templates_dir, p.flag("template") or "")
        subject = p.flag("subject") or service.default_subject(ctx, p.flag("template") or "")
        CompiledTemplate(source, subject)  # a broken or hostile template is refused now, not at send time
        async with ctx.sessions() as session, session.begin():
            if (await session.execute(select(Campaign.id).where(Campaign.name == name))).scalar_one_or_none():
                raise UserError(
                    t(
                        "A campaign named “{name}” already exists; pick another name or /campaign edit it.",
                        name=name,
                    )
                )
            kind, audience = await resolve_audience(session, ctx.settings, p.flag("to") or "")
            campaign = Campaign(
                name=name,
                template=p.flag("template"),
                subject=subject,
                audience_kind=kind,
                audience_name=audience,
                from_address=ctx.settings.campaigns.from_address,
                from_name=ctx.settings.campaigns.from_name,
                created_by=req.email,
                tracking=not p.switch("no-tracking"),
            )
            session.add(campaign)
            await session.flush()
            service.audit_campaign(
                session, campaign, actor=req.email, via=req.via, action="campaign.create", after="draft"
            )
    except UserError as exc:
        raise _with_usage(exc, NEW) from None
    values = {"name": name, "audience": _audience(kind, audience), "subject": subject}
    if subject and not p.switch("no-tracking"):
        text = t(
            "Draft campaign “{name}” to {audience} with subject “{subject}”. Next: /campaign preview {name}, "
            "then /campaign submit {name}.",
            **values,
        )
    elif subject:
        text = t(
            "Draft campaign “{name}” to {audience} with subject “{subject}”, without open and click tracking. "
            "Next: /campaign preview {name}, then /campaign submit {name}.",
            **values,
        )
    elif not p.switch("no-tracking"):
        text = t(
            "Draft campaign “{name}” to {audience} (no subject yet: add --subject before submitting). "
            "Next: /campaign preview {name}, then /campaign submit {name}.",
            name=name,
            audience=values["audience"],
        )
    else:
        text = t(
            "Draft campaign “{name}” to {audience} (no subject yet: add --subject before submitting), without "
            "open and click tracking. Next: /campaign preview {name}, then /campaign submit {name}.",
            name=name,
            audience=values["audience"],
        )
    return Message(text)


def _audience(kind: str, name: str) -> str:
    """“list customers” or “group team@corp.example”, in the current language."""
    if kind == "list":
        return t("list {name}", name=name)
    if kind == "group":
        return t("group {name}", name=name)
    return f"{kind} {name}"


async def _load(core: Core, name: str, spec: Spec) -> Campaign:
    async with core.ctx.sessions() as session:
        try:
            return await service.get(session, name)
        except UserError as exc:
            raise _with_usage(exc, spec) from None


def _owner_or_admin(req: Request, campaign: Campaign, what: str) -> None:
    if campaign.created_by != req.email and not req.has("admins"):
        if what == "edit":
            raise PermissionDenied(
                t(
                    "Only {email} (who created “{name}”) or an admin can edit it.",
                    email=campaign.created_by,
                    name=campaign.name,
                )
            )
        raise PermissionDenied(
            t(
                "Only {email} (who created “{name}”) or an admin can submit it.",
                email=campaign.created_by,
                name=campaign.name,
            )
        )


async def edit(core: Core, req: Request, p: Parsed) -> Message:
    ctx = core.ctx
    if not (p.flag("to") or p.flag("template") or p.flag("subject") or p.flag("tracking")):
        raise UserError(
            t("/campaign edit needs at least one of --to, --template, --subject, --tracking."), EDIT.usage
        )
    tracking = (p.flag("tracking") or "").lower()
    if tracking and tracking not in ("on", "off"):
        raise UserError(t("--tracking takes on or off, not “{value}”.", value=tracking[:20]), EDIT.usage)
    try:
        async with ctx.sessions() as session, session.begin():
            campaign = await service.get(session, p.arg("name"))
            _owner_or_admin(req, campaign, "edit")
            if campaign.state not in service.EDITABLE:
                raise UserError(
                    t(
                        "“{name}” is {state}; it can no longer be edited.",
                        name=campaign.name,
                        state=state_name(campaign.state),
                    )
                )
            values: dict[str, object] = {}
            if p.flag("template"):
                load_source(ctx.settings.campaigns.templates_dir, p.flag("template") or "")
                values["template"] = p.flag("template")
            if p.flag("subject"):
                values["subject"] = p.flag("subject")
            if tracking:
                values["tracking"] = tracking == "on"
            if p.flag("to"):
                kind, audience = await resolve_audience(session, ctx.settings, p.flag("to") or "")
                values.update(audience_kind=kind, audience_name=audience)
            CompiledTemplate(
                load_source(
                    ctx.settings.campaigns.templates_dir, str(values.get("template", campaign.template))
                ),
                str(values.get("subject", campaign.subject)),
            )
            before = campaign.state
            # Any edit voids an approval: back to draft, the submitted hash forgotten.
            result = await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign.id, Campaign.state == before)
                .values(state="draft", content_hash=None, **values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                raise UserError(
                    t("“{name}” changed state while you edited it; try again.", name=campaign.name)
                )
            service.audit_campaign(
                session,
                campaign,
                actor=req.email,
                via=req.via,
                action="campaign.edit",
                before=before,
                after="draft",
                detail=", ".join(sorted(values)),
            )
    except UserError as exc:
        raise _with_usage(exc, EDIT) from None
    changed = ", ".join(sorted(values))
    if before != "draft":
        return Message(
            t(
                "Updated “{name}” ({fields}). The earlier approval request is void; submit it again.",
                name=campaign.name,
                fields=changed,
            )
        )
    return Message(t("Updated “{name}” ({fields}).", name=campaign.name, fields=changed))


def _audience_line(review: service.Review, campaign: Campaign) -> str:
    a = review.audience
    audience = _audience(campaign.audience_kind, campaign.audience_name)
    if a.total == 1:
        text = t("{audience}: 1 recipient", audience=audience)
    else:
        text = t("{audience}: {count} recipients", audience=audience, count=a.total)
    extra = []
    if a.without_consent:
        extra.append(t("{count} without consent, not mailed", count=a.without_consent))
    if a.suppressed:
        extra.append(t("{count} suppressed", count=a.suppressed))
    return text + (f" ({'; '.join(extra)})" if extra else "")


async def preview(core: Core, req: Request, p: Parsed) -> Message:
    ctx = core.ctx
    try:
        async with ctx.sessions() as session:
            campaign = await service.get(session, p.arg("name"))
            review = await service.review(ctx, session, campaign)
            recipient = review.sample
            if p.opt("recipient"):
                email = normalise(p.opt("recipient") or "")
                recipient = await _find_recipient(core, session, campaign, email)
    except UserError as exc:
        raise _with_usage(exc, PREVIEW) from None
    lines = [
        t(
            "Campaign “{name}” ({state}) — {audience}",
            name=campaign.name,
            state=state_name(campaign.state),
            audience=_audience_line(review, campaign),
        )
    ]
    if recipient is not None:
        try:
            rendered = review.messages.render(recipient)
            lines.append(
                t("For {email}:", email=recipient.email)
                + "\n"
                + t("Subject: {subject}", subject=rendered.subject)
                + "\n"
            )
            body = rendered.text if len(rendered.text) < 1500 else rendered.text[:1500] + "\n…"
            lines.append(body.rstrip())
        except TemplateProblem as exc:
            lines.append(t("For {email}: {problem}", email=recipient.email, problem=exc.sentence))
    lines.append("")
    lines.append(t("Checks: all passed.") if not review.problems else t("Checks:"))
    lines += [f"  ✗ {problem}" for problem in review.problems]
    lines.append(t("HTML preview: {url}", url=preview_url(core, campaign)))
    return Message("\n".join(lines), ephemeral=True)


async def _find_recipient(core: Core, session, campaign: Campaign, email: str) -> Recipient:  # type: ignore[no-untyped-def]
    from bot.campaigns.audience import stream_candidates

    async for chunk in stream_candidates(session, core.ctx.settings, campaign):
        for r in chunk:
            if r.email == email:
                return r
    raise UserError(
        t(
            "{email} is not in the audience of “{name}” (or has not given consent).",
            email=email,
            name=campaign.name,
        )
    )


def preview_url(core: Core, campaign: Campaign) -> str:
    token = core.ctx.signer.sign_expiring(
        "p", str(campaign.id), ttl_s=int(core.ctx.settings.campaigns.approval_ttl_hours * 3600)
    )
    return f"{core.ctx.settings.web.base_url}/preview/{token}"


async def test(core: Core, req: Request, p: Parsed) -> Message:
    ctx = core.ctx
    try:
        email = normalise(p.arg("email"))
        if not ctx.settings.is_internal(email) and email != req.email:
            raise UserError(
                t(
                    "Tests go to internal addresses only; {email} is outside {domains}. External people get a campaign "
                    "only after approval.",
                    email=email,
                    domains=", ".join(ctx.settings.org.domains),
                )
            )
        async with ctx.sessions() as session:
            campaign = await service.get(session, p.arg("name"))
            review = await service.review(ctx, session, campaign)
    except UserError as exc:
        raise _with_usage(exc, TEST) from None
    sample = review.sample or Recipient(email, None, {})
    recipient = Recipient(email, sample.name, sample.attributes)
    try:
        built = review.messages.build(recipient, subject_prefix="[TEST] ")
    except TemplateProblem as exc:
        raise UserError(exc.sentence) from None
    transport = ctx.new_transport(connections=1)
    try:
        outcome = await transport.send(campaign.from_address, email, built.data)
    finally:
        await transport.close()
    if not outcome.ok:
        raise UserError(t("The mail server did not take the test message: {detail}.", detail=outcome.detail))
    async with ctx.sessions() as session, session.begin():
        service.audit_campaign(
            session, campaign, actor=req.email, via=req.via, action="campaign.test", detail=f"test to {email}"
        )
    return Message(
        t(
            "Sent a test of “{name}” to {email} (subject: {subject}).",
            name=campaign.name,
            email=email,
            subject=f"[TEST] {built.rendered.subject}",
        )
    )


def _eta(campaign: Campaign, counts: dict[str, int], now: datetime) -> str | None:
    """How long the rest will take at the rate so far ("3 min"), or None."""
    total = sum(counts.values())
    left = counts.get("pending", 0) + counts.get("sending", 0)
    done = total - left
    if not left or not done or campaign.started_at is None or campaign.state != "sending":
        return None
    elapsed = (now - campaign.started_at).total_seconds()
    if elapsed <= 0:
        return None
    seconds = left / (done / elapsed)
    if seconds < 90:
        return t("{count} s", count=max(1, round(seconds)))
    if seconds < 5400:
        return t("{count} min", count=round(seconds / 60))
    return t("{count} h", count=f"{seconds / 3600:.1f}")


def _schedule_line(campaign: Campaign) -> str:
    if campaign.scheduled_at is None:
        return t("as soon as approved")
    return f"{campaign.scheduled_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({campaign.scheduled_at.isoformat()})"


def approval_card(
    core: Core,
    campaign: Campaign,
    review: service.Review | None,
    *,
    outcome: str | None = None,
    counts: dict[str, int] | None = None,
    approvers: list[str] | None = None,
) -> Card:
    """The card approvers see, in the current language (build it per messenger: see `core.post`)."""
    settings = core.ctx.settings
    fields: list[tuple[str, str]] = [(t("Requested by"), campaign.submitted_by or campaign.created_by)]
    if review is not None:
        fields.append((t("Audience"), _audience_line(review, campaign)))
        if review.sample is not None:
            try:
                rendered = review.messages.render(review.sample)
                fields.append((t("Subject"), rendered.subject))
                snippet = " ".join(rendered.text.split())[:280]
                fields.append((t("Sample ({email})", email=review.sample.email), snippet))
            except TemplateProblem:
                fields.append((t("Subject"), campaign.subject))
        fields.append((t("Checks"), t("passed") if not review.problems else "; ".join(review.problems)))
    else:
        fields.append((t("Audience"), _audience(campaign.audience_kind, campaign.audience_name)))
        fields.append((t("Subject"), campaign.subject))
    fields.append(
        (
            t("Sender"),
            f"{campaign.from_name} <{campaign.from_address}>"
            if campaign.from_name
            else campaign.from_address,
        )
    )
    fields.append((t("Template"), campaign.template))
    fields.append((t("Schedule"), _schedule_line(campaign)))
    tracked = settings.campaigns.tracking and campaign.tracking
    fields.append(
        (t("Tracking"), t("opens and clicks") if tracked else t("off (no tracking links in the mail)"))
    )
    needed = settings.campaigns.required_approvals
    if needed > 1 or approvers:
        fields.append(
            (
                t("Approvals"),
                t("{count} of {needed}", count=len(approvers or []), needed=needed)
                + (f" ({', '.join(approvers)})" if approvers else ""),
            )
        )
    progress = None
    if counts is not None:
        total = sum(counts.values())
        done = total - counts.get("pending", 0) - counts.get("sending", 0)
        progress = done / total if total else 1.0
        fields.append((t("Progress"), f"{done}/{total} — " + _counts_line(counts)))
        eta = _eta(campaign, counts, core.ctx.now())
        if eta:
            fields.append((t("ETA"), t("about {duration}", duration=eta)))
    if outcome is not None:
        fields.append((t("Outcome"), outcome))
        return Card(
            title=t("Campaign “{name}”", name=campaign.name),
            fields=tuple(fields),
            progress=progress,
            link=(t("Preview"), preview_url(core, campaign)),
        )
    buttons = (
        Button(
            "campaign.approve",
            t("Approve"),
            str(campaign.id),
            style="primary",
            text_command=f"/approve {campaign.name}",
        ),
        Button(
            "campaign.reject",
            t("Reject"),
            str(campaign.id),
            style="danger",
            confirm=t("Reject “{name}”? The sender will be told.", name=campaign.name),
            text_command=f"/reject {campaign.name} <reason>",
        ),
    )
    return Card(
        title=t("Approval needed: campaign “{name}”", name=campaign.name),
        fields=tuple(fields),
        buttons=buttons,
        link=(t("Preview"), preview_url(core, campaign)),
    )


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{status_name(k)} {v}" for k, v in sorted(counts.items()))


def parse_start_time(text: str, now: datetime) -> datetime:
    """An ISO 8601 time with an offset, in the future and within a year."""
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise UserError(
            t("--at “{text}” is not an ISO 8601 time such as 2026-12-01T09:00:00+01:00.", text=raw[:40]),
            SUBMIT.usage,
        ) from None
    if when.tzinfo is None:
        raise UserError(
            t(
                "--at “{text}” has no offset: add one (+01:00, Z) so there is no doubt when it starts.",
                text=raw[:40],
            ),
            SUBMIT.usage,
        )
    when = when.astimezone(UTC)
    if when <= now:
        raise UserError(
            t("--at {text} is in the past; give a time from now on.", text=raw[:40]), SUBMIT.usage
        )
    if when > now + timedelta(days=366):
        raise UserError(t("--at is more than a year ahead; schedule it closer to the date."), SUBMIT.usage)
    return when


async def submit(core: Core, req: Request, p: Parsed) -> Message:
    ctx = core.ctx
    try:
        when = parse_start_time(p.flag("at") or "", ctx.now()) if p.flag("at") else None
        async with ctx.sessions() as session, session.begin():
            campaign = await service.get(session, p.arg("name"))
            _owner_or_admin(req, campaign, "submit")
            if campaign.state not in ("draft", "rejected"):
                raise UserError(
                    t(
                        "“{name}” is {state}; only a draft can be submitted.",
                        name=campaign.name,
                        state=state_name(campaign.state),
                    )
                )
            review = await service.review(ctx, session, campaign)
            if review.problems:
                raise UserError(
                    t(
                        "“{name}” can't be submitted yet: {problems}",
                        name=campaign.name,
                        problems=" ".join(review.problems),
                    )
                )
            digest = service.current_hash(ctx, campaign)
            won = await service.transition(
                session,
                campaign.id,
                ("draft", "rejected"),
                "pending_approval",
                content_hash=digest,
                submitted_by=req.email,
                scheduled_at=when,
                submission=Campaign.submission + 1,
            )
            if not won:
                raise UserError(t("“{name}” was submitted by someone else just now.", name=campaign.name))
            # A new round of decisions: approvals given to an earlier submission no longer count.
            await service.void_approvals(ctx, session, campaign)
            campaign.submission = (
                await session.execute(select(Campaign.submission).where(Campaign.id == campaign.id))
            ).scalar_one()
            campaign.state, campaign.content_hash, campaign.submitted_by = (
                "pending_approval",
                digest,
                req.email,
            )
            campaign.scheduled_at = when
            service.audit_campaign(
                session,
                campaign,
                actor=req.email,
                via=req.via,
                action="campaign.submit",
                before="draft",
                after="pending_approval",
                detail=f"hash {digest[:12]}" + (f", start {when.isoformat()}" if when else ""),
            )
    except UserError as exc:
        raise _with_usage(exc, SUBMIT) from None

    def request() -> Message:  # built once per messenger, in its language
        return Message(
            t("{email} asks to send campaign “{name}”.", email=req.email, name=campaign.name),
            approval_card(core, campaign, review),
        )

    refs = await core.post("approvals", request, subject=f"campaign:{campaign.id}")
    if refs:
        sentences = [t("Submitted “{name}” for approval to the approvers.", name=campaign.name)]
    else:
        sentences = [
            t(
                "Submitted “{name}” for approval (no approvals channel is configured: approvers can type "
                "/approve).",
                name=campaign.name,
            )
        ]
    approvers = ", ".join(a for a in ctx.settings.roles.approvers if a != req.email) or t("nobody yet")
    sentences.append(t("Approvers: {names}.", names=approvers))
    if review.audience.total == 1:
        sentences.append(t("It goes to 1 recipient once approved."))
    else:
        sentences.append(t("It goes to {count} recipients once approved.", count=review.audience.total))
    if when:
        sentences.append(t("It starts at {time} once approved.", time=_schedule_line(campaign)))
    return Message(sentence_gap().join(sentences))


async def _decide(
    core: Core,
    req: Request,
    campaign_ref: str,
    decision: str,
    reason: str | None,
    spec: Spec,
    *,
    by_id: bool = False,
) -> Message:
    """`campaign_ref` is a name (typed) or, from a button, an id; a name may be all digits."""
    ctx = core.ctx
    needed = ctx.settings.campaigns.required_approvals
    approvers: list[str] = []
    new_state = "pending_approval"
    if not req.has("approvers"):
        raise PermissionDenied(t("Only approvers can approve or reject campaigns."))
    async with ctx.sessions() as session, session.begin():
        try:
            if by_id:
                campaign = await session.get(Campaign, int(campaign_ref))
                if campaign is None:
                    raise UserError(t("That campaign no longer exists."))
            else:
                campaign = await service.get(session, campaign_ref)
        except UserError as exc:
            raise _with_usage(exc, spec) from None
        if req.email in (campaign.created_by, campaign.submitted_by):
            raise PermissionDenied(
                t(
                    "You asked for “{name}”, so you can't approve or reject it yourself; another "
                    "approver must.",
                    name=campaign.name,
                )
            )
        if campaign.state != "pending_approval":
            decided = (
                await session.execute(
                    select(Approval.approver, Approval.decision)
                    .where(Approval.campaign_id == campaign.id)
                    .order_by(Approval.id.desc())
                    .limit(1)
                )
            ).first()
            values = {"name": campaign.name, "state": state_name(campaign.state)}
            if decided and decision == "approve":
                raise UserError(
                    t(
                        "“{name}” is {state} ({decision} by {email}); there is nothing to approve any more.",
                        decision=decision_name(decided.decision),
                        email=decided.approver,
                        **values,
                    )
                )
            if decided:
                raise UserError(
                    t(
                        "“{name}” is {state} ({decision} by {email}); there is nothing to reject any more.",
                        decision=decision_name(decided.decision),
                        email=decided.approver,
                        **values,
                    )
                )
            if decision == "approve":
                raise UserError(t("“{name}” is {state}; there is nothing to approve any more.", **values))
            raise UserError(t("“{name}” is {state}; there is nothing to reject any more.", **values))
        try:
            digest = service.current_hash(ctx, campaign)
        except UserError as exc:
            raise UserError(
                t("“{name}” can't be checked: {problem}", name=campaign.name, problem=exc.sentence)
            ) from None
        if digest != campaign.content_hash:
            raise UserError(
                t(
                    "“{name}” changed after it was submitted (its template, subject, audience or sender); "
                    "it must be submitted again.",
                    name=campaign.name,
                )
            )
        fresh = await service.record_decision(
            ctx,
            session,
            campaign,
            approver=req.email,
            decision="approved" if decision == "approve" else "rejected",
            reason=reason,
            digest=digest,
        )
        if not fresh:
            raise UserError(
                t("You already decided on “{name}”; it needs another approver now.", name=campaign.name)
            )
        if decision == "approve":
            approvers = await service.approvals_in_force(session, campaign, digest, ctx.now())
            if len(approvers) < needed:
                service.audit_campaign(
                    session,
                    campaign,
                    actor=req.email,
                    via=req.via,
                    action="campaign.approve",
                    before="pending_approval",
                    after="pending_approval",
                    detail=f"{len(approvers)} of {needed} approvals",
                )
                won = True
            else:
                scheduled = campaign.scheduled_at is not None and campaign.scheduled_at > ctx.now()
                new_state = "scheduled" if scheduled else "approved"
                won = await service.transition(session, campaign.id, ("pending_approval",), new_state)
        else:
            won = await service.transition(
                session,
                campaign.id,
                ("pending_approval",),
                "rejected",
                status_note=note("Rejected by {email}: {reason}", email=req.email, reason=reason),
            )
            if won:  # a rejection voids the approvals given before it
                await service.void_approvals(ctx, session, campaign)
            new_state = "rejected"
        if not won:
            raise UserError(t("“{name}” was decided by someone else just now.", name=campaign.name))
        if new_state != "pending_approval":
            service.audit_campaign(
                session,
                campaign,
                actor=req.email,
                via=req.via,
                action=f"campaign.{decision}",
                before="pending_approval",
                after=new_state,
                detail=reason,
            )
    subject = f"campaign:{campaign.id}"
    name = campaign.name
    # Each card is built once per messenger, in its language (core.update_subject calls the function).
    if decision == "reject":
        await core.update_subject(
            subject,
            lambda: Message(
                t("“{name}” was rejected.", name=name),
                approval_card(
                    core,
                    campaign,
                    None,
                    outcome=t("Rejected by {email}: {reason}", email=req.email, reason=reason),
                ),
            ),
        )
        return Message(
            t(
                "Rejected “{name}”. {email} can edit and submit it again.",
                name=name,
                email=campaign.submitted_by or campaign.created_by,
            )
        )
    if new_state == "pending_approval":
        async with ctx.sessions() as session:
            review = await service.review(ctx, session, campaign)
        await core.update_subject(
            subject,
            lambda: Message(
                t(
                    "“{name}” has {count} of {needed} approvals.",
                    name=name,
                    count=len(approvers),
                    needed=needed,
                ),
                approval_card(core, campaign, review, approvers=approvers),
            ),
        )
        return Message(
            t(
                "Approved “{name}” ({count} of {needed} approvals); it needs {more} more before it is sent.",
                name=name,
                count=len(approvers),
                needed=needed,
                more=needed - len(approvers),
            )
        )
    who = ", ".join(approvers)
    if new_state == "scheduled":
        await schedule_start(core, campaign)
        await core.update_subject(
            subject,
            lambda: Message(
                t("“{name}” was approved.", name=name),
                approval_card(
                    core,
                    campaign,
                    None,
                    outcome=t("Approved by {names}; starts {time}", names=who, time=_schedule_line(campaign)),
                    approvers=approvers,
                ),
            ),
        )
        return Message(
            t(
                "Approved “{name}”; it starts at {time}. /campaign status {name} shows it.",
                name=name,
                time=_schedule_line(campaign),
            )
        )
    start_sending(core, campaign.id, req.email)
    await core.update_subject(
        subject,
        lambda: Message(
            t("“{name}” was approved.", name=name),
            approval_card(
                core,
                campaign,
                None,
                outcome=t("Approved by {names}; sending…", names=who),
                approvers=approvers,
            ),
        ),
    )
    return Message(
        t("Approved “{name}”; sending has started. /campaign status {name} shows progress.", name=name)
    )


def start_job_id(campaign_id: int) -> str:
    return f"campaign-start-{campaign_id}"


async def schedule_start(core: Core, campaign: Campaign) -> None:
    """Put the start in the persistent job store (it survives a restart; one process runs it)."""
    from bot.scheduler import ensure_scheduler

    assert campaign.scheduled_at is not None
    scheduler = await ensure_scheduler(core, run_jobs=False)
    scheduler.at(
        start_job_id(campaign.id),
        campaign.scheduled_at,
        "bot.campaigns.jobs:start_campaign",
        campaign_id=campaign.id,
    )


def _runs(core: Core) -> dict[int, asyncio.Task[Any]]:
    return core.services.setdefault("campaign_runs", {})  # type: ignore[no-any-return]


def start_sending(core: Core, campaign_id: int, actor: str) -> None:
    _spawn_run(core, campaign_id, actor, start=True)


def resume_sending(core: Core, campaign_id: int) -> None:
    """Run a `sending` campaign here unless this process already does."""
    _spawn_run(core, campaign_id, "system", start=False)


def is_running_here(core: Core, campaign_id: int) -> bool:
    task = _runs(core).get(campaign_id)
    return task is not None and not task.done()


def _spawn_run(core: Core, campaign_id: int, actor: str, *, start: bool) -> None:
    if is_running_here(core, campaign_id):
        return  # the running task notices a resume itself (see _send)
    _runs(core)[campaign_id] = core.spawn(
        _send(core, campaign_id, actor, start=start), name=f"campaign-{campaign_id}"
    )


async def _send(core: Core, campaign_id: int, actor: str, *, start: bool) -> None:
    last_update = [0.0]

    async def on_event(cid: int, what: str) -> None:
        now = time.monotonic()
        if what == "progress" and now - last_update[0] < 3.0:
            return  # messengers rate-limit message updates; every few seconds is plenty
        last_update[0] = now
        await refresh_card(core, cid, what)

    runs = _runs(core)
    me = asyncio.current_task()
    if start:
        engine = DeliveryEngine(core.ctx, on_event=on_event, worker_id=core.worker_id)
        state = await engine.start(campaign_id, actor)
        if state != "sending":
            await refresh_card(core, campaign_id, state)
            if runs.get(campaign_id) is me:
                runs.pop(campaign_id, None)
            return
    while True:
        engine = DeliveryEngine(core.ctx, on_event=on_event, worker_id=core.worker_id)
        core.services.setdefault("engines", {})[campaign_id] = engine
        result = await engine.run(campaign_id)
        if runs.get(campaign_id) is me:
            runs.pop(campaign_id, None)
        # A resume that came while this run was winding down found it still alive and left the
        # work to it: look once more, and carry on unless another run took over.
        if result.state in ("completed", "failed", "cancelled", "missing") or engine._stop.is_set():
            return
        async with core.ctx.sessions() as session:
            state = (
                await session.execute(select(Campaign.state).where(Campaign.id == campaign_id))
            ).scalar_one()
        if state != "sending" or campaign_id in runs:
            return
        runs[campaign_id] = me  # type: ignore[assignment]


async def refresh_card(core: Core, campaign_id: int, what: str) -> None:
    async with core.ctx.sessions() as session:
        campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return
        counts = await service.counts(session, campaign_id)
        approvers = sorted(
            set(
                (
                    await session.execute(
                        select(Approval.approver).where(
                            Approval.campaign_id == campaign_id,
                            Approval.decision == "approved",
                            Approval.submission == campaign.submission,
                            Approval.content_hash == campaign.content_hash,
                        )
                    )
                )
                .scalars()
                .all()
            )
        )
    state = campaign.state

    def build() -> Message:  # once per messenger, in its language
        who = ", ".join(approvers) or t("nobody")
        note_text = show(campaign.status_note)
        if state == "sending":
            outcome = t("Approved by {names}; sending…", names=who)
        elif state == "scheduled":
            outcome = t("Approved by {names}; starts {time}", names=who, time=_schedule_line(campaign))
        elif state == "completed":
            outcome = t(
                "Approved by {names}; sent — {count} delivered to the mail server",
                names=who,
                count=counts.get("sent", 0),
            )
        elif state == "paused":
            outcome = t("Paused. {note}", note=note_text) if note_text else t("Paused.")
        elif state == "failed":
            outcome = t("Failed. {note}", note=note_text) if note_text else t("Failed.")
        elif state == "cancelled":
            outcome = t("Cancelled.")
        else:
            outcome = state_name(state)
        card = approval_card(core, campaign, None, outcome=outcome, counts=counts, approvers=approvers)
        return Message(t("“{name}”: {state}.", name=campaign.name, state=state_name(state)), card)

    await core.update_subject(f"campaign:{campaign_id}", build)
    if what in ("auto-paused", "failed") and campaign.status_note and state == what.removeprefix("auto-"):
        # Say why in the chat, not only on the card: someone has to act on it.
        await core.post(
            "approvals",
            lambda: Message(
                t("Campaign “{name}”: {note}", name=campaign.name, note=show(campaign.status_note))
            ),
        )


async def approve(core: Core, req: Request, p: Parsed) -> Message:
    return await _decide(core, req, p.arg("campaign"), "approve", None, APPROVE)


async def reject(core: Core, req: Request, p: Parsed) -> Message:
    reason = (p.opt("reason") or "").strip()
    if not reason:
        raise UserError(t("/reject needs a reason, so the sender knows what to change."), REJECT.usage)
    if len(reason) > 1000:
        raise UserError(t("Keep the reason under 1,000 characters."), REJECT.usage)
    return await _decide(core, req, p.arg("campaign"), "reject", reason, REJECT)


async def approve_click(core: Core, req: Request, action: Action) -> Message | None:
    value = action.value.split(":", 1)[0]
    if not _is_id(value):
        raise UserError(t("That button's value is not a campaign."))
    return await _decide(core, req, value, "approve", None, APPROVE, by_id=True)


async def reject_click(core: Core, req: Request, action: Action) -> Message | None:
    value, _, reason = action.value.partition(":")
    if not _is_id(value):
        raise UserError(t("That button's value is not a campaign."))
    return await _decide(
        core, req, value, "reject", reason.strip()[:1000] or t("no reason given"), REJECT, by_id=True
    )


def _is_id(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 18  # fits a BIGINT


async def status(core: Core, req: Request, p: Parsed) -> Message:
    campaign = await _load(core, p.arg("name"), STATUS)
    async with core.ctx.sessions() as session:
        counts = await service.counts(session, campaign.id)
        decisions = (
            await session.execute(
                select(
                    Approval.approver,
                    Approval.decision,
                    Approval.created_at,
                    Approval.reason,
                    Approval.submission,
                )
                .where(Approval.campaign_id == campaign.id)
                .order_by(Approval.id)
            )
        ).all()
    lines = [
        t("“{name}” is {state}.", name=campaign.name, state=state_name(campaign.state)),
        "  "
        + t(
            "to {audience}, template {template}, subject “{subject}”, created by {email}",
            audience=_audience(campaign.audience_kind, campaign.audience_name),
            template=campaign.template,
            subject=campaign.subject,
            email=campaign.created_by,
        ),
    ]
    for d in decisions:
        values = {
            "decision": decision_name(d.decision),
            "email": d.approver,
            "time": f"{d.created_at:%Y-%m-%d %H:%M}",
        }
        if d.reason:
            lines.append("  " + t("{decision} by {email} at {time} UTC: {reason}", reason=d.reason, **values))
        else:
            lines.append("  " + t("{decision} by {email} at {time} UTC", **values))
    if counts:
        total = sum(counts.values())
        lines.append("  " + t("{count} recipients: {counts}", count=total, counts=_counts_line(counts)))
    if campaign.scheduled_at is not None and campaign.state in ("pending_approval", "approved", "scheduled"):
        if campaign.state == "scheduled":
            lines.append(
                "  " + t("starts {time} (in the persistent schedule)", time=_schedule_line(campaign))
            )
        else:
            lines.append("  " + t("starts {time} once approved", time=_schedule_line(campaign)))
    needed = core.ctx.settings.campaigns.required_approvals
    if campaign.state == "pending_approval" and needed > 1:
        got = {
            d.approver for d in decisions if d.decision == "approved" and d.submission == campaign.submission
        }
        lines.append("  " + t("{count} of {needed} approvals", count=len(got), needed=needed))
    if campaign.status_note:
        lines.append(f"  {show(campaign.status_note)}")
    eta = _eta(campaign, counts, core.ctx.now()) if counts else None
    if eta:
        lines.append("  " + t("about {duration} to go", duration=eta))
    return Message("\n".join(lines))


async def report(core: Core, req: Request, p: Parsed) -> Message:
    from bot.campaigns.report import build_report, render_chart

    campaign = await _load(core, p.arg("name"), REPORT)
    if campaign.state in ("draft", "pending_approval", "approved", "scheduled", "rejected"):
        raise UserError(
            t(
                "“{name}” is {state}; it has no report until it is sent.",
                name=campaign.name,
                state=state_name(campaign.state),
            ),
            REPORT.usage,
        )
    figures = await build_report(core.ctx, campaign)
    chart = await render_chart(core.ctx, campaign, figures)
    return Message(figures.text(), attachments=(str(chart),) if chart else ())


async def list_campaigns(core: Core, req: Request, p: Parsed) -> Message:
    async with core.ctx.sessions() as session:
        rows = (
            (await session.execute(select(Campaign).order_by(Campaign.created_at.desc()).limit(50)))
            .scalars()
            .all()
        )
    if not rows:
        return Message(t("There are no campaigns yet. /campaign new starts one."))
    lines = [t("1 campaign:") if len(rows) == 1 else t("{count} campaigns:", count=len(rows))]
    lines += [
        "  "
        + t(
            "{name} — {state}, to {audience}, by {email}",
            name=c.name,
            state=state_name(c.state),
            audience=c.audience_name,
            email=c.created_by,
        )
        for c in rows
    ]
    return Message("\n".join(lines))


async def _set_state(
    core: Core, req: Request, p: Parsed, spec: Spec, from_states: tuple[str, ...], to: str, verb: str
) -> Campaign:
    campaign = await _load(core, p.arg("name"), spec)
    _may_act(req, campaign, verb)
    stored = {
        "paused": note("Paused by {email}.", email=req.email),
        "sending": note("Resumed by {email}.", email=req.email),
        "cancelled": note("Cancelled by {email}.", email=req.email),
    }[to]
    async with core.ctx.sessions() as session, session.begin():
        won = await service.transition(session, campaign.id, from_states, to, status_note=stored)
        if not won:
            current = (
                await session.execute(select(Campaign.state).where(Campaign.id == campaign.id))
            ).scalar_one()
            values = {"name": campaign.name, "state": state_name(current)}
            refusal = {
                "paused": t("“{name}” is {state}; it can't be paused.", **values),
                "sending": t("“{name}” is {state}; it can't be resumed.", **values),
                "cancelled": t("“{name}” is {state}; it can't be cancelled.", **values),
            }[to]
            raise UserError(refusal, spec.usage)
        if to == "cancelled":
            await session.execute(
                update(Delivery)
                .where(Delivery.campaign_id == campaign.id, Delivery.status == "pending")
                .values(status="cancelled")
            )
        service.audit_campaign(
            session,
            campaign,
            actor=req.email,
            via=req.via,
            action=f"campaign.{verb}",
            before=campaign.state,
            after=to,
        )
    return campaign


def _may_act(req: Request, campaign: Campaign, verb: str) -> None:
    if campaign.created_by != req.email and not req.has("approvers"):
        refusals = {
            "pause": t(
                "Only {email}, approvers and admins can pause “{name}”.",
                email=campaign.created_by,
                name=campaign.name,
            ),
            "resume": t(
                "Only {email}, approvers and admins can resume “{name}”.",
                email=campaign.created_by,
                name=campaign.name,
            ),
            "cancel": t(
                "Only {email}, approvers and admins can cancel “{name}”.",
                email=campaign.created_by,
                name=campaign.name,
            ),
        }
        raise PermissionDenied(refusals[verb])


async def pause(core: Core, req: Request, p: Parsed) -> Message:
    c = await _set_state(core, req, p, PAUSE, ("sending",), "paused", "pause")
    await refresh_card(core, c.id, "paused")
    return Message(t("Paused “{name}”. /campaign resume {name} continues where it stopped.", name=c.name))


async def resume(core: Core, req: Request, p: Parsed) -> Message:
    campaign = await _load(core, p.arg("name"), RESUME)
    _may_act(req, campaign, "resume")
    gap = await _fail_unless_approved(core, req, campaign)
    if gap is not None:
        return Message(
            t("“{name}” was not resumed and has failed: {reason}", name=campaign.name, reason=show(gap))
        )
    c = await _set_state(core, req, p, RESUME, ("paused",), "sending", "resume")
    resume_sending(core, c.id)
    return Message(t("Resumed “{name}”.", name=c.name))


async def _fail_unless_approved(core: Core, req: Request, campaign: Campaign) -> str | None:
    """A paused campaign resumes only with its approval in force for what is on disk now (invariant 1);
    otherwise it fails here, audited, and the card says why. Returns that reason (a stored note) or None.
    The engine checks again when it starts sending, for every other path."""
    ctx = core.ctx
    unloadable: str | None = None
    try:
        digest = service.current_hash(ctx, campaign)
    except UserError as exc:
        digest, unloadable = "", note("The template can no longer be loaded: {error}", error=exc.sentence)
    async with ctx.sessions() as session, session.begin():
        gap = unloadable or await service.approval_gap(ctx, session, campaign, digest)
        if gap is None:
            return None
        if not await service.transition(
            session, campaign.id, ("paused",), "failed", status_note=gap, finished_at=ctx.now()
        ):
            return None  # no longer paused: the usual refusal follows
        service.audit_campaign(
            session,
            campaign,
            actor=req.email,
            via=req.via,
            action="campaign.fail",
            before="paused",
            after="failed",
            detail=english(gap),
        )
    await refresh_card(core, campaign.id, "failed")
    return gap


async def cancel(core: Core, req: Request, p: Parsed) -> Message:
    c = await _set_state(
        core,
        req,
        p,
        CANCEL,
        ("draft", "pending_approval", "approved", "scheduled", "sending", "paused"),
        "cancelled",
        "cancel",
    )
    scheduler = core.services.get("scheduler")
    if scheduler is not None:
        scheduler.cancel(start_job_id(c.id))
    await refresh_card(core, c.id, "cancelled")
    return Message(t("Cancelled “{name}”; no more messages will be sent.", name=c.name))
