"""Moderation in chat: a held post's card (sender, subject, size, recipients, first lines) with Approve,
Reject and Always allow this sender; the decision, made once however often it is clicked; held posts
expiring with a notice to the sender.

Where the held copy waits:
- embedded relay: in Postroom's post store (`group_posts.body`); an approval snapshots the members at
  that moment and releases it through the normal fan-out.
- through Postfix: in Postfix's own hold queue (the policy service answered `HOLD`); an approval runs
  `postsuper -H <queue id>` and Postfix delivers it to every original recipient, a rejection or an expiry
  `postsuper -d`. The card's subject and first lines come from `postcat`. (Postroom keeping a copy instead
  would need Postfix to hand it the whole message, and would lose the other recipients of a cross-post.)
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from email.utils import getaddresses
from typing import Any

from sqlalchemy import delete, select, update

from bot.config import PostfixSettings
from bot.context import Context
from bot.db.models import Group, GroupPost, GroupPostDelivery, GroupSenderAllow
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.events import Button, Card, Message
from bot.groups.fanout import GroupFanout
from bot.groups.notices import send_notice, still_here
from bot.groups.posting import moderators_of
from bot.groups.posts import inspect, snapshot_members
from bot.i18n import sentences, t
from bot.messengers import Messengers

log = logging.getLogger(__name__)
QUEUE_ID_RE = re.compile(r"^[0-9A-Za-z]{5,32}$")
MAX_POSTCAT_BYTES = 256 * 1024
MAX_ENVELOPE_BYTES = 8 * 1024 * 1024  # `postcat -e` of a post to 20,000 members is about 1 MB
JOB_ID = "groups.moderation"
PRUNE_JOB = "groups.prune-posts"


class PostfixQueue:
    """Postfix's hold queue, through its own commands (they need Postfix's privileges: root, or a sudo
    rule for exactly these commands)."""

    def __init__(self, settings: PostfixSettings):
        self.settings = settings

    def _config(self) -> list[str]:
        return ["-c", self.settings.config_directory] if self.settings.config_directory else []

    async def _run(self, argv: list[str], limit: int = 64 * 1024) -> tuple[int, bytes]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            return 127, str(exc).encode()
        try:
            assert proc.stdout is not None
            out = await asyncio.wait_for(_read_upto(proc.stdout, limit), 20)
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, b"timed out"
        return proc.returncode or 0, out

    async def release(self, queue_id: str) -> str | None:
        """None when released; else what went wrong."""
        return await self._super("-H", queue_id)

    async def delete(self, queue_id: str) -> str | None:
        return await self._super("-d", queue_id)

    async def _super(self, flag: str, queue_id: str) -> str | None:
        if not QUEUE_ID_RE.match(queue_id):
            return f"{queue_id!r} is not a Postfix queue id"
        code, out = await self._run([*self.settings.postsuper, *self._config(), flag, queue_id])
        text = out.decode("utf-8", "replace").strip()
        if code != 0 or ": " in text and "not found" in text.lower():
            return text[:300] or f"exit status {code}"
        return None

    async def recipients(self, queue_id: str) -> list[str] | None:
        """The envelope recipients of a queued message still to be delivered (`postcat -e`: Postfix
        expanded the groups and dropped duplicates when it queued it), or None when it can't be read."""
        if not QUEUE_ID_RE.match(queue_id):
            return None
        limit = MAX_ENVELOPE_BYTES
        code, out = await self._run([*self.settings.postcat, *self._config(), "-e", "-q", queue_id], limit)
        if code != 0 or len(out) >= limit:  # cut short: a count would be wrong
            return None
        found: list[str] = []
        for line in out.decode("utf-8", "replace").splitlines():
            name, sep, value = line.partition(": ")
            if sep and name == "recipient":
                found.append(value.strip())
        return found

    async def read(self, queue_id: str) -> bytes | None:
        """The held message's header and body (bounded), or None."""
        if not QUEUE_ID_RE.match(queue_id):
            return None
        code, out = await self._run(
            [*self.settings.postcat, *self._config(), "-bh", "-q", queue_id], MAX_POSTCAT_BYTES
        )
        if code != 0:
            return None
        lines = [ln for ln in out.split(b"\n") if not ln.startswith(b"*** ")]
        return b"\r\n".join(lines)


