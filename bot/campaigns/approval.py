"""Submitting a campaign for approval and deciding on it: the approval workflow.

A submission opens a new round bound to the hash of what will be sent (subject, template, audience
definition, sender, tracking); the approvers get a card. An approver who is not the requester
approves or rejects it; `campaigns.required_approvals` distinct approvals of the current content
are needed. Every step is a compare-and-set on the campaign's state, so two clicks have one effect.
Once approved, the campaign starts at once or at its scheduled time (`CampaignRuns`), and the card
turns into its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bot.campaigns import service
from bot.campaigns.cards import CampaignCards, schedule_line
from bot.campaigns.notes import decision_name, note, state_name
from bot.campaigns.runs import CampaignRuns
from bot.context import Context
from bot.db.models import Approval, Campaign
from bot.errors import PermissionDenied, Refusal, UserError
from bot.events import Message
from bot.i18n import t


@dataclass
class Submitted:
    campaign: Campaign
    review: service.Review
    posted: int  # how many messengers carry the approval card


@dataclass
class Decided:
    campaign: Campaign
    state: str  # pending_approval (more approvals needed) | approved (sending) | scheduled | rejected
    approvers: list[str] = field(default_factory=list)
    needed: int = 1


def parse_start_time(text: str, now: datetime) -> datetime:
    """An ISO 8601 time with an offset, in the future and within a year."""
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise UserError(
            t("--at “{text}” is not an ISO 8601 time such as 2026-12-01T09:00:00+01:00.", text=raw[:40])
        ) from None
    if when.tzinfo is None:
        raise UserError(
            t(
                "--at “{text}” has no offset: add one (+01:00, Z) so there is no doubt when it starts.",
                text=raw[:40],
            )
        )
    when = when.astimezone(UTC)
    if when <= now:
        raise UserError(t("--at {text} is in the past; give a time from now on.", text=raw[:40]))
    if when > now + timedelta(days=366):
        raise UserError(t("--at is more than a year ahead; schedule it closer to the date."))
    return when


def may_change(campaign: Campaign, email: str, admin: bool, what: str) -> None:
    """Only the campaign's author (or an admin) edits or submits it."""
    if campaign.created_by == email or admin:
        return
    if what == "delete":
        raise PermissionDenied(
            t(
                "Only {email} (who created “{name}”) or an admin can delete it.",
                email=campaign.created_by,
                name=campaign.name,
            )
        )
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


