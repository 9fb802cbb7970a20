"""/rules, /rules reload, /sync [--dry-run], /audit, /plan approve|reject <id>"""

from __future__ import annotations

from bot.commandline import Arg, Flag, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request, outsider
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Message
from bot.groups.adoption import DriftChoices
from bot.groups.membership import Memberships
from bot.groups.report import audit
from bot.groups.rules import RuleBook
from bot.i18n import t

RULES = Spec(
    ("rules",),
    summary="The group rules in force: which groups exist and who belongs in them (anyone in the company).",
)
RULES_RELOAD = Spec(
    ("rules", "reload"), summary="Re-read the rules file and apply it (HR, admins).", roles=("hr",)
)
SYNC = Spec(
    ("sync",),
    flags=(Flag("dry-run", takes_value=False, help="show the plan, change nothing"),),
    summary="Reconcile every group with the rules and the people on record (HR, admins).",
    roles=("hr",),
)
AUDIT = Spec(
    ("audit",),
    summary="Groups without owner, empty groups, external members, leavers left behind, "
    "old manual memberships (HR, admins).",
    roles=("hr",),
)
PLAN_APPROVE = Spec(
    ("plan", "approve"),
    (Arg("id"),),
    summary="Approve a held membership plan (approvers, admins).",
    roles=("approvers",),
)
PLAN_REJECT = Spec(
    ("plan", "reject"),
    (Arg("id"),),
    summary="Reject a held membership plan (approvers, admins).",
    roles=("approvers",),
)


SPECS = (RULES, RULES_RELOAD, SYNC, AUDIT, PLAN_APPROVE, PLAN_REJECT)


def _plan_id(raw: str, usage: str) -> int:
    raw = raw.lstrip("#")
    if not raw.isdigit() or len(raw) > 12:
        raise UserError(t("“{text}” is not a plan number.", text=raw[:40]), usage)
    return int(raw)


class LifecycleCommands:
    def __init__(self, ctx: Context, rules: RuleBook, memberships: Memberships, drift: DriftChoices):
        self.ctx = ctx
        self.rules = rules
        self.memberships = memberships
        self.drift = drift

    def register(self, table: CommandTable) -> None:
        table.command(RULES, self.show_rules)
        table.command(RULES_RELOAD, self.rules_reload)
        table.command(SYNC, self.sync)
        table.command(AUDIT, self.audit)
        table.command(PLAN_APPROVE, self.plan_approve)
        table.command(PLAN_REJECT, self.plan_reject)
        table.action("plan.approve", self.approve_click)
        table.action("plan.reject", self.reject_click)

    async def show_rules(self, req: Request, p: Parsed) -> Message:
        if not req.colleague:
            raise outsider(req, "rules")
        return Message(self.rules.describe())

    async def sync(self, req: Request, p: Parsed) -> Message:
        dry_run = p.switch("dry-run")
        text = await self.memberships.reconcile(source="sync", actor=req.email, via=req.via, dry_run=dry_run)
        # The platforms' real membership against Postroom's: what was changed there by hand is listed,
        # never overwritten by a sync (HR adopts or overwrites it with /drift).
        found = self.drift.describe(await self.drift.scan() if dry_run else await self.drift.recorded())
        return Message(text + ("\n" + found if found else ""))

    async def rules_reload(self, req: Request, p: Parsed) -> Message:
        previous = self.rules.in_force()
        loaded = self.rules.read()
        self.rules.use(loaded)
        try:
            text = await self.memberships.reconcile(
                source="rules", actor=req.email, via=req.via, dry_run=False
            )
        except UserError:
            # The new rules could not be put in force (a group with external members turning internal).
            self.rules.use(previous)
            raise
        n = len(loaded.groups)
        loaded_text = (
            t("Loaded {count} group rule from {path}.", count=n, path=loaded.path)
            if n == 1
            else t("Loaded {count} group rules from {path}.", count=n, path=loaded.path)
        )
        return Message(f"{loaded_text}\n{text}")

    async def audit(self, req: Request, p: Parsed) -> Message:
        report = await audit(self.ctx)
        return report.message(self.ctx.settings.groups.manual_max_age_days)

    async def _decide(self, req: Request, raw: str, usage: str, decision: str) -> Message:
        return Message(await self.memberships.decide(_plan_id(raw, usage), req.email, req.via, decision))

    async def plan_approve(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), PLAN_APPROVE.usage, "approved")

    async def plan_reject(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), PLAN_REJECT.usage, "rejected")

    async def approve_click(self, req: Request, action: Action) -> Message | None:
        if not req.has("approvers"):
            raise PermissionDenied(t("Only approvers and admins can approve a membership plan."))
        return await self._decide(req, action.value, PLAN_APPROVE.usage, "approved")

    async def reject_click(self, req: Request, action: Action) -> Message | None:
        if not req.has("approvers"):
            raise PermissionDenied(t("Only approvers and admins can reject a membership plan."))
        return await self._decide(req, action.value, PLAN_REJECT.usage, "rejected")
