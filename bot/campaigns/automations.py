"""Automations: a campaign approved once that then sends one message whenever its trigger fires.

An automation is a standing campaign. Its Campaign row (kind "automation", named "automation:<name>")
holds the template, subject, audience, sender and state, and goes through the one approval workflow
(bot/campaigns/approval.py: submit, decide, a card, approvers who are not the author) bound to the
content hash — which for an automation covers its trigger, delay and daily cap too (`Campaign.bound`).
Once approved it is `sending` for as long as it runs: each trigger inserts a delivery row (one per
contact per trigger: `Delivery.trigger_key`, unique, so a scan repeated or run again after a restart
makes none twice), and the delivery engine sends those rows like any campaign's — the approval checked
against what is on disk at every run, suppressions, consent and the frequency cap checked per batch.
Any edit voids the approval: the campaign goes back to draft and nothing is sent until it is approved
again.

Triggers:
- `confirmed:<list>`: a contact confirmed (or was added) on the list after the automation started;
- `<attribute> - 14d` (or `+ 3d`, or none): the contact's date attribute (YYYY-MM-DD…) comes round —
  fired on the day, or up to `automations.catch_up_days` later if Postroom was down; once per date;
- `joined`: an employee the HR lifecycle applied as a joiner (internal onboarding mail);
- `inactive:<N>d`: a contact with no open or click for N days (a re-permission message), once.

Scans run on `automations.scan_cron` (job `automations.scan`) and right after a signup is confirmed; a
joiner arrives through the lifecycle's hook. A daily cap bounds what one automation sends; its
complaint and failure rates are watched, and crossing a threshold pauses it with a card.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.campaigns import service
from bot.campaigns.approval import Approvals, Submitted, may_change
from bot.campaigns.audience import Target, audience_filter, known_attributes, resolve_target
from bot.campaigns.cards import CampaignCards
from bot.campaigns.engagement import ENGAGED, events_of
from bot.campaigns.notes import note, show, state_name
from bot.campaigns.report import refuse_unsent, report_message
from bot.campaigns.runs import CampaignRuns
from bot.campaigns.templates import CompiledTemplate, load_source
from bot.campaigns.triggers import (
    Trigger,
    bound_text,
    closest_kind,
    delay_text,
    not_a_trigger,
    parse_cap,
    parse_delay,
    parse_trigger,
)
from bot.context import Context
from bot.db.models import Automation, Campaign, CampaignEvent, Contact, ContactList, Delivery, ListMember
from bot.db.upsert import insert_ignore
from bot.errors import Refusal, UserError
from bot.events import Card, Joiner, Message
from bot.i18n import t

log = logging.getLogger(__name__)
SCAN_JOB = "automations.scan"
PREFIX = service.AUTOMATION_PREFIX
LIVE = ("sending",)  # an approved automation runs as a campaign that is sending
DELETABLE = ("draft", "paused")  # a running one is paused first; approvals in flight are withdrawn by an edit
VOIDABLE = ("draft", "pending_approval", "approved", "scheduled", "rejected", "sending", "paused", "failed")


def trigger_of(a: Automation) -> Trigger:
    return Trigger(a.trigger, a.trigger_list, a.attribute, a.offset_days or 0, a.inactive_days)


@dataclass
class Shown:
    automation: Automation
    campaign: Campaign


class Automations:
    def __init__(self, ctx: Context, approvals: Approvals, runs: CampaignRuns, cards: CampaignCards):
        self.ctx = ctx
        self.approvals = approvals
        self.runs = runs
        self.cards = cards

    def jobs(self) -> dict[str, Any]:
        return {SCAN_JOB: self.scan}

    def schedule(self) -> None:
        self.runs.scheduler.cron(SCAN_JOB, self.ctx.settings.automations.scan_cron, SCAN_JOB)

    # -- looking up ------------------------------------------------------------------------------
    async def _get(self, session: AsyncSession, name: str) -> Shown:
        service.check_name(name)
        row = (
            await session.execute(
                select(Automation, Campaign)
                .join(Campaign, Campaign.id == Automation.campaign_id)
                .where(Automation.name == name)
            )
        ).first()
        if row is None:
            raise Refusal(t("There is no automation “{name}”. /automation list shows them.", name=name))
        return Shown(row[0], row[1])

    async def get(self, name: str) -> Shown:
        async with self.ctx.sessions() as session:
            return await self._get(session, name)

    async def listing(self) -> list[Shown]:
        async with self.ctx.sessions() as session:
            rows = (
                await session.execute(
                    select(Automation, Campaign)
                    .join(Campaign, Campaign.id == Automation.campaign_id)
                    .order_by(Automation.name)
                    .limit(100)
                )
            ).all()
        return [Shown(a, c) for a, c in rows]

    # -- writing ---------------------------------------------------------------------------------
    def _check_template(self, template: str, subject: str) -> None:
        CompiledTemplate(load_source(self.ctx.settings.campaigns.templates_dir, template), subject)

    async def _target(
        self, session: AsyncSession, trigger: Trigger, to: str | None, where: str | None
    ) -> Target:
        settings = self.ctx.settings
        if trigger.kind == "joined":
            if to or where:
                raise UserError(t("A joined automation mails the new employee; it takes no --to or --where."))
            return Target("joiners", "new employees")
        if trigger.kind == "confirmed":
            lst = (
                await session.execute(
                    select(ContactList.name).where(ContactList.named(str(trigger.list_name)))
                )
            ).scalar_one_or_none()
            if lst is None:
                raise UserError(
                    t(
                        "There is no contact list “{name}”. /lists shows them.",
                        name=str(trigger.list_name)[:60],
                    )
                )
            target = await resolve_target(session, settings, to or lst, where)
            if target.kind != "list" or target.name != lst:
                raise UserError(
                    t("A confirmed:{list} automation goes to that list (or a segment of it).", list=lst)
                )
            return target
        if not to:
            attribute = str(trigger.attribute or "")
            near = closest_kind(attribute) if trigger.kind == "date" else None
            if near is not None and abs(len(attribute) - len(near)) <= 2:
                raise not_a_trigger(attribute)  # a misspelt trigger word (`joind`), not a missing --to
            raise UserError(t("This trigger needs --to: the contact list or segment it watches."))
        target = await resolve_target(session, settings, to, where)
        if target.kind != "list":
            raise UserError(t("This trigger watches contacts: --to must be a contact list or a segment."))
        if trigger.kind == "date":
            await self._check_date_attribute(session, trigger, target.name)
        return target

    @staticmethod
    async def _check_date_attribute(session: Any, trigger: Trigger, list_name: str) -> None:
        """A date trigger names an attribute the list's contacts have: a typo (`renewal_dat`) or a
        misspelt trigger word (`joind`) would otherwise fire for nobody, silently."""
        attribute = str(trigger.attribute)
        known = await known_attributes(session, list_name)
        if known is None or attribute in known:
            return
        if closest_kind(attribute) is not None:
            raise not_a_trigger(attribute)
        near = difflib.get_close_matches(attribute, sorted(known), n=1, cutoff=0.6)
        shown = ", ".join(sorted(known)[:20]) or t("none")
        if near:
            raise UserError(
                t(
                    "No contact on “{list}” has a date attribute “{name}” — did you mean “{near}”? Their "
                    "attributes: {attributes}.",
                    list=list_name,
                    name=attribute[:64],
                    near=near[0],
                    attributes=shown,
                )
            )
        raise UserError(
            t(
                "No contact on “{list}” has a date attribute “{name}”. Their attributes: {attributes}.",
                list=list_name,
                name=attribute[:64],
                attributes=shown,
            )
        )

    async def create(
        self,
        name: str,
        *,
        on: str,
        template: str,
        subject: str | None,
        delay: str | None,
        to: str | None,
        where: str | None,
        cap: str | None,
        tracking: bool,
        actor: str,
        via: str,
        route: str | None = None,
    ) -> Shown:
        ctx = self.ctx
        service.check_name(name)
        if route is not None:
            route = service.check_route(ctx, route)
        trigger = parse_trigger(on)
        delay_s, daily_cap = parse_delay(delay), parse_cap(cap)
        load_source(ctx.settings.campaigns.templates_dir, template)
        subject = subject or service.default_subject(ctx, template)
        self._check_template(template, subject)
        async with ctx.sessions() as session, session.begin():
            if (await session.execute(select(Automation.id).where(Automation.name == name))).first():
                raise Refusal(
                    t("An automation named “{name}” already exists; /automation edit changes it.", name=name)
                )
            target = await self._target(session, trigger, to, where)
            if trigger.kind == "confirmed":  # the list as it is spelt, whatever case was typed
                trigger = dataclasses.replace(trigger, list_name=target.name)
            campaign = Campaign(
                name=PREFIX + name,
                kind="automation",
                template=template,
                subject=subject,
                audience_kind=target.kind,
                audience_name=target.name,
                audience_where=target.where,
                bound=bound_text(trigger, delay_s, daily_cap),
                from_address=ctx.settings.campaigns.from_address,
                from_name=ctx.settings.campaigns.from_name,
                created_by=actor,
                tracking=tracking,
                route=route,
            )
            session.add(campaign)
            await session.flush()
            automation = Automation(
                name=name,
                campaign_id=campaign.id,
                trigger=trigger.kind,
                trigger_list=trigger.list_name,
                attribute=trigger.attribute,
                offset_days=trigger.offset_days,
                inactive_days=trigger.inactive_days,
                delay_s=delay_s,
                daily_cap=daily_cap,
                created_by=actor,
                created_at=ctx.now(),
                cap_count=0,
            )
            session.add(automation)
            await session.flush()
            service.audit_campaign(
                session,
                campaign,
                actor=actor,
                via=via,
                action="automation.create",
                after="draft",
                detail=campaign.bound,
            )
        return Shown(automation, campaign)

    async def edit(
        self,
        name: str,
        *,
        on: str | None,
        template: str | None,
        subject: str | None,
        delay: str | None,
        to: str | None,
        where: str | None,
        cap: str | None,
        tracking: bool | None,
        actor: str,
        via: str,
        admin: bool,
        route: str | None = None,
    ) -> tuple[Shown, str]:
        """Change an automation; any edit voids its approval (back to draft: nothing is sent until it is
        approved again), and its card says so. Returns it and the state it was in."""
        ctx = self.ctx
        async with ctx.sessions() as session, session.begin():
            shown = await self._get(session, name)
            a, campaign = shown.automation, shown.campaign
            may_change(campaign, actor, admin, "edit")
            if campaign.state not in VOIDABLE:
                raise UserError(
                    t(
                        "“{name}” is {state}; it can no longer be edited.",
                        name=name,
                        state=state_name(campaign.state),
                    )
                )
            trigger = parse_trigger(on) if on else trigger_of(a)
            delay_s = parse_delay(delay) if delay is not None else a.delay_s
            daily_cap = parse_cap(cap) if cap is not None else a.daily_cap
            values: dict[str, Any] = {}
            if route is not None:
                values["route"] = service.check_route(ctx, route)
            if template:
                load_source(ctx.settings.campaigns.templates_dir, template)
                values["template"] = template
            if subject:
                values["subject"] = subject
            if tracking is not None:
                values["tracking"] = tracking
            if on or to or where:
                current_to = to or (campaign.audience_name if campaign.audience_kind == "list" else None)
                target = await self._target(
                    session,
                    trigger,
                    current_to if trigger.kind != "joined" else None,
                    where if where is not None else (None if to else campaign.audience_where),
                )
                values.update(
                    audience_kind=target.kind, audience_name=target.name, audience_where=target.where
                )
                if trigger.kind == "confirmed":
                    trigger = dataclasses.replace(trigger, list_name=target.name)
            self._check_template(
                str(values.get("template", campaign.template)), str(values.get("subject", campaign.subject))
            )
            before = campaign.state
            values["bound"] = bound_text(trigger, delay_s, daily_cap)
            result = await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign.id, Campaign.state == before)
                .values(
                    state="draft",
                    content_hash=None,
                    status_note=note(
                        "Edited by {email}: its approval is void and nothing is sent until it is approved again.",
                        email=actor,
                    ),
                    **values,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                raise UserError(t("“{name}” changed state while you edited it; try again.", name=name))
            await session.execute(
                update(Automation)
                .where(Automation.id == a.id)
                .values(
                    trigger=trigger.kind,
                    trigger_list=trigger.list_name,
                    attribute=trigger.attribute,
                    offset_days=trigger.offset_days,
                    inactive_days=trigger.inactive_days,
                    delay_s=delay_s,
                    daily_cap=daily_cap,
                    last_scan_at=None,  # nothing caught up from before the new approval
                )
            )
            service.audit_campaign(
                session,
                campaign,
                actor=actor,
                via=via,
                action="automation.edit",
                before=before,
                after="draft",
                detail=values["bound"],
            )
        if before != "draft":
            await self.cards.refresh(campaign.id, "edited")
        return await self.get(name), before

    async def submit(self, name: str, *, requester: str, via: str, admin: bool) -> Submitted:
        """Submit a draft — or a failed automation, whose status says "submit it again": it goes back to
        draft for a new round of approval (what is on disk now is what the approvers see)."""
        shown = await self.get(name)  # a sentence for a name that is not an automation
        if shown.campaign.state == "failed":
            may_change(shown.campaign, requester, admin, "submit")
            async with self.ctx.sessions() as session, session.begin():
                if await service.transition(
                    session, shown.campaign.id, ("failed",), "draft", finished_at=None
                ):
                    service.audit_campaign(
                        session,
                        shown.campaign,
                        actor=requester,
                        via=via,
                        action="automation.resubmit",
                        before="failed",
                        after="draft",
                    )
        return await self.approvals.submit(PREFIX + name, requester=requester, via=via, admin=admin, at=None)

    async def pause(self, name: str, *, actor: str, via: str) -> Shown:
        shown = await self.get(name)
        await self.runs.pause(shown.campaign, actor=actor, via=via)
        return await self.get(name)

    async def resume(self, name: str, *, actor: str, via: str) -> tuple[Shown, str | None]:
        shown = await self.get(name)
        if shown.campaign.state == "failed":  # stopped because its approval no longer holds: approve again
            raise UserError(
                t(
                    "Automation “{name}” failed and needs a new approval, not a resume: /automation submit "
                    "{name}.",
                    name=name,
                )
            )
        gap = await self.runs.resume(shown.campaign, actor=actor, via=via)
        return await self.get(name), gap

    async def delete(self, name: str, *, actor: str, via: str, admin: bool) -> int:
        """Take a draft or paused automation away: nothing of it runs again and its name is free; its
        campaign stays (cancelled, renamed) with every delivery, event and audit entry, so its history
        and report remain. Returns how many messages it had sent."""
        async with self.ctx.sessions() as session, session.begin():
            shown = await self._get(session, name)
            a, campaign = shown.automation, shown.campaign
            may_change(campaign, actor, admin, "delete")
            if campaign.state not in DELETABLE:
                state = running_name(campaign.state)
                raise UserError(
                    t(
                        "Automation “{name}” is {state}; /automation pause {name} first.",
                        name=name,
                        state=state,
                    )
                    if campaign.state in LIVE
                    else t(
                        "Automation “{name}” is {state}; only a draft or a paused automation can be deleted.",
                        name=name,
                        state=state,
                    )
                )
            sent = (
                await session.execute(
                    select(func.count()).where(Delivery.campaign_id == campaign.id, Delivery.status == "sent")
                )
            ).scalar_one()
            kept_as = f"{PREFIX}{name} (deleted #{campaign.id})"[:200]
            if not await service.transition(
                session,
                campaign.id,
                DELETABLE,
                "cancelled",
                name=kept_as,
                status_note=note("Automation deleted by {email}.", email=actor),
            ):
                raise UserError(t("“{name}” changed state while you deleted it; try again.", name=name))
            await session.execute(
                update(Delivery)
                .where(Delivery.campaign_id == campaign.id, Delivery.status == "pending")
                .values(status="cancelled")
                .execution_options(synchronize_session=False)
            )
            await session.execute(delete(Automation).where(Automation.id == a.id))
            service.audit_campaign(
                session,
                campaign,
                actor=actor,
                via=via,
                action="automation.delete",
                before=campaign.state,
                after="cancelled",
                detail=f"{trigger_of(a).canonical()}; kept as {kept_as}",
            )
        return int(sent)

    async def report(self, name: str) -> Message:
        """The automation's report: figures, chart and report page, as for a campaign."""
        campaign = (await self.get(name)).campaign
        await refuse_unsent(self.ctx, campaign)
        return await report_message(self.ctx, campaign)

    # -- what triggers do -------------------------------------------------------------------------
    async def scan(self) -> dict[str, int]:
        """Scheduled job: every running automation's trigger, once; then send what is due."""
        made: dict[str, int] = {}
        async with self.ctx.sessions() as session:
            rows = (
                (
                    await session.execute(
                        select(Automation.name)
                        .join(Campaign, Campaign.id == Automation.campaign_id)
                        .where(Campaign.state.in_(LIVE), Automation.trigger != "joined")
                    )
                )
                .scalars()
                .all()
            )
        for name in rows:
            try:
                made[name] = await self.scan_one(name)
            except Exception:
                log.exception("scanning automation %s failed", name)
        async with self.ctx.sessions() as session:
            live = (
                (
                    await session.execute(
                        select(Automation.name)
                        .join(Campaign, Campaign.id == Automation.campaign_id)
                        .where(Campaign.state.in_(LIVE))
                    )
                )
                .scalars()
                .all()
            )
        for name in live:
            await self.check_rates(name)
        await self.send_due()
        return made

    async def on_list_joined(self, list_name: str) -> None:
        """A contact confirmed (or was added) on `list_name`: the welcome automations of that list look now."""
        async with self.ctx.sessions() as session:
            names = (
                (
                    await session.execute(
                        select(Automation.name)
                        .join(Campaign, Campaign.id == Automation.campaign_id)
                        .where(
                            Campaign.state.in_(LIVE),
                            Automation.trigger == "confirmed",
                            Automation.trigger_list == list_name,
                        )
                    )
                )
                .scalars()
                .all()
            )
        for name in names:
            if await self.scan_one(name):
                await self.send_due(name)

    async def on_joined(self, joiners: list[Joiner]) -> None:
        """The lifecycle's hook: employees joined (one, or a snapshot's run); each running joined
        automation mails each of them once, in their order, while its daily cap has room."""
        async with self.ctx.sessions() as session:
            names = (
                (
                    await session.execute(
                        select(Automation.name)
                        .join(Campaign, Campaign.id == Automation.campaign_id)
                        .where(Campaign.state.in_(LIVE), Automation.trigger == "joined")
                    )
                )
                .scalars()
                .all()
            )
        for name in names:
            made = 0
            async with self.ctx.sessions() as session, session.begin():
                shown = await self._get(session, name)
                waiting = list(joiners)
                while waiting:
                    # As one joiner at a time would: a delivery made already takes no room from the next.
                    room = await self._room(session, shown.automation, len(waiting))
                    if room < 1:
                        break
                    batch, waiting = waiting[:room], waiting[room:]
                    new = await insert_ignore(
                        session,
                        Delivery,
                        [
                            {
                                "campaign_id": shown.campaign.id,
                                "email": joiner.email,
                                "name": joiner.name,
                                "attributes": joiner.attributes,
                                "status": "pending",
                                "attempts": 0,
                                "trigger_key": f"joined:{joiner.person_id}",
                                "next_attempt_at": self.ctx.now()
                                + timedelta(seconds=shown.automation.delay_s),
                            }
                            for joiner in batch
                        ],
                        ["campaign_id", "email", "trigger_key"],
                    )
                    await self._count(session, shown.automation, new)
                    made += new
            if made:
                await self.send_due(name)

    async def send_due(self, name: str | None = None) -> None:
        """Start (or join) the send of every running automation with a message due now."""
        now = self.ctx.now()
        async with self.ctx.sessions() as session:
            query = (
                select(Campaign.id)
                .join(Automation, Automation.campaign_id == Campaign.id)
                .where(
                    Campaign.state.in_(LIVE),
                    exists(
                        select(Delivery.id).where(
                            Delivery.campaign_id == Campaign.id,
                            Delivery.status.in_(("pending", "sending")),
                            (Delivery.next_attempt_at.is_(None)) | (Delivery.next_attempt_at <= now),
                        )
                    ),
                )
            )
            if name is not None:
                query = query.where(Automation.name == name)
            ids = (await session.execute(query)).scalars().all()
        for campaign_id in ids:
            self.runs.start(campaign_id, "automation")

    async def _room(self, session: AsyncSession, a: Automation, wanted: int) -> int:
        """How many more messages today's cap allows (locked on PostgreSQL, so two scans count once)."""
        query = select(Automation.cap_day, Automation.cap_count).where(Automation.id == a.id)
        if self.ctx.dialect == "postgresql":
            query = query.with_for_update()
        day, count = (await session.execute(query)).one()
        cap = a.daily_cap or self.ctx.settings.automations.daily_cap
        used = count if day == self.ctx.now().date().isoformat() else 0
        return max(0, min(wanted, cap - used))

    async def _count(self, session: AsyncSession, a: Automation, made: int) -> None:
        today = self.ctx.now().date().isoformat()
        await session.execute(
            update(Automation)
            .where(Automation.id == a.id)
            .values(
                cap_count=Automation.cap_count + made,
                cap_day=today,
                last_scan_at=self.ctx.now(),
            )
            .execution_options(synchronize_session=False)
        )

    def _confirmed_since(self, a: Automation, campaign: Campaign, now: Any) -> Any:
        """Who a welcome is for: contacts who joined since it started — and, when it stopped running
        (failed or paused) and was approved again, also those who joined in the gap, since its last scan,
        at most `automations.catch_up_days` back. An edit clears `last_scan_at`: the edited automation
        starts afresh from its new approval."""
        since = campaign.started_at or now
        if a.last_scan_at is not None:
            window = now - timedelta(days=self.ctx.settings.automations.catch_up_days)
            since = min(since, max(a.last_scan_at, window))
        return since

    async def scan_one(self, name: str) -> int:
        """Insert the deliveries one automation's trigger calls for now; returns how many were new.

        One INSERT … SELECT over the audience (set-based, whatever its size); a delivery already made
        for the same contact and trigger is left out, so a scan run twice — or again after a restart —
        makes nothing twice."""
        ctx = self.ctx
        now = ctx.now()
        async with ctx.sessions() as session, session.begin():
            shown = await self._get(session, name)
            a, campaign = shown.automation, shown.campaign
            if campaign.state not in LIVE or a.trigger == "joined":
                return 0
            if a.cap_day != now.date().isoformat():
                await session.execute(
                    update(Automation)
                    .where(Automation.id == a.id)
                    .values(cap_day=now.date().isoformat(), cap_count=0)
                )
            room = await self._room(session, a, 10_000_000)
            if room <= 0:
                return 0
            key: Any
            conditions: list[Any] = [
                ContactList.name == campaign.audience_name,
                Contact.consent_at.is_not(None),
                audience_filter(campaign, now),
            ]
            if a.trigger == "confirmed":
                key = literal(f"confirmed:{a.trigger_list}")
                conditions.append(ListMember.subscribed_at >= self._confirmed_since(a, campaign, now))
            elif a.trigger == "date":
                value = Contact.attributes[a.attribute or ""].as_string()
                day = func.substr(value, 1, 10)
                today = now.date()
                catch_up = ctx.settings.automations.catch_up_days
                lo = (today - timedelta(days=a.offset_days + catch_up)).isoformat()
                hi = (today - timedelta(days=a.offset_days)).isoformat()
                conditions += [value.like("____-__-__%"), day >= lo, day <= hi]
                key = literal(f"date:{a.attribute}=") + day
            else:  # inactive
                since = now - timedelta(days=a.inactive_days or 1)
                conditions += [Contact.created_at < since, ~events_of(Contact.email, ENGAGED, since)]
                key = literal(f"inactive:{a.inactive_days}d")
            already = exists(
                select(Delivery.id).where(
                    Delivery.campaign_id == campaign.id,
                    Delivery.email == Contact.email,
                    Delivery.trigger_key == key,
                )
            )
            due = now + timedelta(seconds=a.delay_s)
            chosen = (
                select(
                    literal(campaign.id),
                    Contact.email,
                    Contact.name,
                    Contact.attributes,
                    literal("pending"),
                    literal(0),
                    key,
                    literal(due),
                )
                .join(ListMember, ListMember.contact_id == Contact.id)
                .join(ContactList, ContactList.id == ListMember.list_id)
                .where(and_(*conditions), ~already)
                .order_by(Contact.id)
                .limit(room)
            )
            ins = postgresql.insert if ctx.dialect == "postgresql" else sqlite.insert
            stmt = (
                ins(Delivery)
                .from_select(
                    [
                        "campaign_id",
                        "email",
                        "name",
                        "attributes",
                        "status",
                        "attempts",
                        "trigger_key",
                        "next_attempt_at",
                    ],
                    chosen,
                )
                .on_conflict_do_nothing(index_elements=["campaign_id", "email", "trigger_key"])
            )
            result = await session.execute(stmt)
            made = max(0, int(result.rowcount or 0))
            await self._count(session, a, made)
        return made

    # -- watching its rates -----------------------------------------------------------------------
    async def check_rates(self, name: str) -> str | None:
        """Pause an automation whose complaints or failures cross their threshold, with a card; returns
        the note when it paused."""
        ctx, cfg = self.ctx, self.ctx.settings.automations
        async with ctx.sessions() as session:
            shown = await self._get(session, name)
            campaign = shown.campaign
            last = (
                select(Delivery.id, Delivery.status)
                .where(
                    Delivery.campaign_id == campaign.id, Delivery.status.in_(("sent", "bounced", "failed"))
                )
                .order_by(Delivery.id.desc())
                .limit(cfg.rate_window)
                .subquery()
            )
            rows = dict(
                (await session.execute(select(last.c.status, func.count()).group_by(last.c.status))).all()
            )
            complaints = (
                await session.execute(
                    select(func.count(func.distinct(CampaignEvent.delivery_id))).where(
                        CampaignEvent.campaign_id == campaign.id,
                        CampaignEvent.kind == "complaint",
                        CampaignEvent.delivery_id.in_(select(last.c.id)),
                    )
                )
            ).scalar_one()
        seen = sum(rows.values())
        if campaign.state not in LIVE or seen < cfg.rate_min_samples:
            return None
        failed = rows.get("bounced", 0) + rows.get("failed", 0)
        if complaints / seen >= cfg.complaint_pause_share:
            stored = note(
                "Paused by itself: {count} complaints among its last {seen} messages ({share}, the limit is {limit}). "
                "Check the template and the audience, then /automation resume {name}.",
                count=complaints,
                seen=seen,
                share=f"{complaints / seen:.2%}",
                limit=f"{cfg.complaint_pause_share:.2%}",
                name=name,
            )
        elif failed / seen >= cfg.error_pause_share:
            stored = note(
                "Paused by itself: {count} of its last {seen} messages bounced or failed ({share}, the limit is {limit}). "
                "Check the addresses and the mail server, then /automation resume {name}.",
                count=failed,
                seen=seen,
                share=f"{failed / seen:.2%}",
                limit=f"{cfg.error_pause_share:.2%}",
                name=name,
            )
        else:
            return None
        async with ctx.sessions() as session, session.begin():
            if not await service.transition(session, campaign.id, LIVE, "paused", status_note=stored):
                return None
            service.audit_campaign(
                session,
                campaign,
                actor="system",
                via="automation",
                action="automation.pause",
                before="sending",
                after="paused",
                detail=show(stored),
            )
        await self.cards.refresh(campaign.id, "paused")

        def card() -> Message:
            return Message(
                t("Automation “{name}” paused itself.", name=name),
                Card(
                    title=t("Automation “{name}” paused", name=name),
                    fields=(
                        (t("Why"), show(stored)),
                        (t("Trigger"), trigger_of(shown.automation).describe()),
                    ),
                ),
            )

        await self.cards.messengers.post("approvals", card)
        return stored

    # -- what people read -------------------------------------------------------------------------
    async def status(self, name: str) -> str:
        shown = await self.get(name)
        a, c = shown.automation, shown.campaign
        async with self.ctx.sessions() as session:
            counts = await service.counts(session, c.id)
            due = (
                await session.execute(
                    select(func.min(Delivery.next_attempt_at)).where(
                        Delivery.campaign_id == c.id, Delivery.status == "pending"
                    )
                )
            ).scalar()
        where = f" where {c.audience_where}" if c.audience_where else ""
        lines = [
            t("Automation “{name}” is {state}.", name=name, state=running_name(c.state)),
            "  "
            + t(
                "when {trigger}; delay {delay}; daily cap {cap}",
                trigger=trigger_of(a).describe(),
                delay=delay_text(a.delay_s),
                cap=a.daily_cap or self.ctx.settings.automations.daily_cap,
            ),
            "  "
            + t(
                "template {template}, subject “{subject}”, to {audience}",
                template=c.template,
                subject=c.subject,
                audience=(c.audience_name + where),
            ),
        ]
        today = self.ctx.now().date().isoformat()
        made = a.cap_count if a.cap_day == today else 0
        lines.append(
            "  " + (t("1 message made today") if made == 1 else t("{count} messages made today", count=made))
        )
        if counts:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if due is not None:
            lines.append("  " + t("next message due {time} UTC", time=f"{due:%Y-%m-%d %H:%M}"))
        if c.status_note:
            lines.append("  " + show(c.status_note))
        return "\n".join(lines)


def running_name(state: str) -> str:
    """An automation's state: its campaign's `sending` is `running`."""
    return t("running") if state == "sending" else state_name(state)
