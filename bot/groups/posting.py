"""Who may post to a group, and whose post waits for a moderator: one decision for the embedded relay and
the Postfix policy service alike.

`post:` (the rules file) is `members`, `company` (anyone at the company's domains), `anyone`, or
`moderated` (every post waits, whoever sends it). `moderate: nonmembers` holds, instead of refusing, a
post from someone `post:` does not let in. A group's moderators (its owners unless the rules name
`moderators`) and the senders a moderator chose to "always allow" are never held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.db.models import Group, GroupSenderAllow, Membership

Action = Literal["accept", "hold", "refuse"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""  # why a post is refused or held, in English (an SMTP reply's text)


def moderators_of(group: Group) -> list[str]:
    return list(group.moderators or group.owners or [])


async def decide(session: AsyncSession, settings: Settings, group: Group, sender: str) -> Decision:
    """Whether `sender` (an envelope sender, "" for none) may post to `group` now."""
    sender = sender.lower()
    allowed = member = False
    if sender and group.post_policy != "anyone":
        allowed = (
            await session.execute(
                select(GroupSenderAllow.id).where(
                    GroupSenderAllow.group_id == group.id, GroupSenderAllow.email == sender
                )
            )
        ).first() is not None
        if group.post_policy == "members" and not allowed:
            member = (
                await session.execute(
                    select(Membership.id).where(Membership.group_id == group.id, Membership.email == sender)
                )
            ).first() is not None
    return decide_with(settings, group, sender, member=member, allowed=allowed)


def decide_with(settings: Settings, group: Group, sender: str, *, member: bool, allowed: bool) -> Decision:
    """The decision once it is known whether the sender is a member and on the group's allow list."""
    sender = sender.lower()
    if group.post_policy == "anyone":
        return Decision("accept")
    if not sender:
        return Decision("refuse", "this group takes no mail without a sender")
    if sender in moderators_of(group) or sender in (group.owners or []):
        return Decision("accept")
    if group.post_policy == "moderated":
        return (
            Decision("accept")
            if allowed
            else Decision("hold", "every post to this group waits for a moderator")
        )
    if group.post_policy == "members":
        refusal = "" if member else "only members of this group may post to it"
    else:  # company, and anything unknown: the safe middle
        refusal = (
            ""
            if settings.is_internal(sender)
            else f"only people at {', '.join(settings.org.domains)} may post to this group"
        )
    if not refusal or allowed:
        return Decision("accept")
    if group.moderation == "nonmembers":
        return Decision("hold", f"{refusal}: the post waits for a moderator")
    return Decision("refuse", refusal)
