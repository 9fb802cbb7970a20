"""Every `postroom serve` process joins the campaigns that are sending.

A campaign approved (or resumed) in one process is picked up by the others within
`campaigns.poll_s`, so several processes on PostgreSQL share its batches; a campaign left `sending`
by a stop or a crash is resumed the same way. Scheduled starts are re-registered in the persistent
job store at start-up and each round (idempotent: one lost between a commit and a crash is put
back), and the job store is woken each round so a job added by another process (`postroom chat`)
is seen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select

from bot.campaigns.runs import CampaignRuns
from bot.context import Context
from bot.db.models import Campaign
from bot.scheduler import Scheduler

log = logging.getLogger(__name__)


class CampaignWatcher:
    def __init__(self, ctx: Context, runs: CampaignRuns, scheduler: Scheduler):
        self.ctx = ctx
        self.runs = runs
        self.scheduler = scheduler
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        await self._ensure_schedules()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _ensure_schedules(self) -> None:
        async with self.ctx.sessions() as session:
            rows = (
                (await session.execute(select(Campaign).where(Campaign.state == "scheduled"))).scalars().all()
            )
        for campaign in rows:
            if campaign.scheduled_at is not None and not self.runs.is_scheduled(campaign.id):
                self.runs.schedule(campaign)

    async def _loop(self) -> None:
        while True:
            try:
                async with self.ctx.sessions() as session:
                    ids = (
                        (await session.execute(select(Campaign.id).where(Campaign.state == "sending")))
                        .scalars()
                        .all()
                    )
                for cid in ids:
                    self.runs.start(cid, "system")
                await self._ensure_schedules()
                self.scheduler.wakeup()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking for sending campaigns failed")
            await asyncio.sleep(self.ctx.settings.campaigns.poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
