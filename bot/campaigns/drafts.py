"""Writing a campaign before it is sent: create a draft, edit it (which voids any approval), look at it
for one recipient, and send one test message to a person in the company."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.addresses import normalise, routing_refusal
from bot.campaigns import segment_store, service
from bot.campaigns.approval import may_change
from bot.campaigns.audience import Recipient, resolve_target, stream_candidates
from bot.campaigns.cards import CampaignCards, Preview
from bot.campaigns.notes import note, state_name
from bot.campaigns.runs import CampaignRuns, start_job_id
from bot.campaigns.templates import CompiledTemplate, TemplateProblem, load_source
from bot.context import Context
from bot.db.models import Campaign, Group, Person
from bot.errors import Refusal, UserError
from bot.i18n import t


def unconfigured_route(ctx: Context, name: str, route: str) -> str:
    return t(
        "“{name}” goes by the SMTP route “{route}”, which is no longer configured (there are: {routes}); "
        "/campaign edit {name} --route picks another.",
        name=name,
        route=route,
        routes=", ".join(ctx.settings.smtp.route_names()),
    )


@dataclass
class Edited:
    campaign: Campaign
    before: str  # the state it was in: anything but draft means an approval request was voided
    fields: list[str]  # what changed, as the options the sender typed (--to, --subject, …)


class Drafts:
    def __init__(self, ctx: Context, cards: CampaignCards, runs: CampaignRuns):
        self.ctx = ctx
        self.cards = cards
        self.runs = runs

    def _check_template(self, template: str, subject: str) -> None:
        # A broken or hostile template is refused now, not at send time.
        CompiledTemplate(load_source(self.ctx.settings.campaigns.templates_dir, template), subject)

    async def create(
        self,
        name: str,
        *,
        to: str,
        template: str,
        subject: str | None,
        tracking: bool,
        actor: str,
        via: str,
        where: str | None = None,
        route: str | None = None,
    ) -> Campaign:
        ctx = self.ctx
        service.check_name(name)
        if route is not None:
            route = service.check_route(ctx, route)
        load_source(ctx.settings.campaigns.templates_dir, template)
        subject = subject or service.default_subject(ctx, template)
        self._check_template(template, subject)
        async with ctx.sessions() as session, session.begin():
            if (await session.execute(select(Campaign.id).where(Campaign.name == name))).scalar_one_or_none():
                raise Refusal(
                    t(
                        "A campaign named “{name}” already exists; pick another name or /campaign edit it.",
                        name=name,
                    )
                )
            target = await resolve_target(session, ctx.settings, to, where)
            campaign = Campaign(
                name=name,
                template=template,
                subject=subject,
                audience_kind=target.kind,
                audience_name=target.name,
                audience_where=target.where,
                from_address=ctx.settings.campaigns.from_address,
                from_name=ctx.settings.campaigns.from_name,
                created_by=actor,
                tracking=tracking,
                route=route,
            )
            session.add(campaign)
            await session.flush()
            service.audit_campaign(
                session, campaign, actor=actor, via=via, action="campaign.create", after="draft"
            )
        return campaign

    async def edit(
        self,
        name: str,
        *,
        to: str | None,
        template: str | None,
        subject: str | None,
        tracking: bool | None,
        actor: str,
        via: str,
        admin: bool,
        where: str | None = None,
        route: str | None = None,
    ) -> Edited:
        """Change a campaign; any edit voids an approval (back to draft, the submitted hash forgotten), and
        every card that showed the request or the approval says so."""
        ctx = self.ctx
        async with ctx.sessions() as session, session.begin():
            campaign = await service.get(session, name)
            may_change(campaign, actor, admin, "edit")
            if campaign.state not in service.EDITABLE:
                raise UserError(
                    t(
                        "“{name}” is {state}; it can no longer be edited.",
                        name=campaign.name,
                        state=state_name(campaign.state),
                    )
                )
            values: dict[str, object] = {}
            if route is not None:
                values["route"] = service.check_route(ctx, route)
            if template:
                load_source(ctx.settings.campaigns.templates_dir, template)
                values["template"] = template
            if subject:
                values["subject"] = subject
            if tracking is not None:
                values["tracking"] = tracking
            if to or where:
                # --where alone narrows what it goes to now: AND-ed with its segment or earlier --where
                # (as /campaign edit's help says); --to starts over from that list or segment.
                if where and not to and campaign.audience_where:
                    where = f"({campaign.audience_where}) and ({where})"
                target = await resolve_target(session, ctx.settings, to or campaign.audience_name, where)
                values.update(
                    audience_kind=target.kind, audience_name=target.name, audience_where=target.where
                )
            self._check_template(
                str(values.get("template", campaign.template)), str(values.get("subject", campaign.subject))
            )
            before = campaign.state
            if before != "draft":
                values["status_note"] = note(
                    "Edited by {email} after it was submitted: that approval request is void; it must be submitted "
                    "again.",
                    email=actor,
                )
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
            # Named as the sender typed them, in /campaign edit's order; never as database columns.
            given = {"--to": to, "--where": where, "--template": template, "--subject": subject}
            fields = [flag for flag, value in given.items() if value]
            fields += ["--tracking"] if tracking is not None else []
            fields += ["--route"] if route is not None else []
            service.audit_campaign(
                session,
                campaign,
                actor=actor,
                via=via,
                action="campaign.edit",
                before=before,
                after="draft",
                detail=", ".join(fields),
            )
        if before != "draft":
            self.runs.scheduler.cancel(start_job_id(campaign.id))
        if before not in ("draft", "rejected"):  # a rejected request's card keeps saying it was rejected
            await self.cards.refresh(campaign.id, "edited")
        return Edited(campaign, before, fields)

    async def audience_note(self, campaign: Campaign) -> str:
        """For a segment: how many it reaches now and a sample, before anything is submitted."""
        if not campaign.audience_where:
            return ""
        found = await segment_store.match(self.ctx, campaign.audience_name, campaign.audience_where)
        if not found.count:
            return "\n" + t("The segment matches nobody on the list now.")
        if found.count == 1:
            return "\n" + t("The segment matches 1 contact now: {sample}.", sample=", ".join(found.sample))
        return "\n" + t(
            "The segment matches {count} contacts now, e.g. {sample}.",
            count=found.count,
            sample=", ".join(found.sample),
        )

    async def preview(self, name: str, recipient: str | None) -> Preview:
        ctx = self.ctx
        async with ctx.sessions() as session:
            campaign = await service.get(session, name)
            review = await service.review(ctx, session, campaign, spam=True)
            chosen = review.sample
            if recipient:
                chosen = await self._find_recipient(session, campaign, normalise(recipient, existing=True))
        out = Preview(campaign, review, chosen, None, None)
        if chosen is not None:
            try:
                out.rendered = await review.messages.render_async(chosen)
            except TemplateProblem as exc:
                out.problem = exc.sentence
        return out

    async def _find_recipient(self, session: AsyncSession, campaign: Campaign, email: str) -> Recipient:
        # Only that address's rows, not the whole audience scanned for one.
        only = lambda column: column == email  # noqa: E731
        async for chunk in stream_candidates(session, self.ctx.settings, campaign, only=only):
            for r in chunk:
                if r.email == email:
                    return r
        raise Refusal(
            t(
                "{email} is not in the audience of “{name}” (or has not given consent).",
                email=email,
                name=campaign.name,
            )
        )

    async def send_test(self, name: str, to: str, *, actor: str, via: str) -> tuple[Campaign, str]:
        """One test message to one person: the sender, or a colleague on record (never a group, never an
        address outside the company); returns the campaign and the subject sent."""
        ctx = self.ctx
        email = normalise(to)
        async with ctx.sessions() as session:
            routed = routing_refusal(email, ctx.settings)
            if routed and email != actor:
                raise Refusal(t("Tests go to internal addresses only: {why}.", why=routed))
            if not ctx.settings.is_internal(email) and email != actor:
                raise Refusal(
                    t(
                        "Tests go to internal addresses only; {email} is outside {domains}. External people get a "
                        "campaign only after approval.",
                        email=email,
                        domains=", ".join(ctx.settings.org.domains),
                    )
                )
            if (await session.execute(select(Group.id).where(Group.address == email))).first():
                raise Refusal(
                    t(
                        "{email} is an email group: a test goes to one person. A group gets a campaign only "
                        "through its approval.",
                        email=email,
                    )
                )
            person = (
                await session.execute(select(Person.status, Person.name).where(Person.email == email))
            ).first()
            status, tester_name = (person.status, person.name) if person is not None else (None, None)
            if email != actor and status == "left":
                raise Refusal(
                    t(
                        "{email} has left the company (HR's record): a test goes to you or to a colleague.",
                        email=email,
                    )
                )
            if email != actor and status != "active":
                raise Refusal(
                    t(
                        "{email} is not a colleague on record: a test goes to you or to a person HR knows.",
                        email=email,
                    )
                )
            campaign = await service.get(session, name)
            review = await service.review(ctx, session, campaign)
        # The mail is addressed to the person testing, by their own name; its content shows the sample
        # recipient's data (as the approvers will see it), and its first line says so.
        tester = Recipient(email, tester_name, {})
        if review.sample is not None:
            banner = t(
                "Test message for {email}: it shows the data of {sample}, a recipient of “{name}”. Nobody else "
                "got it.",
                email=email,
                sample=review.sample.email,
                name=campaign.name,
            )
        else:
            banner = t(
                "Test message for {email}: “{name}” has no recipient yet, so it shows your own address. Nobody "
                "else got it.",
                email=email,
                name=campaign.name,
            )
        try:
            built = await review.messages.build_test_async(review.sample or tester, tester, banner)
        except TemplateProblem as exc:
            raise Refusal(exc.sentence) from None
        route = service.route_of(ctx, campaign)
        if ctx.settings.smtp.server(route) is None:
            raise Refusal(unconfigured_route(ctx, campaign.name, route))
        transport = ctx.new_transport(connections=1, route=route)
        try:
            outcome = await transport.send(campaign.from_address, email, built.data)
        finally:
            await transport.close()
        if not outcome.ok:
            raise Refusal(
                t("The mail server did not take the test message: {detail}.", detail=outcome.detail)
            )
        async with ctx.sessions() as session, session.begin():
            service.audit_campaign(
                session, campaign, actor=actor, via=via, action="campaign.test", detail=f"test to {email}"
            )
        return campaign, f"[TEST] {built.rendered.subject}"
