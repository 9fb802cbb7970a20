"""What people see of a campaign in chat: the approval card (which becomes the progress and outcome
card once decided), and the lines shared by the commands that describe a campaign.

Cards are built in the current language: `Messengers.post`/`update_subject` call the builder once
per messenger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from bot.campaigns import service, spam_score
from bot.campaigns.audience import Recipient
from bot.campaigns.notes import decision_name, show, state_name, status_name
from bot.campaigns.templates import Rendered, TemplateProblem
from bot.campaigns.triggers import delay_text, from_bound
from bot.config import DEFAULT_ROUTE
from bot.context import Context
from bot.db.models import Approval, Campaign
from bot.events import Button, Card, Message
from bot.i18n import t
from bot.messengers import Messengers


def audience(kind: str, name: str, where: str | None = None) -> str:
    """“list customers” or “group team@corp.example”, in the current language."""
    if kind == "list" and where:
        return t("list {name} where {expression}", name=name, expression=where)
    if kind == "list":
        return t("list {name}", name=name)
    if kind == "group":
        return t("group {name}", name=name)
    if kind == "joiners":
        return t("each new employee")
    return f"{kind} {name}"


def audience_line(review: service.Review, campaign: Campaign) -> str:
    a = review.audience
    name = audience(campaign.audience_kind, campaign.audience_name, campaign.audience_where)
    if a.total == 1:
        text = t("{audience}: 1 recipient", audience=name)
    else:
        text = t("{audience}: {count} recipients", audience=name, count=a.total)
    extra = []
    if a.without_consent:
        extra.append(t("{count} without consent, not mailed", count=a.without_consent))
    if a.suppressed:
        extra.append(t("{count} suppressed", count=a.suppressed))
    return text + (f" ({'; '.join(extra)})" if extra else "")


def eta(campaign: Campaign, counts: dict[str, int], now: datetime) -> str | None:
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


def schedule_line(campaign: Campaign) -> str:
    if campaign.scheduled_at is None:
        return t("as soon as approved")
    return f"{campaign.scheduled_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({campaign.scheduled_at.isoformat()})"


def counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{status_name(k)} {v}" for k, v in sorted(counts.items()))


def created(campaign: Campaign) -> str:
    """What a sender reads when the draft is made: what it is, and what to do next."""
    name, subject, tracked = campaign.name, campaign.subject, campaign.tracking
    values = {
        "name": name,
        "audience": audience(campaign.audience_kind, campaign.audience_name, campaign.audience_where),
        "subject": subject,
    }
    if subject and tracked:
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
    elif tracked:
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
    return text


@dataclass
class Preview:
    """A campaign as /campaign preview shows it: rendered for one recipient, with every check."""

    campaign: Campaign
    review: service.Review
    recipient: Recipient | None
    rendered: Rendered | None
    problem: str | None  # why this recipient's message can't be rendered


def preview_text(preview: Preview, url: str) -> str:
    """/campaign preview: the message for one recipient, then every check."""
    campaign, review = preview.campaign, preview.review
    lines = [
        t(
            "Campaign “{name}” ({state}) — {audience}",
            name=campaign.name,
            state=state_name(campaign.state),
            audience=audience_line(review, campaign),
        )
    ]
    if preview.recipient is not None and preview.rendered is not None:
        rendered = preview.rendered
        lines.append(
            t("For {email}:", email=preview.recipient.email)
            + "\n"
            + t("Subject: {subject}", subject=rendered.subject)
            + "\n"
        )
        body = rendered.text if len(rendered.text) < 1500 else rendered.text[:1500] + "\n…"
        lines.append(body.rstrip())
    elif preview.recipient is not None:
        lines.append(t("For {email}: {problem}", email=preview.recipient.email, problem=preview.problem))
    lines.append("")
    lines.append(t("Checks: all passed.") if not review.problems else t("Checks:"))
    lines += [f"  ✗ {problem}" for problem in review.problems]
    spam = spam_score.line(review.spam, review.messages.settings.campaigns)
    if spam is not None:
        lines.append(spam)
    lines.append(t("HTML preview: {url}", url=url))
    return "\n".join(lines)


def card_subject(campaign: Campaign) -> str:
    """What the approval card of the campaign's current submission is remembered under. A card belongs to
    one submission: a resubmission posts a new card, and the rejected or voided one keeps its outcome."""
    return f"campaign:{campaign.id}:{campaign.submission}"


def _outcome_title(campaign: Campaign, state: str | None = None) -> str:
    """A decided card's title: which campaign, which submission (a card belongs to one), and where it
    stands now, so that no number on it reads like a plan's or a post's."""
    values = {"submission": campaign.submission, "state": state_name(state or campaign.state)}
    if campaign.kind == "automation":
        return t(
            "Automation “{name}”, submission {submission}: {state}",
            name=campaign.name.removeprefix(service.AUTOMATION_PREFIX),
            **values,
        )
    return t("Campaign “{name}”, submission {submission}: {state}", name=campaign.name, **values)


class CampaignCards:
    def __init__(self, ctx: Context, messengers: Messengers):
        self.ctx = ctx
        self.messengers = messengers

    def preview_url(self, campaign: Campaign) -> str:
        token = self.ctx.signer.sign_expiring(
            "p", str(campaign.id), ttl_s=int(self.ctx.settings.campaigns.approval_ttl_hours * 3600)
        )
        return f"{self.ctx.settings.web.base_url}/preview/{token}"

    async def post_request(self, campaign: Campaign, review: service.Review, requester: str) -> int:
        """The approval request to the approvers' conversations; how many messengers took it."""

        def request() -> Message:
            return Message(
                t("{email} asks to send campaign “{name}”.", email=requester, name=campaign.name),
                self.approval_card(campaign, review),
            )

        return len(await self.messengers.post("approvals", request, subject=card_subject(campaign)))

    async def show_outcome(
        self,
        campaign: Campaign,
        words: Callable[[], tuple[str, str]],
        approvers: list[str] | None = None,
        *,
        state: str | None = None,
    ) -> None:
        """Replace the approval card with its outcome (no buttons). `words` gives (message, outcome) in the
        current language: it is called once per messenger."""

        def build() -> Message:
            text, outcome = words()
            card = self.approval_card(campaign, None, outcome=outcome, approvers=approvers, state=state)
            return Message(text, card)

        await self.update_card(campaign, build)

    async def update_card(self, campaign: Campaign, build: Callable[[], Message]) -> None:
        """Replace the current submission's card (built per messenger), and no other."""
        if await self.messengers.update_subject(card_subject(campaign), build) or campaign.submission > 1:
            return
        # A card posted before cards were kept per submission is remembered as campaign:<id>; with one
        # submission so far it can only be this one's.
        await self.messengers.update_subject(f"campaign:{campaign.id}", build)

    def approval_card(
        self,
        campaign: Campaign,
        review: service.Review | None,
        *,
        outcome: str | None = None,
        counts: dict[str, int] | None = None,
        approvers: list[str] | None = None,
        state: str | None = None,
    ) -> Card:
        """The card approvers see, in the current language (build it per messenger: see `core.post`)."""
        settings = self.ctx.settings
        fields: list[tuple[str, str]] = [(t("Requested by"), campaign.submitted_by or campaign.created_by)]
        if review is not None:
            fields.append((t("Audience"), audience_line(review, campaign)))
            if review.sample is not None:
                try:
                    rendered = review.messages.render(review.sample)
                    fields.append((t("Subject"), rendered.subject))
                    snippet = " ".join(rendered.text.split())[:280]
                    fields.append((t("Sample ({email})", email=review.sample.email), snippet))
                except TemplateProblem:
                    fields.append((t("Subject"), campaign.subject))
            fields.append((t("Checks"), t("passed") if not review.problems else "; ".join(review.problems)))
            spam = spam_score.value(review.spam, settings.campaigns)
            if spam is not None:
                fields.append((t("Spam score"), spam))
        else:
            fields.append(
                (
                    t("Audience"),
                    audience(campaign.audience_kind, campaign.audience_name, campaign.audience_where),
                )
            )
            fields.append((t("Subject"), campaign.subject))
        standing = from_bound(campaign.bound) if campaign.kind == "automation" else None
        if standing is not None:
            trigger, delay_s, cap = standing
            fields.append((t("Trigger"), trigger.describe()))
            fields.append((t("Delay"), delay_text(delay_s)))
            fields.append((t("Daily cap"), str(cap or settings.automations.daily_cap)))
        fields.append(
            (
                t("Sender"),
                f"{campaign.from_name} <{campaign.from_address}>"
                if campaign.from_name
                else campaign.from_address,
            )
        )
        route = service.route_of(self.ctx, campaign)
        if route != DEFAULT_ROUTE:  # most campaigns go by [smtp]: named only when another route is taken
            fields.append((t("SMTP route"), route))
        fields.append((t("Template"), campaign.template))
        fields.append((t("Schedule"), schedule_line(campaign)))
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
        if counts:  # no deliveries yet (a draft, a voided request): no progress to show
            total = sum(counts.values())
            # Cancelled deliveries were never tried: they are not progress, so a cancelled campaign's
            # bar shows the share that really went out.
            done = total - counts.get("pending", 0) - counts.get("sending", 0) - counts.get("cancelled", 0)
            progress = done / total
            fields.append((t("Progress"), f"{done}/{total} — " + counts_line(counts)))
            remaining = eta(campaign, counts, self.ctx.now())
            if remaining:
                fields.append((t("ETA"), t("about {duration}", duration=remaining)))
        if outcome is not None:
            fields.append((t("Outcome"), outcome))
            return Card(
                title=_outcome_title(campaign, state),
                fields=tuple(fields),
                progress=progress,
                link=(t("Preview"), self.preview_url(campaign)),
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
        title = (
            t(
                "Approval needed: automation “{name}”, submission {submission}",
                name=campaign.name.removeprefix(service.AUTOMATION_PREFIX),
                submission=campaign.submission,
            )
            if campaign.kind == "automation"
            else t(
                "Approval needed: campaign “{name}”, submission {submission}",
                name=campaign.name,
                submission=campaign.submission,
            )
        )
        return Card(
            title=title,
            fields=tuple(fields),
            buttons=buttons,
            link=(t("Preview"), self.preview_url(campaign)),
        )

    async def refresh(self, campaign_id: int, what: str) -> None:
        async with self.ctx.sessions() as session:
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
            if state == "sending" and campaign.kind == "automation":
                outcome = t("Approved by {names}; running: each trigger sends one message", names=who)
            elif state == "sending":
                outcome = t("Approved by {names}; sending…", names=who)
            elif state == "scheduled":
                outcome = t("Approved by {names}; starts {time}", names=who, time=schedule_line(campaign))
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
            elif state == "draft" and note_text:  # edited after it was submitted: the approval is void
                outcome = note_text
            else:
                outcome = state_name(state)
            card = self.approval_card(campaign, None, outcome=outcome, counts=counts, approvers=approvers)
            return Message(t("“{name}”: {state}.", name=campaign.name, state=state_name(state)), card)

        await self.update_card(campaign, build)
        if what in ("auto-paused", "failed") and campaign.status_note and state == what.removeprefix("auto-"):
            # Say why in the chat, not only on the card: someone has to act on it.
            await self.messengers.post(
                "approvals",
                lambda: Message(
                    t("Campaign “{name}”: {note}", name=campaign.name, note=show(campaign.status_note))
                ),
            )

    async def tell(self, campaign_id: int, stored: str) -> None:
        """A status note the approvals chat should read while the campaign goes on (a deferred domain)."""
        async with self.ctx.sessions() as session:
            campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return
        await self.messengers.post(
            "approvals",
            lambda: Message(t("Campaign “{name}”: {note}", name=campaign.name, note=show(stored))),
        )

    async def status(self, campaign: Campaign) -> str:
        """Where a campaign stands, for /campaign status."""
        async with self.ctx.sessions() as session:
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
                audience=audience(campaign.audience_kind, campaign.audience_name, campaign.audience_where),
                template=campaign.template,
                subject=campaign.subject,
                email=campaign.created_by,
            ),
        ]
        route = service.route_of(self.ctx, campaign)
        if route != DEFAULT_ROUTE:
            lines.append("  " + t("leaves by the SMTP route “{route}”", route=route))
        for d in decisions:
            values = {
                "decision": decision_name(d.decision),
                "email": d.approver,
                "time": f"{d.created_at:%Y-%m-%d %H:%M}",
            }
            if d.reason:
                lines.append(
                    "  " + t("{decision} by {email} at {time} UTC: {reason}", reason=d.reason, **values)
                )
            else:
                lines.append("  " + t("{decision} by {email} at {time} UTC", **values))
        if counts:
            total = sum(counts.values())
            lines.append("  " + t("{count} recipients: {counts}", count=total, counts=counts_line(counts)))
        if campaign.scheduled_at is not None and campaign.state in (
            "pending_approval",
            "approved",
            "scheduled",
        ):
            if campaign.state == "scheduled":
                lines.append(
                    "  " + t("starts {time} (in the persistent schedule)", time=schedule_line(campaign))
                )
            else:
                lines.append("  " + t("starts {time} once approved", time=schedule_line(campaign)))
        needed = self.ctx.settings.campaigns.required_approvals
        if campaign.state == "pending_approval" and needed > 1:
            got = {
                d.approver
                for d in decisions
                if d.decision == "approved" and d.submission == campaign.submission
            }
            lines.append("  " + t("{count} of {needed} approvals", count=len(got), needed=needed))
        if campaign.status_note:
            lines.append(f"  {show(campaign.status_note)}")
        remaining = eta(campaign, counts, self.ctx.now()) if counts else None
        if remaining:
            lines.append("  " + t("about {duration} to go", duration=remaining))
        return "\n".join(lines)

    async def listing(self) -> str:
        """Every campaign and its state, newest first (at most 50), for /campaign list."""
        async with self.ctx.sessions() as session:
            rows = (
                (
                    await session.execute(
                        select(Campaign)
                        .where(Campaign.kind == "campaign")
                        .order_by(Campaign.created_at.desc())
                        .limit(50)
                    )
                )
                .scalars()
                .all()
            )
        if not rows:
            return t("There are no campaigns yet. /campaign new starts one.")
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
        return "\n".join(lines)
