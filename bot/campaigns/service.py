"""Campaign life: draft → pending_approval → approved → (scheduled) → sending ⇄ paused → completed,
with rejected, cancelled and failed as ends. Every transition is one conditional UPDATE, so two
clicks have one effect. An approval is bound to the hash of what will be sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.campaigns import render_pool, spam_score
from bot.campaigns.audience import AudienceReport, Recipient, describe_audience
from bot.campaigns.messages import CampaignMessages, lint
from bot.campaigns.notes import note
from bot.campaigns.templates import TemplateProblem, html_title, load_source
from bot.context import Context
from bot.db.models import Approval, Campaign, Delivery
from bot.db.upsert import insert_ignore
from bot.errors import Refusal, UserError
from bot.i18n import t
from bot.values import check_text

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EDITABLE = ("draft", "pending_approval", "approved", "rejected", "scheduled")
ENDS = ("completed", "rejected", "cancelled", "failed")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(
            t(
                "“{name}” cannot be a campaign name: use up to 64 letters, digits, dots, dashes or underscores.",
                name=name[:60],
            )
        )
    return name


def check_route(ctx: Context, route: str) -> str:
    """A route a campaign or automation may name (--route): "default" ([smtp]) or a configured
    [smtp.routes.<name>]; anything else is refused with the names there are."""
    name = route.strip().lower()
    names = ctx.settings.smtp.route_names()
    if name not in names:
        raise Refusal(
            t(
                "There is no SMTP route “{route}”; the routes configured are: {routes}.",
                route=route[:40],
                routes=", ".join(names),
            )
        )
    return name


def route_of(ctx: Context, campaign: Campaign) -> str:
    """The route a campaign's mail leaves by: its own, else smtp.domain_routes by its sender, else default."""
    return ctx.settings.smtp.route_for(campaign.route, campaign.from_address)


AUTOMATION_PREFIX = "automation:"  # the standing campaign behind an automation (bot/campaigns/automations.py)


async def get(session: AsyncSession, name: str) -> Campaign:
    check_name(name.removeprefix(AUTOMATION_PREFIX))
    c = (await session.execute(select(Campaign).where(Campaign.name == name))).scalar_one_or_none()
    if c is None:
        raise Refusal(t("There is no campaign “{name}”. /campaign list shows them.", name=name))
    return c


def content_hash(campaign: Campaign, template_digest: str) -> str:
    """What an approval is bound to: subject, template, audience definition (a segment's expression too)
    and sender; for an automation also its trigger, delay and daily cap (`bound`); the SMTP route it names
    (`route`). Parts added later are hashed only when set, so an approval given before them stays valid."""
    h = hashlib.sha256()
    extra = []
    if campaign.audience_where:
        extra.append(f"where:{campaign.audience_where}")
    if campaign.bound:
        extra.append(f"bound:{campaign.bound}")
    if campaign.route:
        extra.append(f"route:{campaign.route}")
    for part in (
        campaign.subject,
        template_digest,
        f"{campaign.audience_kind}:{campaign.audience_name}",
        campaign.from_address,
        campaign.from_name or "",
        "tracking" if campaign.tracking else "no-tracking",
        *extra,
    ):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def current_hash(ctx: Context, campaign: Campaign) -> str:
    source = load_source(ctx.settings.campaigns.templates_dir, campaign.template)
    return content_hash(campaign, source.digest())


async def transition(
    session: AsyncSession, campaign_id: int, from_states: tuple[str, ...], to_state: str, **values: object
) -> bool:
    """Compare-and-set: true for the one caller whose UPDATE matched."""
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.state.in_(from_states))
        .values(state=to_state, **values)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], result).rowcount == 1


def messages_for(ctx: Context, campaign: Campaign) -> CampaignMessages:
    source = load_source(ctx.settings.campaigns.templates_dir, campaign.template)
    return CampaignMessages(ctx.settings, ctx.signer, campaign, source, renders=render_pool.of(ctx))


def default_subject(ctx: Context, template: str) -> str:
    source = load_source(ctx.settings.campaigns.templates_dir, template)
    return html_title(source.html) or ""


@dataclass
class Review:
    """What an approver needs to judge a campaign, and what blocks submission."""

    audience: AudienceReport
    problems: list[str]
    sample: Recipient | None
    messages: CampaignMessages
    spam: spam_score.Outcome | None = None  # the sample's spam score, when asked for and not off


async def review(ctx: Context, session: AsyncSession, campaign: Campaign, *, spam: bool = False) -> Review:
    """Renders one sample per distinct set of attributes, each in a render process within the time budget:
    a heavy template must not stall the event loop (the web app, the messengers' acknowledgements).
    With `spam` (previews and submit), the sample as it would be sent is scored by SpamAssassin, and a
    score at or above the threshold is one of the problems."""
    messages = await asyncio.to_thread(messages_for, ctx, campaign)
    report = await describe_audience(session, ctx.settings, campaign)
    judged = await _judge(messages, report, campaign.kind == "automation")
    if spam and ctx.settings.campaigns.spam_check != "off":
        judged.spam = await _spam(ctx, judged)
        found = spam_score.problem(judged.spam, ctx.settings.campaigns)
        if found is not None:
            judged.problems.append(found)
    return judged


async def _spam(ctx: Context, judged: Review) -> spam_score.Outcome | None:
    """The score of the review's sample (of the placeholder for an audience still empty); None when it
    can't be rendered, which the review has said already."""
    sample = judged.sample or PLACEHOLDER
    try:
        await judged.messages.render_async(sample)  # remembered: the review rendered it
        data, key = judged.messages.spam_sample(sample)
    except TemplateProblem:
        return None
    return await spam_score.of(ctx).check(data, key)


