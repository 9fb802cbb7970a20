"""Supervision of sending: the one trigger that starts or joins a send, and pause, resume, cancel.

`CampaignRuns.start` is the only way a send begins, whoever asks: an approval, a scheduled start
coming due, `/campaign resume`, a restart or another process joining (bot/campaigns/watcher.py).
It moves an approved (or due scheduled) campaign to `sending` and snapshots its audience, or joins a
campaign that is already sending; the delivery engine checks the approval against what is on disk
before every run (invariant 1). One run per campaign per process; progress updates the card.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import select, update

from bot.background import Background
from bot.campaigns import service
from bot.campaigns.cards import CampaignCards
from bot.campaigns.engine import DeliveryEngine
from bot.campaigns.notes import english, note, state_name
from bot.context import Context
from bot.db.models import Campaign, Delivery
from bot.errors import Refusal, UserError
from bot.i18n import t
from bot.scheduler import Scheduler

log = logging.getLogger(__name__)
START_JOB = "campaigns.start"  # the scheduled start's handler
# "idle": an automation's standing campaign with nothing due; its triggers start it again.
ENDS = ("completed", "failed", "cancelled", "missing", "idle")
PROGRESS_EVERY_S = 3.0  # messengers rate-limit message updates; every few seconds is plenty


def start_job_id(campaign_id: int) -> str:
    return f"campaign-start-{campaign_id}"


class CampaignRuns:
    def __init__(self, ctx: Context, cards: CampaignCards, scheduler: Scheduler, worker_id: str):
        self.ctx = ctx
        self.cards = cards
        self.scheduler = scheduler
        self.worker_id = worker_id
        self.background = Background("campaigns", log)
        self._runs: dict[int, asyncio.Task[Any]] = {}
        self._engines: dict[int, DeliveryEngine] = {}

    def jobs(self) -> dict[str, Any]:
        return {START_JOB: self.start_scheduled}

    # -- the one trigger -----------------------------------------------------------------------
    def start(self, campaign_id: int, actor: str) -> None:
        """Send an approved or due campaign, or join one that is sending, unless this process already does."""
        if self.is_running(campaign_id):
            return  # the running task notices a resume itself (see _send)
        self._runs[campaign_id] = self.background.spawn(
            self._send(campaign_id, actor), name=f"campaign-{campaign_id}"
        )

    async def start_scheduled(self, campaign_id: int) -> None:
        """Scheduled job: a scheduled campaign's start time has come."""
        self.start(campaign_id, "scheduler")

    def is_running(self, campaign_id: int) -> bool:
        task = self._runs.get(campaign_id)
        return task is not None and not task.done()

    async def _send(self, campaign_id: int, actor: str) -> None:
        last_update = [0.0]

        async def on_event(cid: int, what: str) -> None:
            now = time.monotonic()
            if what == "progress" and now - last_update[0] < PROGRESS_EVERY_S:
                return
            last_update[0] = now
            await self.cards.refresh(cid, what)

        me = asyncio.current_task()
        state = await DeliveryEngine(self.ctx, worker_id=self.worker_id).start(campaign_id, actor)
        if state != "sending":
            await self.cards.refresh(campaign_id, state)
            if self._runs.get(campaign_id) is me:
                self._runs.pop(campaign_id, None)
            return
        while True:
            engine = DeliveryEngine(
                self.ctx, on_event=on_event, on_notice=self.cards.tell, worker_id=self.worker_id
            )
            self._engines[campaign_id] = engine
            result = await engine.run(campaign_id)
            if self._runs.get(campaign_id) is me:
                self._runs.pop(campaign_id, None)
            # A resume that came while this run was winding down found it still alive and left the
            # work to it: look once more, and carry on unless another run took over.
            if result.state in ENDS or engine.stopped:
                return
            if await self._state(campaign_id) != "sending" or campaign_id in self._runs:
                return
            self._runs[campaign_id] = me  # type: ignore[assignment]

    async def _state(self, campaign_id: int) -> str | None:
        async with self.ctx.sessions() as session:
            return (await session.execute(select(Campaign.state).where(Campaign.id == campaign_id))).scalar()

    # -- scheduled starts ----------------------------------------------------------------------
    def schedule(self, campaign: Campaign) -> None:
        """Put the start in the persistent job store (it survives a restart; one process runs it)."""
        assert campaign.scheduled_at is not None
        self.scheduler.at(
            start_job_id(campaign.id), campaign.scheduled_at, START_JOB, campaign_id=campaign.id
        )

    def is_scheduled(self, campaign_id: int) -> bool:
        return self.scheduler.next_run(start_job_id(campaign_id)) is not None

    # -- pause, resume, cancel -----------------------------------------------------------------
    async def pause(self, campaign: Campaign, *, actor: str, via: str) -> None:
        await self._move(
            campaign, ("sending",), "paused", "pause", note("Paused by {email}.", email=actor), actor, via
        )
        await self.cards.refresh(campaign.id, "paused")

    async def resume(self, campaign: Campaign, *, actor: str, via: str) -> str | None:
        """Send the rest of a paused campaign; returns why not (a stored note) when it failed instead."""
        gap = await self._fail_unless_approved(campaign, actor=actor, via=via)
        if gap is not None:
            return gap
        await self._move(
            campaign, ("paused",), "sending", "resume", note("Resumed by {email}.", email=actor), actor, via
        )
        self.start(campaign.id, actor)
        return None

    async def cancel(self, campaign: Campaign, *, actor: str, via: str) -> None:
        live = ("draft", "pending_approval", "approved", "scheduled", "sending", "paused")
        await self._move(
            campaign, live, "cancelled", "cancel", note("Cancelled by {email}.", email=actor), actor, via
        )
        self.scheduler.cancel(start_job_id(campaign.id))
        await self.cards.refresh(campaign.id, "cancelled")

    async def _move(
        self,
        campaign: Campaign,
        from_states: tuple[str, ...],
        to: str,
        verb: str,
        stored: str,
        actor: str,
        via: str,
    ) -> None:
        async with self.ctx.sessions() as session, session.begin():
            if not await service.transition(session, campaign.id, from_states, to, status_note=stored):
                current = state_name(await self._state(campaign.id) or "missing")
                values = {"name": campaign.name, "state": current}
                raise Refusal(
                    {
                        "paused": t("“{name}” is {state}; it can't be paused.", **values),
                        "sending": t("“{name}” is {state}; it can't be resumed.", **values),
                        "cancelled": t("“{name}” is {state}; it can't be cancelled.", **values),
                    }[to]
                )
            if to == "cancelled":
                await session.execute(
                    update(Delivery)
                    .where(Delivery.campaign_id == campaign.id, Delivery.status == "pending")
                    .values(status="cancelled")
                )
            service.audit_campaign(
                session,
                campaign,
                actor=actor,
                via=via,
                action=f"campaign.{verb}",
                before=campaign.state,
                after=to,
            )

    async def _fail_unless_approved(self, campaign: Campaign, *, actor: str, via: str) -> str | None:
        """A paused campaign resumes only with its approval in force for what is on disk now (invariant 1);
        otherwise it fails here, audited, and the card says why. Returns that reason or None. The engine
        checks again when it starts sending, for every other path."""
        ctx = self.ctx
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
                actor=actor,
                via=via,
                action="campaign.fail",
                before="paused",
                after="failed",
                detail=english(gap),
            )
        await self.cards.refresh(campaign.id, "failed")
        return gap

    # -- shutdown ------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop sending here; campaigns stay `sending` and the next start (or another process) resumes them."""
        for engine in list(self._engines.values()):
            engine.stop()
        runs = [task for task in self._runs.values() if not task.done()]
        if runs:  # let the batch in flight be recorded (unsent rows go back to pending) rather than wait for a lease
            await asyncio.wait(runs, timeout=10)
        await self.background.cancel()
