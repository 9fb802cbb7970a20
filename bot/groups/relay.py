"""Group addresses deliver (the `local` provider): the embedded SMTP server's route for groups, a durable
relay in the way of a real list server — accept into a store, answer, deliver from the store.

Only SMTP clients in `relay.trusted_networks` (default: loopback) may post to a group address; any
other peer gets "550 relaying denied", so nobody who merely reaches the port can claim a company
sender and fan out to every member. Bounce and unsubscribe addresses stay open to everyone.

A recipient is read as the Postfix policy service reads it (`group_candidates` in bot/groups/posting.py:
case, quotes, a trailing dot, `postfix.recipient_delimiter`): `ENG+x@Corp.Example` is eng@corp.example.
At RCPT time a group address is claimed only if its posting policy (bot/groups/posting.py) lets the
sender post or holds the post for a moderator; otherwise the sender gets a 550 with the reason during the
SMTP conversation. At DATA time the message, its post-log entry and one delivery row per member are
committed, and only then does the client hear 250; the fan-out (bot/groups/fanout.py) delivers from the
store. A member of two addressed groups gets one copy, also when one of the posts is held and
approved later, and when the groups came in separate transactions (the same envelope sender and Message-ID
within `relay.duplicate_window_hours`: posts.snapshot_members leaves out who a sibling post of the message
covers). Mailman would send one copy per list; Postroom's groups are a company's distribution lists, where
one message is one copy (as Postfix's own de-duplication gives on the Postfix path); each post's
`recipient_count` is its group's members the message reached. A client that timed out and sends the same
message again (same group, envelope sender and Message-ID, within `relay.duplicate_window_hours`) hears
250 and nobody gets it twice. A message that already passed through the group (its loop marker, or too
many `Received:` lines) is refused at once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.context import Context
from bot.db.models import Group, Membership
from bot.groups.fanout import GroupFanout
from bot.groups.moderation import Moderation
from bot.groups.posting import Unreadable, decide, group_candidates
from bot.groups.posts import (
    BadMessage,
    Inspected,
    add_post,
    dedupe_key,
    duplicate_of,
    inspect,
    loops_through,
    member_count,
    snapshot_members,
)
from bot.groups.service import unknown_addresses
from bot.mail.server import Route, no_such_address

log = logging.getLogger(__name__)
ROLE_LISTS = ("hr", "senders", "approvers", "admins")


class GroupRelay:
    def __init__(self, ctx: Context, fanout: GroupFanout, moderation: Moderation):
        self.ctx = ctx
        self.fanout = fanout
        self.moderation = moderation
        self._tasks: set[asyncio.Task[None]] = set()

    async def _group(self, session: AsyncSession, rcpt: str) -> Group | None:
        """The group `rcpt` reaches, read the way the policy service and Postfix read it
        (`group_candidates`: eng+x@, "eng"@, ENG@Corp.Example, a trailing dot): the first candidate that
        is a group; None for none, or for a form that can't be read (this relay then delivers nothing)."""
        try:
            candidates = group_candidates(rcpt, self.ctx.settings)
        except Unreadable:
            return None
        if not candidates:
            return None
        found = {
            g.address: g
            for g in (await session.execute(select(Group).where(Group.address.in_(candidates)))).scalars()
        }
        return next((found[c] for c in candidates if c in found), None)

    async def accepts(self, rcpt: str, mail_from: str) -> str | None:
        mail_from = "" if mail_from == "<>" else mail_from  # aiosmtpd's null sender
        async with self.ctx.sessions() as session:
            group = await self._group(session, rcpt)
            if group is None:
                if await self._nobody(session, rcpt):
                    # A company address that is no group and nobody's: refused here, during the SMTP
                    # conversation, so no catch-all route behind this one (the demo's mailbox) takes it.
                    return no_such_address(rcpt)
                return None
            decision = await decide(session, self.ctx.settings, group, mail_from)
        if decision.action == "refuse":
            return f"550 5.7.1 <{rcpt}>: {decision.reason}"
        return "250 OK"

    async def _nobody(self, session: AsyncSession, rcpt: str) -> bool:
        """A company address no group has and no source knows (HR, a messenger, a membership, a role)."""
        settings = self.ctx.settings
        if not settings.is_internal(rcpt) or any(rcpt in getattr(settings.roles, r) for r in ROLE_LISTS):
            return False
        if not await unknown_addresses(session, settings, [rcpt]):
            return False
        member = await session.execute(select(Membership.id).where(Membership.email == rcpt).limit(1))
        return member.first() is None

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        mail_from = "" if mail_from == "<>" else mail_from
        settings = self.ctx.settings
        try:
            seen = inspect(data, settings.relay.max_header_bytes)
        except BadMessage as exc:
            return exc.reply
        try:
            return await self._store(mail_from, rcpts, data, seen)
        except IntegrityError:  # the same post stored by a retry at the same moment: it is in
            log.info("a post from %s was stored by a concurrent retry", mail_from or "<>")
            return "250 2.0.0 Already accepted: this message was received before"

    async def _store(self, mail_from: str, rcpts: list[str], data: bytes, seen: Inspected) -> str:
        settings = self.ctx.settings
        now = self.ctx.now()
        window = timedelta(hours=settings.relay.duplicate_window_hours)
        held: list[int] = []
        queued = 0
        duplicates = 0
        async with self.ctx.sessions() as session, session.begin():
            groups: list[Group] = []
            for rcpt in rcpts:  # eng@ and eng+x@ in one envelope are one post to eng@
                group = await self._group(session, rcpt)
                if group is not None and all(g.id != group.id for g in groups):
                    groups.append(group)
            for group in groups:
                if loops_through(seen, group):
                    log.warning("mail loop on %s refused (from %s)", group.address, mail_from or "<>")
                    return "554 5.4.6 Mail loop detected: this message has already passed through the group"
            for group in groups:
                decision = await decide(session, settings, group, mail_from)
                if decision.action == "refuse":  # the policy changed between RCPT and DATA
                    return f"550 5.7.1 <{group.address}>: {decision.reason}"
                key = dedupe_key(group.id, mail_from, seen.message_id, data)
                if await duplicate_of(session, key, window, now) is not None:
                    duplicates += 1
                    continue
                if decision.action == "hold":
                    post = await add_post(
                        session,
                        group,
                        via="relay",
                        state="held",
                        sender=mail_from,
                        data=data,
                        inspected=seen,
                        key=key,
                        now=now,
                        size=len(data),
                        expires_at=now + timedelta(hours=settings.relay.hold_hours),
                    )
                    post.recipient_count = await member_count(session, group.id)
                    held.append(post.id)
                    continue
                post = await add_post(
                    session,
                    group,
                    via="relay",
                    state="sending",
                    sender=mail_from,
                    data=data,
                    inspected=seen,
                    key=key,
                    now=now,
                    size=len(data),
                )
                # never mail a group to itself, and a member of two addressed groups once: the groups
                # stored before this one are sibling posts of the message
                copies = await snapshot_members(session, post, window)
                queued += copies
                log.info(
                    "post #%s to %s from %s: %s members, %s copies (the others through another group of it)",
                    post.id,
                    group.address,
                    mail_from or "<>",
                    post.recipient_count,
                    copies,
                )
        if queued:
            self.fanout.wake()
        for post_id in held:
            task = asyncio.get_running_loop().create_task(self._announce(post_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if held and not queued and not duplicates:
            return "250 2.0.0 Held for a moderator: the group's moderators decide whether it goes out"
        if duplicates and not queued and not held:
            return "250 2.0.0 Already accepted: this message was received before"
        return f"250 2.0.0 Queued for {queued} member{'s' if queued != 1 else ''}"

    async def _announce(self, post_id: int) -> None:
        try:
            await self.moderation.announce(post_id)
        except Exception:  # the minute job posts it again
            log.exception("posting the moderation card of post %s failed", post_id)

    async def stop(self) -> None:
        """Cancel card postings still under way (the minute job posts any that did not make it)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def route(self) -> Route:
        return Route("groups", self.accepts, self.deliver, peer_allowed=self.ctx.settings.relay.trusts)