async def _read_upto(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Everything the stream gives until its end, at most `limit` bytes (the rest is drained, unread)."""
    out = bytearray()
    while chunk := await stream.read(65536):
        if len(out) < limit:
            out += chunk[: limit - len(out)]
    return bytes(out)


def _copies_sentence(post: GroupPost, group: Group, copies: int | None, covered: int) -> str:
    """What an approval sends, counted as the fan-out counts it: one copy per member of the group (the
    sender too, when a member, as a list server does by default) except group addresses among them and
    members who had the message through another group it was sent to; through Postfix, one per recipient
    in the held message's envelope (Postfix expanded the groups and dropped duplicates when it queued it)."""
    if post.via == "postfix":
        if copies is None:
            return t("Postfix delivers it to every recipient of the held message.")
        if copies == 1:
            return t("Postfix delivers it to 1 recipient.")
        return t("Postfix delivers it to {count} recipients.", count=copies)
    if not copies:
        if not covered:
            return t("Nobody gets it: {group} has no members.", group=group.address)
        return t(
            "Nobody gets a copy from it: every member had the message through another group it was sent to."
        )
    goes = t("It goes to 1 member.") if copies == 1 else t("It goes to {count} members.", count=copies)
    if not covered:
        return goes
    had = (
        t("1 more member had the message through another group it was sent to.")
        if covered == 1
        else t("{count} more members had the message through another group it was sent to.", count=covered)
    )
    return sentences(goes, had)


def _envelope_fields(post: GroupPost, group: Group, internal: Callable[[str], bool]) -> list[tuple[str, str]]:
    """The envelope sender beside the From when they differ: the posting check read the envelope, and a
    From naming a colleague the envelope sender is not goes to members as "<sender> via <group>"."""
    pairs = getaddresses([post.author or ""])
    author = pairs[0][1].lower() if pairs and "@" in pairs[0][1] else ""
    sender = post.sender or ""
    if not author or author == sender.lower():
        return []
    fields = [(t("Envelope sender"), sender or t("(no sender)"))]
    if internal(author):
        fields.append(
            (
                t("Warning"),
                t(
                    "The From names {author}, a company address, but the message was sent by {sender}. "
                    "Members would see it as from “{sender} via {group}”.",
                    author=author,
                    sender=sender or "<>",
                    group=group.display_name or group.local_part,
                ),
            )
        )
    return fields


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{max(1, round(n / 1024))} KB"


class Moderation:
    def __init__(self, ctx: Context, messengers: Messengers, fanout: GroupFanout, queue: PostfixQueue):
        self.ctx = ctx
        self.messengers = messengers
        self.fanout = fanout
        self.queue = queue

    def jobs(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {JOB_ID: self.tick, PRUNE_JOB: self.prune}

    async def prune(self) -> int:
        """The post log keeps `relay.post_retention_days`; older entries (and their deliveries) go."""
        cutoff = self.ctx.now() - timedelta(days=self.ctx.settings.relay.post_retention_days)
        async with self.ctx.sessions() as session, session.begin():
            old = select(GroupPost.id).where(GroupPost.received_at < cutoff, GroupPost.state != "sending")
            ids = list((await session.execute(old)).scalars())
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                await session.execute(delete(GroupPostDelivery).where(GroupPostDelivery.post_id.in_(chunk)))
                await session.execute(delete(GroupPost).where(GroupPost.id.in_(chunk)))
        return len(ids)

    # -- the card ------------------------------------------------------------------------------
    async def _first_lines(self, post: GroupPost) -> tuple[str, ...]:
        data = post.body
        if data is None and post.via == "postfix" and post.queue_id:
            data = await self.queue.read(post.queue_id)
        if not data:
            return ()
        try:
            return inspect(data, self.ctx.settings.relay.max_header_bytes).first_lines
        except Exception:
            return ()

    async def _subject_from_queue(self, post: GroupPost) -> None:
        if post.subject is not None or post.via != "postfix" or not post.queue_id:
            return
        data = None
        for _ in range(20):  # at END-OF-MESSAGE Postfix is still writing the queue file
            data = await self.queue.read(post.queue_id)
            if data:
                break
            await asyncio.sleep(0.25)
        if not data:
            return
        try:
            seen = inspect(data, self.ctx.settings.relay.max_header_bytes)
        except Exception:
            return
        async with self.ctx.sessions() as session, session.begin():
            await session.execute(
                update(GroupPost)
                .where(GroupPost.id == post.id)
                .values(
                    subject=seen.subject,
                    author=seen.author,
                    message_id=seen.message_id,
                    has_links=seen.has_links,
                    has_unsubscribe=seen.has_unsubscribe,
                    has_tracking_links=seen.has_tracking,
                )
            )
        post.subject, post.author, post.message_id = seen.subject, seen.author, seen.message_id

    def card(
        self, post: GroupPost, group: Group, lines: tuple[str, ...], moderators_here: list[str] | None = None
    ) -> Message:
        """`moderators_here`: the group's moderators still at the company (a leaver moderates nothing)."""
        fields = [
            (t("From"), post.author or post.sender or t("(no sender)")),
            *_envelope_fields(post, group, self.ctx.settings.is_internal),
            (t("Subject"), post.subject or t("(no subject)")),
            (t("Size"), _size(post.size)),
            (t("Recipients"), str(post.recipient_count)),
        ]
        if lines:
            fields.append((t("First lines"), "\n".join(lines)))
        here = moderators_of(group) if moderators_here is None else moderators_here
        moderators = ", ".join(here) or t("HR")
        expires = post.expires_at.strftime("%Y-%m-%d %H:%M UTC") if post.expires_at else "—"
        card = Card(
            title=t("A post to {group} waits for a moderator (#{id})", group=group.address, id=post.id),
            fields=tuple(fields),
            buttons=(
                Button(
                    "post.approve",
                    t("Approve"),
                    str(post.id),
                    "primary",
                    text_command=f"/post approve {post.id}",
                ),
                Button(
                    "post.reject",
                    t("Reject"),
                    str(post.id),
                    "danger",
                    confirm=t("Reject this post? The sender is told why."),
                    text_command=f"/post reject {post.id} <reason>",
                ),
                Button(
                    "post.allow",
                    t("Always allow this sender"),
                    str(post.id),
                    text_command=f"/post allow {post.id}",
                ),
            ),
            footer=t(
                "Moderators: {who}. Unless someone decides, it expires {when}.", who=moderators, when=expires
            ),
        )
        return Message(t("A post to {group} waits for a moderator.", group=group.address), card)

    async def announce(self, post_id: int) -> None:
        async with self.ctx.sessions() as session:
            post = await session.get(GroupPost, post_id)
            group = await session.get(Group, post.group_id) if post and post.group_id else None
        if post is None or group is None or post.state != "held":
            return
        await self._subject_from_queue(post)
        lines = await self._first_lines(post)
        here = await still_here(self.ctx, moderators_of(group))
        refs = await self.messengers.post(
            "moderation", lambda: self.card(post, group, lines, here), f"post:{post.id}"
        )
        if not refs:  # no messenger keeps a moderation conversation: the HR one
            await self.messengers.post("hr", lambda: self.card(post, group, lines, here), f"post:{post.id}")

    # -- deciding ------------------------------------------------------------------------------
    async def decide(
        self,
        post_id: int,
        actor: str,
        *,
        privileged: bool,
        decision: str,
        reason: str | None = None,
        colleague: bool = True,
    ) -> str:
        """approve | reject | allow a held post; the answer in words. Decided once: a second click says so."""
        async with self.ctx.sessions() as session:
            post = await session.get(GroupPost, post_id)
            group = await session.get(Group, post.group_id) if post and post.group_id else None
        if post is None or group is None:
            raise UserError(t("There is no held post #{id}.", id=post_id))
        if not privileged and (not colleague or actor not in moderators_of(group)):
            raise UserError(
                t("Only the moderators of {group}, HR and admins can decide its posts.", group=group.address)
            )
        if post.state != "held":
            return self._already(post)
        if decision == "reject":
            return await self._reject(post, group, actor, reason or t("a moderator declined it"), "rejected")
        if decision == "allow":
            if post.sender:
                async with self.ctx.sessions() as session, session.begin():
                    await insert_ignore(
                        session,
                        GroupSenderAllow,
                        [
                            {
                                "group_id": group.id,
                                "email": post.sender,
                                "created_by": actor,
                                "created_at": self.ctx.now(),
                            }
                        ],
                        ["group_id", "email"],
                    )
        return await self._approve(post, group, actor, allowed=decision == "allow")

    def _already(self, post: GroupPost) -> str:
        if not post.moderated:  # it went straight out (or was refused): there was never anything to decide
            return t(
                "Post #{id} to {group} was never held for a moderator: there is nothing to approve or reject "
                "(/posts shows what became of it).",
                id=post.id,
                group=post.group_address,
            )
        names = {
            "sending": t("approved"),
            "delivered": t("approved"),
            "released": t("approved"),
            "rejected": t("rejected"),
            "expired": t("expired"),
        }
        return t(
            "Post #{id} was already decided ({state}); nothing changed.",
            id=post.id,
            state=names.get(post.state, post.state),
        )

    async def _approve(self, post: GroupPost, group: Group, actor: str, *, allowed: bool) -> str:
        now = self.ctx.now()
        copies: int | None = None  # the copies that go out; None: not known (Postfix's queue unread)
        covered = 0  # members who had the message through another group of it, so get no copy from this
        if post.via == "postfix":
            recipients = await self.queue.recipients(post.queue_id or "")
            copies = None if recipients is None else len(recipients)
            problem = await self.queue.release(post.queue_id or "")
            if problem is not None:
                raise UserError(
                    t("Postfix did not release post #{id}: {problem}", id=post.id, problem=problem)
                )
            async with self.ctx.sessions() as session, session.begin():
                won = (
                    await session.execute(
                        update(GroupPost)
                        .where(GroupPost.id == post.id, GroupPost.state == "held")
                        .values(state="released", decided_by=actor, decided_at=now)
                    )
                ).rowcount == 1
        else:
            async with self.ctx.sessions() as session, session.begin():
                won = (
                    await session.execute(
                        update(GroupPost)
                        .where(GroupPost.id == post.id, GroupPost.state == "held")
                        .values(state="sending", decided_by=actor, decided_at=now)
                    )
                ).rowcount == 1
                if won:
                    fresh = await session.get(GroupPost, post.id, populate_existing=True)
                    assert fresh is not None
                    # members who had the message through another group of it get no second copy
                    window = timedelta(hours=self.ctx.settings.relay.duplicate_window_hours)
                    copies = await snapshot_members(session, fresh, window)
                    post.recipient_count = fresh.recipient_count
                    covered = max(0, (fresh.recipient_count or 0) - copies)
            self.fanout.wake()
        if not won:
            async with self.ctx.sessions() as session:
                again = await session.get(GroupPost, post.id)
            return self._already(again or post)
        text = sentences(
            t("Approved post #{id} to {group}.", id=post.id, group=group.address),
            _copies_sentence(post, group, copies, covered),
            t("{sender} now posts without waiting.", sender=post.sender) if allowed and post.sender else "",
        )
        await self._close_card(post, group, lambda: t("Approved by {who}.", who=actor), "approved")
        return text

    async def _reject(self, post: GroupPost, group: Group, actor: str, reason: str, state: str) -> str:
        reason = " ".join(reason.split())[:500]
        async with self.ctx.sessions() as session, session.begin():
            won = (
                await session.execute(
                    update(GroupPost)
                    .where(GroupPost.id == post.id, GroupPost.state == "held")
                    .values(
                        state=state, decided_by=actor, decided_at=self.ctx.now(), reason=reason, body=None
                    )
                )
            ).rowcount == 1
        if not won:
            async with self.ctx.sessions() as session:
                again = await session.get(GroupPost, post.id)
            return self._already(again or post)
        if post.via == "postfix" and post.queue_id:
            problem = await self.queue.delete(post.queue_id)
            if problem is not None:
                log.warning(
                    "deleting held post %s (queue id %s) from Postfix failed: %s",
                    post.id,
                    post.queue_id,
                    problem,
                )
        subject = post.subject or "(no subject)"
        if state == "expired":
            body = (
                f'Your message "{subject}" to {group.address} waited for a moderator and nobody decided in time, '
                "so it was not delivered. You may send it again."
            )
        else:
            body = f'Your message "{subject}" to {group.address} was not delivered.\n\nThe moderator\'s reason: {reason}'
        told = "@" in (post.sender or "")  # a post without a sender ("" or <>) has nobody to tell
        if told:
            await send_notice(self.ctx, [post.sender], f"Not delivered: {subject}"[:200], body + "\n")
        if state == "expired":
            await self._close_card(
                post,
                group,
                lambda: (
                    t("Expired: nobody decided in time. The sender was told.")
                    if told
                    else t("Expired: nobody decided in time. It had no sender, so nobody was told.")
                ),
                state,
            )
            return ""
        await self._close_card(
            post, group, lambda: t("Rejected by {who}: {reason}", who=actor, reason=reason), state
        )
        if not told:
            return t(
                "Rejected post #{id} to {group}. It had no sender, so nobody was told.",
                id=post.id,
                group=group.address,
            )
        return t("Rejected post #{id} to {group}; the sender was told why.", id=post.id, group=group.address)

    async def _close_card(
        self, post: GroupPost, group: Group, outcome: Callable[[], str], state: str
    ) -> None:
        """Replace the card with the decision; `outcome` is built per messenger (each has its locale)."""

        def build() -> Message:
            if state == "approved":
                text = t("Post #{id} to {group} was approved.", id=post.id, group=group.address)
            elif state == "expired":
                text = t(
                    "Post #{id} to {group} expired: nobody decided in time.", id=post.id, group=group.address
                )
            else:
                text = t("Post #{id} to {group} was rejected.", id=post.id, group=group.address)
            return Message(
                text,
                Card(
                    title=t("Post #{id} to {group}", id=post.id, group=group.address),
                    fields=(
                        (t("From"), post.author or post.sender or t("(no sender)")),
                        *_envelope_fields(post, group, self.ctx.settings.is_internal)[:1],
                        (t("Subject"), post.subject or t("(no subject)")),
                    ),
                    footer=outcome(),
                ),
            )

        try:
            await self.messengers.update_subject(f"post:{post.id}", build)
        except Exception:
            log.exception("updating the card of post %s failed", post.id)

    # -- the scheduled job -----------------------------------------------------------------------
    async def tick(self) -> None:
        """Every minute: expire held posts past their time, and post the card of any held post whose card
        was never posted (a process that stopped right after storing it)."""
        now = self.ctx.now()
        async with self.ctx.sessions() as session:
            due = list(
                (
                    await session.execute(
                        select(GroupPost).where(GroupPost.state == "held", GroupPost.expires_at < now)
                    )
                ).scalars()
            )
            waiting = list(
                (
                    await session.execute(
                        select(GroupPost.id).where(
                            GroupPost.state == "held", GroupPost.received_at < now - timedelta(seconds=30)
                        )
                    )
                ).scalars()
            )
        for post in due:
            async with self.ctx.sessions() as session:
                group = await session.get(Group, post.group_id) if post.group_id else None
            if group is not None:
                await self._reject(post, group, "system", "nobody decided in time", "expired")
        subjects = {f"post:{i}": i for i in waiting if i not in {p.id for p in due}}
        posted = await self.messengers.posted_about(list(subjects))
        for subject, post_id in subjects.items():
            if subject not in posted:
                await self.announce(post_id)
