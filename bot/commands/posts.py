"""/posts <group> [--since …] (the post log, for owners and HR); /post approve|reject|allow <n> and the
moderation card's buttons (a group's moderators, HR, admins)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.commandline import Arg, Flag, Parsed, Spec, usage_of
from bot.context import Context
from bot.core import CommandTable, Request
from bot.db.models import GroupPost, GroupPostDelivery
from bot.errors import PermissionDenied, UserError
from bot.events import Action, Message
from bot.groups import service
from bot.groups.moderation import Moderation
from bot.i18n import t

POSTS = Spec(
    ("posts",),
    (Arg("group"),),
    (Flag("since", help="how far back: 7d, 24h, or a date like 2026-11-01 (default 30d)"),),
    summary="What was posted to a group: who, when, size, recipients, held or not (owners, HR, admins).",
    roles=("hr", "owners"),
)
POST_APPROVE = Spec(
    ("post", "approve"), (Arg("id"),), summary="Send a held post to its group (moderators, HR, admins)."
)
POST_REJECT = Spec(
    ("post", "reject"),
    (Arg("id"), Arg("reason", required=False, rest=True)),
    summary="Refuse a held post; the sender is told the reason (moderators, HR, admins).",
)
POST_ALLOW = Spec(
    ("post", "allow"),
    (Arg("id"),),
    summary="Send a held post and let its sender post to the group without waiting from now on (moderators, HR, admins).",
)
SPECS = (POSTS, POST_APPROVE, POST_REJECT, POST_ALLOW)
SHOWN = 50
MAX_DAYS = 3650
_AGO = re.compile(r"^(\d{1,5})([dhw])$")


def parse_since(raw: str | None, now: datetime) -> datetime:
    if raw is None:
        return now - timedelta(days=30)
    text = raw.strip().lower()
    m = _AGO.match(text)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        hours = n * {"h": 1, "d": 24, "w": 24 * 7}[unit]
        if hours > MAX_DAYS * 24:
            raise UserError(t("--since goes back at most {days} days.", days=MAX_DAYS))
        return now - timedelta(hours=hours)
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise UserError(
            t(
                "“{text}” is not a time for --since: give 7d, 24h, 2w or a date like 2026-11-01.",
                text=raw[:40],
            )
        ) from None
    if day > now:
        raise UserError(t("--since {date} is in the future.", date=text))
    return day


def _post_id(raw: str) -> int:
    raw = raw.lstrip("#")
    if not raw.isdigit() or len(raw) > 12:
        raise UserError(t("“{text}” is not a post number.", text=raw[:40]))
    return int(raw)


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{max(1, round(n / 1024))} KB"


async def _copies(session: AsyncSession, post_ids: list[int]) -> dict[int, dict[str, int]]:
    """Each relayed post's own copies by what became of them: sent, bounced, failed, waiting (a retry after
    a failed try), going (not tried yet, or out now)."""
    if not post_ids:
        return {}
    d = GroupPostDelivery
    tried = (d.attempts > 0) | d.last_error.is_not(None)  # a copy the relay refused, put back uncounted too
    rows = await session.execute(
        select(d.post_id, d.status, tried, func.count())
        .where(d.post_id.in_(post_ids))
        .group_by(d.post_id, d.status, tried)
    )
    out: dict[int, dict[str, int]] = {}
    for post_id, status, was_tried, n in rows:
        if status == "pending":
            key = "waiting" if was_tried else "going"
        else:
            key = "going" if status == "sending" else status
        counts = out.setdefault(post_id, {})
        counts[key] = counts.get(key, 0) + n
    return out


def _copies_said(counts: dict[str, int] | None) -> str | None:
    """What became of a post's copies, when it is not simply "delivered" or "delivering": a post whose
    copies bounced, failed or wait to be retried never reads as delivered."""
    if not counts or not any(counts.get(k) for k in ("bounced", "failed", "waiting")):
        return None
    parts = [t("{count} delivered", count=counts.get("sent", 0))]
    if counts.get("bounced"):
        parts.append(t("{count} bounced", count=counts["bounced"]))
    if counts.get("failed"):
        parts.append(t("{count} failed", count=counts["failed"]))
    if counts.get("waiting"):
        parts.append(t("{count} waiting to retry", count=counts["waiting"]))
    if counts.get("going"):
        parts.append(t("{count} going out", count=counts["going"]))
    return ", ".join(parts)


class PostCommands:
    def __init__(self, ctx: Context, moderation: Moderation):
        self.ctx = ctx
        self.moderation = moderation

    def register(self, table: CommandTable) -> None:
        table.command(POSTS, self.posts)
        table.command(POST_APPROVE, self.approve)
        table.command(POST_REJECT, self.reject)
        table.command(POST_ALLOW, self.allow)
        table.action("post.approve", self.approve_click)
        table.action("post.reject", self.reject_click)
        table.action("post.allow", self.allow_click)

    async def posts(self, req: Request, p: Parsed) -> Message:
        with usage_of(POSTS):
            since = parse_since(p.flag("since"), self.ctx.now())
            async with self.ctx.sessions() as session:
                group = await service.find_group(session, p.arg("group"), self.ctx.settings)
                if not (req.has("hr") or req.owns(group.owners)):
                    raise PermissionDenied(
                        t("The post log of {group} is for its owners, HR and admins.", group=group.address)
                    )
                rows = list(
                    (
                        await session.execute(
                            select(GroupPost)
                            .where(GroupPost.group_id == group.id, GroupPost.received_at >= since)
                            .order_by(GroupPost.received_at.desc(), GroupPost.id.desc())
                            .limit(SHOWN + 1)
                        )
                    ).scalars()
                )
                copies = await _copies(
                    session, [p.id for p in rows[:SHOWN] if p.state in ("sending", "delivered")]
                )
        if not rows:
            return Message(
                t(
                    "Nothing was posted to {group} since {date}.",
                    group=group.address,
                    date=since.strftime("%Y-%m-%d"),
                )
            )
        states = {
            "held": t("held"),
            "sending": t("delivering"),
            "delivered": t("delivered"),
            "accepted": t("delivered by Postfix"),
            "released": t("approved, delivered by Postfix"),
            "rejected": t("rejected"),
            "expired": t("expired"),
        }
        lines = [t("Posts to {group} since {date}:", group=group.address, date=since.strftime("%Y-%m-%d"))]
        for post in rows[:SHOWN]:
            flags = []
            if post.moderated:
                flags.append(t("moderated"))
            if post.has_links:
                flags.append(t("links"))
            if post.has_unsubscribe:
                flags.append(t("unsubscribe-like footer"))
            lines.append(
                t(
                    "#{id} {when} {sender} “{subject}” {size}, {recipients} — {state}{flags}",
                    id=post.id,
                    when=post.received_at.strftime("%Y-%m-%d %H:%M"),
                    sender=post.sender or "<>",
                    subject=post.subject or t("(no subject)"),
                    size=_size(post.size),
                    recipients=t("1 recipient")
                    if post.recipient_count == 1
                    else t("{count} recipients", count=post.recipient_count),
                    state=_copies_said(copies.get(post.id)) or states.get(post.state, post.state),
                    flags=(" (" + ", ".join(flags) + ")") if flags else "",
                )
            )
        if len(rows) > SHOWN:
            lines.append(t("Only the newest {count} are shown; narrow it with --since.", count=SHOWN))
        return Message("\n".join(lines))

    async def _decide(self, req: Request, raw: str, decision: str, reason: str | None, spec: Spec) -> Message:
        with usage_of(spec):
            post_id = _post_id(raw)
            if reason is not None and len(reason) > 500:
                raise UserError(t("A reason can be at most 500 characters."))
            if reason is not None and any(not c.isprintable() for c in reason):
                raise UserError(
                    t("The reason can't contain control characters or text-direction overrides."), spec.usage
                )
        return Message(
            await self.moderation.decide(
                post_id,
                req.email,
                privileged=req.has("hr"),
                colleague=req.colleague,
                decision=decision,
                reason=reason,
            )
        )

    async def approve(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), "approve", None, POST_APPROVE)

    async def reject(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), "reject", p.opt("reason"), POST_REJECT)

    async def allow(self, req: Request, p: Parsed) -> Message:
        return await self._decide(req, p.arg("id"), "allow", None, POST_ALLOW)

    async def approve_click(self, req: Request, action: Action) -> Message | None:
        return await self._decide(req, action.value, "approve", None, POST_APPROVE)

    async def reject_click(self, req: Request, action: Action) -> Message | None:
        return await self._decide(req, action.value, "reject", None, POST_REJECT)

    async def allow_click(self, req: Request, action: Action) -> Message | None:
        return await self._decide(req, action.value, "allow", None, POST_ALLOW)
