"""/suppressions list|show|lift (admins): who is suppressed, on what evidence, and lifting a wrong one."""

from __future__ import annotations

from functools import partial

from bot import suppressions
from bot.addresses import normalise
from bot.commandline import Arg, Flag, Parsed, Spec
from bot.context import Context
from bot.core import CommandTable, Request
from bot.errors import UserError, with_usage
from bot.events import Message
from bot.i18n import t

LIST = Spec(
    ("suppressions", "list"),
    (),
    (
        Flag(
            "reason",
            help="Only this reason: hard_bounce, soft_bounce, complaint, unsubscribed, manual, erased.",
        ),
    ),
    "The newest suppressions with their reason, and how many there are of each (admins).",
    ("admins",),
)
SHOW = Spec(
    ("suppressions", "show"),
    (Arg("email"),),
    (),
    "Why an address is suppressed: the server's reply or the bounce report, the campaign, when (admins).",
    ("admins",),
)
LIFT = Spec(
    ("suppressions", "lift"),
    (Arg("email"),),
    (Flag("reason", required=True, help="Why it is lifted (kept in the audit trail)."),),
    "Lift a suppression, audited; an unsubscribe or a complaint needs consent given after it (admins).",
    ("admins",),
)
MAX_REASON = 1000


SPECS = (LIST, SHOW, LIFT)


class SuppressionCommands:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def register(self, table: CommandTable) -> None:
        table.command(LIST, partial(list_command, self.ctx))
        table.command(SHOW, partial(show_command, self.ctx))
        table.command(LIFT, partial(lift_command, self.ctx))


def _printable(text: str, limit: int = 500) -> str:
    """Evidence comes from other servers: one line, no control characters, bounded."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]


def _address(p: Parsed, spec: Spec) -> str:
    try:
        return normalise(p.arg("email"), existing=True)
    except UserError as exc:
        raise with_usage(exc, spec.usage) from None


def _who(entry: suppressions.Entry) -> str:
    return entry.email or t("(erased; hash {hash}…)", hash=entry.email_hash[:12])


async def list_command(ctx: Context, req: Request, p: Parsed) -> Message:
    reason = p.flag("reason")
    if reason is not None and reason not in suppressions.REASONS:
        raise UserError(
            t(
                "“{text}” is not a suppression reason; the reasons are {reasons}.",
                text=reason[:40],
                reasons=", ".join(suppressions.REASONS),
            ),
            LIST.usage,
        )
    found = await suppressions.overview(ctx, reason)
    if not found.total:
        return Message(t("Nobody is suppressed."), ephemeral=True)
    counts = ", ".join(
        f"{suppressions.reason_name(r)} {n}"
        for r, n in sorted(found.by_reason.items(), key=lambda i: (-i[1], i[0]))
    )
    lines = [t("Suppressed addresses: {count} ({counts}).", count=found.total, counts=counts)]
    if found.newest:
        lines.append(t("Newest {count}:", count=len(found.newest)))
    for e in found.newest:
        lines.append(
            "  "
            + t(
                "{who} — {reason}, {date}",
                who=_who(e),
                reason=suppressions.reason_name(e.reason),
                date=f"{e.since:%Y-%m-%d}",
            )
            + (f" ({e.campaign})" if e.campaign else "")
        )
    if found.total > len(found.newest):
        lines.append(t("/suppressions show <email> shows one with its evidence."))
    return Message("\n".join(lines), ephemeral=True)


async def show_command(ctx: Context, req: Request, p: Parsed) -> Message:
    email = _address(p, SHOW)
    e = await suppressions.find(ctx, email)
    if e is None:
        return Message(t("{email} is not suppressed.", email=email), ephemeral=True)
    lines = [
        t(
            "{email} is suppressed: {reason}, since {time} UTC.",
            email=email,
            reason=suppressions.reason_name(e.reason),
            time=f"{e.since:%Y-%m-%d %H:%M}",
        ),
        "  " + t("how: {kind}", kind=suppressions.kind_name(e.kind)),
    ]
    if e.evidence:
        lines.append("  " + t("evidence: {text}", text=_printable(e.evidence)))
    if e.campaign:
        lines.append("  " + t("campaign: {name}", name=e.campaign))
    if e.source:
        lines.append("  " + t("source: {text}", text=_printable(e.source, 200)))
    if e.actor:
        lines.append("  " + t("by: {who}", who=e.actor))
    return Message("\n".join(lines), ephemeral=True)


async def lift_command(ctx: Context, req: Request, p: Parsed) -> Message:
    email = _address(p, LIFT)
    why = (p.flag("reason") or "").strip()
    if len(why) > MAX_REASON:
        raise UserError(t("Keep the reason under 1,000 characters."), LIFT.usage)
    if any(not c.isprintable() for c in why):
        raise UserError(
            t("The reason can't contain control characters or text-direction overrides."), LIFT.usage
        )
    e = await suppressions.lift(ctx, email, why=why, actor=req.email, via=req.via)
    return Message(
        t(
            "Lifted the suppression of {email} ({reason}, since {date}); campaigns may mail it again. "
            "The audit trail keeps the evidence and your reason.",
            email=email,
            reason=suppressions.reason_name(e.reason),
            date=f"{e.since:%Y-%m-%d}",
        )
    )