PLACEHOLDER = Recipient("sample@example.com", "Sample", {})  # the sample of an audience still empty


async def _judge(messages: CampaignMessages, report: AudienceReport, standing: bool = False) -> Review:
    problems: list[str] = []
    sample: Recipient | None = None
    assert report.key_sets is not None
    for _keys, (count, recipient) in report.key_sets.items():
        sample = sample or recipient
        try:  # off the event loop: a template that runs into its time budget must not stall the bot
            await messages.render_async(recipient)
        except TemplateProblem as exc:
            if count == 1:
                problems.append(
                    t(
                        "1 recipient (e.g. {email}) can't be rendered: {problem}",
                        email=recipient.email,
                        problem=exc.sentence,
                    )
                )
            else:
                problems.append(
                    t(
                        "{count} recipients (e.g. {email}) can't be rendered: {problem}",
                        count=count,
                        email=recipient.email,
                        problem=exc.sentence,
                    )
                )
    if report.total == 0 and not standing:  # an automation's audience may still be to come
        problems.append(t("The audience is empty after consent and suppression: nobody would receive it."))
    if sample is not None:
        try:
            problems.extend(lint(messages, sample))
        except TemplateProblem:
            pass  # reported above
    else:
        placeholder = PLACEHOLDER
        try:
            await messages.render_async(placeholder)  # lint's render below is then remembered
            problems.extend(lint(messages, placeholder))
        except TemplateProblem as exc:
            problems.append(exc.sentence)
    return Review(report, problems, sample, messages)


async def record_decision(
    ctx: Context,
    session: AsyncSession,
    campaign: Campaign,
    *,
    approver: str,
    decision: str,
    reason: str | None,
    digest: str,
) -> bool:
    """Insert an approval/rejection once; False when this approver already decided on this content.

    ON CONFLICT DO NOTHING, so a double click racing itself finds the first row instead of failing.
    """
    if reason is not None:  # typed in chat and shown on every card about the campaign
        check_text(reason, t("The reason"), 1000, multiline=True)
    ttl = timedelta(hours=ctx.settings.campaigns.approval_ttl_hours)
    if campaign.kind == "automation":  # approved once, it runs standing: re-approved yearly by default
        ttl = timedelta(days=ctx.settings.automations.approval_ttl_days)
    # A scheduled campaign's approval runs from its start time, so scheduling ahead is possible.
    base = max(ctx.now(), campaign.scheduled_at) if campaign.scheduled_at else ctx.now()
    row = {
        "campaign_id": campaign.id,
        "submission": campaign.submission,
        "approver": approver,
        "decision": decision,
        "content_hash": digest,
        "reason": reason,
        "created_at": ctx.now(),
        "expires_at": base + ttl if decision == "approved" else None,
    }
    return (
        await insert_ignore(
            session, Approval, [row], ["campaign_id", "submission", "approver", "content_hash"]
        )
        == 1
    )


async def void_approvals(ctx: Context, session: AsyncSession, campaign: Campaign) -> None:
    """A rejection or a new submission ends the earlier approvals of this campaign: they expire now."""
    await session.execute(
        update(Approval)
        .where(
            Approval.campaign_id == campaign.id,
            Approval.decision == "approved",
            Approval.expires_at > ctx.now(),
        )
        .values(expires_at=ctx.now())
        .execution_options(synchronize_session=False)
    )


async def approvals_in_force(
    session: AsyncSession, campaign: Campaign, digest: str, now: datetime
) -> list[str]:
    """Distinct approvers whose unexpired approval of the current submission matches what will be sent."""
    rows = (
        (
            await session.execute(
                select(Approval.approver)
                .where(
                    Approval.campaign_id == campaign.id,
                    Approval.submission == campaign.submission,
                    Approval.decision == "approved",
                    Approval.content_hash == digest,
                    Approval.expires_at > now,
                )
                .distinct()
            )
        )
        .scalars()
        .all()
    )
    return sorted(rows)


async def approval_gap(ctx: Context, session: AsyncSession, campaign: Campaign, digest: str) -> str | None:
    """Why `digest` may not be sent now, as a status note; None when enough committed, unexpired approvals
    of this very content are in force (invariant 1). Checked whenever sending starts or resumes."""
    if digest != campaign.content_hash:
        return note(
            "What would be sent no longer matches what was approved (its template, subject, audience or "
            "sender changed); submit it again."
        )
    approvers = await approvals_in_force(session, campaign, digest, ctx.now())
    needed = ctx.settings.campaigns.required_approvals
    if len(approvers) < needed:
        return note(
            "Its approval is no longer in force ({count} of {needed} approvals left; an approval lasts "
            "{hours} hours); submit it again.",
            count=len(approvers),
            needed=needed,
            hours=f"{ctx.settings.campaigns.approval_ttl_hours:g}",
        )
    return None


async def counts(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    rows = (
        await session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.campaign_id == campaign_id)
            .group_by(Delivery.status)
        )
    ).all()
    return {status: n for status, n in rows}


def audit_campaign(
    session: AsyncSession,
    campaign: Campaign,
    *,
    actor: str,
    via: str,
    action: str,
    before: str | None = None,
    after: str | None = None,
    detail: str | None = None,
) -> None:
    audit.record(
        session,
        actor=actor,
        via=via,
        action=action,
        subject=f"campaign:{campaign.name}",
        before={"state": before} if before else None,
        after={"state": after} if after else None,
        detail=detail,
    )
