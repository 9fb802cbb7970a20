"""/rules, /rules reload, /sync [--dry-run], /audit, /plan approve|reject <id>"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.commands.parser import Arg, Flag, Parsed, Spec
from bot.db.models import Group
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Message
from bot.groups import planner, service
from bot.groups.report import build_report
from bot.i18n import t

if TYPE_CHECKING:
    from bot.core import Core, Request

RULES = Spec(("rules",), summary="The group rules in force: which groups exist and who belongs in them.")
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
    summary="Approve a held membership plan (approvers).",
    roles=("approvers",),
)
PLAN_REJECT = Spec(
    ("plan", "reject"),
    (Arg("id"),),
    summary="Reject a held membership plan (approvers).",
    roles=("approvers",),
)


def register(core: Core) -> None:
    core.command(RULES)(rules)
    core.command(RULES_RELOAD)(rules_reload)
    core.command(SYNC)(sync)
    core.command(AUDIT)(audit_command)
    core.command(PLAN_APPROVE)(plan_approve)
    core.command(PLAN_REJECT)(plan_reject)
    core.action("plan.approve")(approve_click)
    core.action("plan.reject")(reject_click)


async def rules(core: Core, req: Request, p: Parsed) -> Message:
    return Message(planner.rules_in_force(core).describe())


async def reconcile(core: Core, *, source: str, actor: str, via: str, dry_run: bool) -> str:
    """Definitions from the rules file, then every person against the rules: the /sync plan."""
    ctx = core.ctx
    rules_set = planner.rules_in_force(core)
    async with ctx.sessions() as session, session.begin():
        if dry_run:
            existing = (
                set((await session.execute(select(Group.address))).scalars()) if rules_set.groups else set()
            )
            missing = [g.address for g in rules_set.groups if g.address not in existing]
            defs = [t("would create {group}", group=a) for a in missing]
        else:
            defs = await planner.sync_group_definitions(
                session, rules_set, ctx.settings, actor=actor, via=via
            )
        plan = await planner.plan_reconcile(session, rules_set, ctx.settings, now=ctx.now())
        plan = await service.check_policy(session, plan, ctx.settings)
        reasons = await planner.hold_reasons(session, plan, ctx.settings)
    head = (t("Groups: {changes}.", changes=t("; ").join(defs)) + "\n") if defs else ""
    if dry_run:
        if not plan.changes and not plan.refused:
            return head + t("Everything matches the rules: nothing to change (dry run).")
        text = head + t("Dry run — nothing changed.") + " " + plan.summary()
        if reasons:
            text += "\n" + t("Applying it would need an approver: {reasons}.", reasons=t("; ").join(reasons))
        return text
    if not plan.changes:
        extra = ("\n" + plan.summary()) if plan.refused else ""
        return head + t("Everything matches the rules: nothing changed.") + extra
    out = await planner.execute(core, plan, source=source, actor=actor, via=via)
    if out.held is not None:
        return (
            head
            + t(
                "The plan waits for an approver (plan #{id}): {reasons}.",
                id=out.held,
                reasons=t("; ").join(out.reasons),
            )
            + "\n"
            + plan.summary()
        )
    applied = (
        t("Applied {count} change.", count=out.applied)
        if out.applied == 1
        else t("Applied {count} changes.", count=out.applied)
    )
    return head + applied + " " + plan.summary()


async def sync(core: Core, req: Request, p: Parsed) -> Message:
    return Message(
        await reconcile(core, source="sync", actor=req.email, via=req.via, dry_run=p.switch("dry-run"))
    )


async def rules_reload(core: Core, req: Request, p: Parsed) -> Message:
    previous = core.services.get("rules")
    loaded = planner.reload_rules(core)
    try:
        text = await reconcile(core, source="rules", actor=req.email, via=req.via, dry_run=False)
    except UserError:
        # The new rules could not be put in force (a group with external members turning internal).
        if previous is None:
            core.services.pop("rules", None)
        else:
            core.services["rules"] = previous
        raise
    n = len(loaded.groups)
    loaded_text = (
        t("Loaded {count} group rule from {path}.", count=n, path=loaded.path)
        if n == 1
        else t("Loaded {count} group rules from {path}.", count=n, path=loaded.path)
    )
    return Message(f"{loaded_text}\n{text}")


async def audit_command(core: Core, req: Request, p: Parsed) -> Message:
    report = await build_report(core)
    return report.message(core.ctx.settings.groups.manual_max_age_days)


def _plan_id(raw: str, usage: str) -> int:
    raw = raw.lstrip("#")
    if not raw.isdigit() or len(raw) > 12:
        raise UserError(t("“{text}” is not a plan number.", text=raw[:40]), usage)
    return int(raw)


async def plan_approve(core: Core, req: Request, p: Parsed) -> Message:
    return Message(
        await planner.decide(core, _plan_id(p.arg("id"), PLAN_APPROVE.usage), req.email, req.via, "approved")
    )


async def plan_reject(core: Core, req: Request, p: Parsed) -> Message:
    return Message(
        await planner.decide(core, _plan_id(p.arg("id"), PLAN_REJECT.usage), req.email, req.via, "rejected")
    )


async def approve_click(core: Core, req: Request, action: Action) -> Message | None:
    if not req.has("approvers"):
        raise PermissionDenied(t("Only approvers can approve a membership plan."))
    return Message(
        await planner.decide(core, _plan_id(action.value, PLAN_APPROVE.usage), req.email, req.via, "approved")
    )


async def reject_click(core: Core, req: Request, action: Action) -> Message | None:
    if not req.has("approvers"):
        raise PermissionDenied(t("Only approvers can reject a membership plan."))
    return Message(
        await planner.decide(core, _plan_id(action.value, PLAN_REJECT.usage), req.email, req.via, "rejected")
    )
