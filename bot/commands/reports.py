"""/report usage [--months 3] [--group <name>]: the usage review (bot/usage/)."""

from __future__ import annotations

import re

from bot.commandline import Flag, Parsed, Spec, usage_of
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import UserError
from bot.events import Message
from bot.groups.service import find_group
from bot.i18n import t
from bot.usage import review

USAGE = Spec(
    ("report", "usage"),
    flags=(
        Flag("months", help="the period: 1 to 24 months (3 unless given)"),
        Flag("group", help="one group's posts and campaigns"),
    ),
    summary="Every send of the last months by use case, with the reasons, and the misuse to fix (HR, admins).",
    roles=("hr",),
)
SPECS = (USAGE,)


def parse_months(raw: str | None) -> int:
    if raw is None:
        return 3
    text = raw.strip()
    # ASCII digits only: str.isdigit() is true for "³" or "①" (int() fails) and for "３" or "٣".
    if not re.fullmatch(r"[0-9]{1,3}", text) or not review.MIN_MONTHS <= int(text) <= review.MAX_MONTHS:
        raise UserError(
            t(
                "Give a number of months from {low} to {high} (not “{text}”).",
                text=raw[:40],
                low=review.MIN_MONTHS,
                high=review.MAX_MONTHS,
            )
        )
    return int(text)


class ReportCommands:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def register(self, table: CommandTable) -> None:
        table.command(USAGE, self.usage)

    async def usage(self, req: Request, p: Parsed) -> Message:
        with usage_of(USAGE):
            months = parse_months(p.flag("months"))
            group = None
            name = p.flag("group")
            if name is not None:
                async with self.ctx.sessions() as session:
                    group = await find_group(session, name, self.ctx.settings)
        until = self.ctx.now()
        found = await review.build(
            self.ctx,
            since=review.months_before(until, months),
            until=until,
            group=group,
            admin="admins" in req.roles,
        )
        return found.message()
