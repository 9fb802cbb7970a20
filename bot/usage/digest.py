"""The usage review as a digest to HR: `reports.usage_digest = "weekly"` (Mondays 08:00 UTC, the last
seven days) or `"monthly"` (the 1st, 08:00 UTC, the last month); "off" (the default) schedules nothing."""

from __future__ import annotations

from datetime import timedelta

from bot.context import Context
from bot.messengers import Messengers
from bot.usage import review

JOB_ID = "reports.usage-digest"  # the job's id, and the name of its handler
CRON = {"weekly": "0 8 * * mon", "monthly": "0 8 1 * *"}


class UsageDigest:
    def __init__(self, ctx: Context, messengers: Messengers):
        self.ctx = ctx
        self.messengers = messengers

    @property
    def cron(self) -> str | None:
        """The digest's schedule, or None when it is off."""
        return CRON.get(self.ctx.settings.reports.usage_digest)

    async def send(self) -> None:
        until = self.ctx.now()
        since = (
            until - timedelta(days=7)
            if self.ctx.settings.reports.usage_digest == "weekly"
            else review.months_before(until, 1)
        )
        found = await review.build(self.ctx, since=since, until=until)
        await self.messengers.post("hr", found.message)
