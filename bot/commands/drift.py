"""/drift, /drift adopt <#|group|all>…, /drift overwrite <#|group|all>…"""

from __future__ import annotations

from bot.commandline import Arg, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import UserError, with_usage
from bot.events import Message
from bot.groups.adoption import Decided, DriftChoices
from bot.i18n import t

DRIFT = Spec(
    ("drift",),
    summary="What was changed by hand on the platforms where groups live (HR, admins).",
    roles=("hr",),
)
DRIFT_ADOPT = Spec(
    ("drift", "adopt"),
    (Arg("item", many=True),),
    summary="Make changes made on a platform Postroom's: by number (#3), group, or all (HR, admins).",
    roles=("hr",),
)
DRIFT_OVERWRITE = Spec(
    ("drift", "overwrite"),
    (Arg("item", many=True),),
    summary="Put Postroom's membership back over changes made on a platform (HR, admins).",
    roles=("hr",),
)
SPECS = (DRIFT, DRIFT_ADOPT, DRIFT_OVERWRITE)


class DriftCommands:
    def __init__(self, ctx: Context, drift: DriftChoices):
        self.ctx = ctx
        self.drift = drift

    def register(self, table: CommandTable) -> None:
        table.command(DRIFT, self.show)
        table.command(DRIFT_ADOPT, self.adopt)
        table.command(DRIFT_OVERWRITE, self.overwrite)

    async def show(self, req: Request, p: Parsed) -> Message:
        text = self.drift.describe(await self.drift.recorded())
        return Message(text or t("No drift is recorded: /sync --dry-run reads the platforms again."))

    async def adopt(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p, DRIFT_ADOPT, "adopt")

    async def overwrite(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p, DRIFT_OVERWRITE, "overwrite")

    async def _decide(self, req: Request, p: Parsed, spec: Spec, choice: str) -> Message:
        try:
            items = await self.drift.select(p.many("item"))
        except UserError as exc:
            raise with_usage(exc, spec.usage) from None
        out: Decided = await self.drift.decide(items, choice, actor=req.email, via=req.via)
        lines = []
        if out.done:
            lines.append(
                t("Adopted {count}:", count=len(out.done))
                if choice == "adopt"
                else t("Overwrote {count}:", count=len(out.done))
            )
            lines += ["  " + line for line in out.done]
        if out.refused:
            lines.append(t("Refused, so left as they are:"))
            lines += ["  " + line for line in out.refused]
        if out.held is not None:
            lines.append(t("The rest waits for an approver (plan #{id}).", id=out.held))
        if not lines:
            lines.append(t("Nothing changed."))
        return Message("\n".join(lines))