class Approvals:
    def __init__(self, ctx: Context, cards: CampaignCards, runs: CampaignRuns):
        self.ctx = ctx
        self.cards = cards
        self.runs = runs

    async def submit(self, name: str, *, requester: str, via: str, admin: bool, at: str | None) -> Submitted:
        ctx = self.ctx
        when = parse_start_time(at, ctx.now()) if at else None
        async with ctx.sessions() as session, session.begin():
            campaign = await service.get(session, name)
            may_change(campaign, requester, admin, "submit")
            if campaign.state not in ("draft", "rejected"):
                raise Refusal(
                    t(
                        "“{name}” is {state}; only a draft can be submitted.",
                        name=campaign.name,
                        state=state_name(campaign.state),
                    )
                )
            review = await service.review(ctx, session, campaign, spam=True)
            if review.problems:  # a well-formed submit refused by what the review found: no usage line
                raise Refusal(
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
                submitted_by=requester,
                scheduled_at=when,
                status_note=None,
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
                requester,
            )
            campaign.scheduled_at, campaign.status_note = when, None
            service.audit_campaign(
                session,
                campaign,
                actor=requester,
                via=via,
                action="campaign.submit",
                before="draft",
                after="pending_approval",
                detail=f"hash {digest[:12]}" + (f", start {when.isoformat()}" if when else ""),
            )
        posted = await self.cards.post_request(campaign, review, requester)
        return Submitted(campaign, review, posted)

    async def decide(
        self, ref: str, *, approver: str, via: str, approve: bool, reason: str | None, by_id: bool = False
    ) -> Decided:
        """`ref` is a name (typed) or, from a button, an id; a name may be all digits."""
        ctx = self.ctx
        needed = ctx.settings.campaigns.required_approvals
        async with ctx.sessions() as session, session.begin():
            if by_id:
                found = await session.get(Campaign, int(ref))
                if found is None:
                    raise UserError(t("That campaign no longer exists."))
                campaign = found
            else:
                campaign = await service.get(session, ref)
            if approver in (campaign.created_by, campaign.submitted_by):
                raise PermissionDenied(
                    t(
                        "You asked for “{name}”, so you can't approve or reject it yourself; another approver must.",
                        name=campaign.name,
                    )
                )
            if campaign.state != "pending_approval":
                await self._nothing_to_decide(session, campaign, approve)
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
                approver=approver,
                decision="approved" if approve else "rejected",
                reason=reason,
                digest=digest,
            )
            if not fresh:
                raise UserError(
                    t("You already decided on “{name}”; it needs another approver now.", name=campaign.name)
                )
            out = Decided(campaign, "pending_approval", needed=needed)
            if approve:
                out.approvers = await service.approvals_in_force(session, campaign, digest, ctx.now())
                won = True
                if len(out.approvers) >= needed:
                    later = campaign.scheduled_at is not None and campaign.scheduled_at > ctx.now()
                    out.state = "scheduled" if later else "approved"
                    won = await service.transition(session, campaign.id, ("pending_approval",), out.state)
            else:
                out.state = "rejected"
                won = await service.transition(
                    session,
                    campaign.id,
                    ("pending_approval",),
                    "rejected",
                    status_note=note("Rejected by {email}: {reason}", email=approver, reason=reason),
                )
                if won:  # a rejection voids the approvals given before it
                    await service.void_approvals(ctx, session, campaign)
            if not won:
                raise UserError(t("“{name}” was decided by someone else just now.", name=campaign.name))
            service.audit_campaign(
                session,
                campaign,
                actor=approver,
                via=via,
                action=f"campaign.{'approve' if approve else 'reject'}",
                before="pending_approval",
                after=out.state,
                detail=reason if not approve else f"{len(out.approvers)} of {needed} approvals",
            )
        await self._after(out, approver, reason)
        return out

    async def _nothing_to_decide(self, session: object, campaign: Campaign, approve: bool) -> None:
        decided = (
            await session.execute(  # type: ignore[attr-defined]
                select(Approval.approver, Approval.decision)
                .where(Approval.campaign_id == campaign.id)
                .order_by(Approval.id.desc())
                .limit(1)
            )
        ).first()
        values = {"name": campaign.name, "state": state_name(campaign.state)}
        if campaign.state == "draft":
            # Never submitted, or back to draft after a rejection or an edit: nothing was ever "any more".
            automation = campaign.kind == "automation"
            command = (
                f"/automation submit {campaign.name.removeprefix('automation:')}"
                if automation
                else f"/campaign submit {campaign.name}"
            )
            raise Refusal(
                t(
                    "“{name}” is a draft and waits for nobody's approval: its sender submits it with {command}.",
                    name=campaign.name,
                    command=command,
                )
            )
        if decided and approve:
            raise Refusal(
                t(
                    "“{name}” is {state} ({decision} by {email}); there is nothing to approve any more.",
                    decision=decision_name(decided.decision),
                    email=decided.approver,
                    **values,
                )
            )
        if decided:
            raise Refusal(
                t(
                    "“{name}” is {state} ({decision} by {email}); there is nothing to reject any more.",
                    decision=decision_name(decided.decision),
                    email=decided.approver,
                    **values,
                )
            )
        if approve:
            raise Refusal(t("“{name}” is {state}; there is nothing to approve any more.", **values))
        raise Refusal(t("“{name}” is {state}; there is nothing to reject any more.", **values))

    async def _after(self, out: Decided, approver: str, reason: str | None) -> None:
        """The card shows the decision in every messenger; an approved campaign starts or is scheduled."""
        campaign, name, who = out.campaign, out.campaign.name, ", ".join(out.approvers)
        if out.state == "rejected":
            await self.cards.show_outcome(
                campaign,
                lambda: (
                    t("“{name}” was rejected.", name=name),
                    t("Rejected by {email}: {reason}", email=approver, reason=reason),
                ),
                state="rejected",
            )
        elif out.state == "pending_approval":
            async with self.ctx.sessions() as session:
                review = await service.review(self.ctx, session, campaign, spam=True)
            await self.cards.update_card(
                campaign,
                lambda: Message(
                    t(
                        "“{name}” has {count} of {needed} approvals.",
                        name=name,
                        count=len(out.approvers),
                        needed=out.needed,
                    ),
                    self.cards.approval_card(campaign, review, approvers=out.approvers),
                ),
            )
        elif out.state == "scheduled":
            self.runs.schedule(campaign)
            await self.cards.show_outcome(
                campaign,
                lambda: (
                    t("“{name}” was approved.", name=name),
                    t("Approved by {names}; starts {time}", names=who, time=schedule_line(campaign)),
                ),
                out.approvers,
                state="scheduled",
            )
        else:
            self.runs.start(campaign.id, approver)
            await self.cards.show_outcome(
                campaign,
                lambda: (
                    t("“{name}” was approved.", name=name),
                    t("Approved by {names}; sending…", names=who),
                ),
                out.approvers,
                state="approved",
            )
