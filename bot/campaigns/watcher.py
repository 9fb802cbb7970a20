"""Every `postroom serve` process joins the campaigns that are sending.

A campaign approved (or resumed) in one process is picked up by the others within
`campaigns.poll_s`, so several processes on PostgreSQL share its batches. Scheduled starts are
re-registered in the persistent job store at start-up (idempotent), and the job store is woken
each round so a job added by another process (`postroom chat`) is seen.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from bot.db.models import Campaign

if TYPE_CHECKING:
    from bot.core import Core

log = logging.getLogger(__name__)


class CampaignWatcher:
    def __init__(self, core: Core):
        self.core = core
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        await self._ensure_schedules()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _ensure_schedules(self) -> None:
        """Every scheduled campaign has its job (one lost between a commit and a crash is put back)."""
        from bot.commands.campaigns import schedule_start, start_job_id

        async with self.core.ctx.sessions() as session:
            rows = (
                (await session.execute(select(Campaign).where(Campaign.state == "scheduled"))).scalars().all()
            )
        scheduler = self.core.services.get("scheduler")
        for campaign in rows:
            if campaign.scheduled_at is None:
                continue
            if scheduler is None or scheduler.next_run(start_job_id(campaign.id)) is None:
                await schedule_start(self.core, campaign)

    async def _loop(self) -> None:
        from bot.commands.campaigns import is_running_here, resume_sending

        while True:
            try:
                async with self.core.ctx.sessions() as session:
                    ids = (
                        (await session.execute(select(Campaign.id).where(Campaign.state == "sending")))
                        .scalars()
                        .all()
                    )
                for cid in ids:
                    if not is_running_here(self.core, cid):
                        resume_sending(self.core, cid)
                await self._ensure_schedules()
                scheduler = self.core.services.get("scheduler")
                if scheduler is not None and scheduler.leader:
                    scheduler.aps.wakeup()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking for sending campaigns failed")
            await asyncio.sleep(self.core.ctx.settings.campaigns.poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
