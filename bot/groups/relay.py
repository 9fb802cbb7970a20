"""Group addresses deliver (the `local` provider): the embedded SMTP server's route for groups.

Only SMTP clients in `relay.trusted_networks` (default: loopback) may post to a group address; any
other peer gets "550 relaying denied", so nobody who merely reaches the port can claim a company
sender and fan out to every member. Bounce and unsubscribe addresses stay open to everyone.

At RCPT time a group address is claimed only if its posting policy lets the sender post
(members, the company, anyone); otherwise the sender gets a 550 with the reason during the SMTP
conversation. At DATA time one copy goes to each current member through the outbound SMTP
server, with `List-Id` added and the original `From` kept. A member of two addressed groups gets
one copy.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from bot.context import Context
from bot.db.models import Group, Membership
from bot.mail.server import Route

log = logging.getLogger(__name__)
SEND_CHUNK = 500


def list_id(group: Group) -> str:
    label = (group.display_name or group.local_part).replace('"', "").replace("\r", "").replace("\n", "")
    return f'"{label}" <{group.local_part}.{group.address.split("@", 1)[1]}>'


def group_route(ctx: Context) -> Route:
    settings = ctx.settings

    async def _group(session, rcpt: str) -> Group | None:
        return (await session.execute(select(Group).where(Group.address == rcpt))).scalar_one_or_none()

    async def accepts(rcpt: str, mail_from: str) -> str | None:
        async with ctx.sessions() as session:
            group = await _group(session, rcpt)
            if group is None:
                return None
            if group.post_policy == "anyone":
                return "250 OK"
            if not mail_from:
                return f"550 5.7.1 <{rcpt}>: this group takes no mail without a sender"
            if group.post_policy == "company" or group.post_policy not in ("members", "anyone"):
                if settings.is_internal(mail_from):
                    return "250 OK"
                return (
                    f"550 5.7.1 <{rcpt}>: only people at {', '.join(settings.org.domains)} may post to "
                    "this group"
                )
            member = (
                await session.execute(
                    select(Membership.id).where(
                        Membership.group_id == group.id, Membership.email == mail_from
                    )
                )
            ).first()
            if member is not None or mail_from in (group.owners or []):
                return "250 OK"
            return f"550 5.7.1 <{rcpt}>: only members of this group may post to it"

    async def deliver(mail_from: str, rcpts: list[str], data: bytes) -> str:
        sent: set[str] = set(rcpts)  # never mail a group to itself
        failed: list[str] = []
        delivered = 0
        transport = ctx.new_transport()
        try:
            for rcpt in rcpts:
                async with ctx.sessions() as session:
                    group = await _group(session, rcpt)
                    if group is None:
                        continue
                    members = (
                        (
                            await session.execute(
                                select(Membership.email)
                                .where(Membership.group_id == group.id)
                                .order_by(Membership.email)
                            )
                        )
                        .scalars()
                        .all()
                    )
                lid = list_id(group)
                if f"<{group.local_part}.{group.address.split('@', 1)[1]}>".encode() in _headers(data):
                    log.warning("mail loop on %s refused", rcpt)
                    return "554 5.4.6 Mail loop detected: this message has already passed through the group"
                copy = (
                    f"List-Id: {lid}\r\nPrecedence: list\r\nX-Postroom-Group: {group.address}\r\n"
                ).encode() + data
                todo = [m for m in members if m not in sent]
                sent.update(todo)
                for i in range(0, len(todo), SEND_CHUNK):
                    chunk = todo[i : i + SEND_CHUNK]
                    outcomes = await asyncio.gather(
                        *(transport.send(mail_from or group.address, m, copy) for m in chunk)
                    )
                    for member, outcome in zip(chunk, outcomes, strict=True):
                        if outcome.ok:
                            delivered += 1
                        elif (
                            outcome.transient
                            and (await transport.send(mail_from or group.address, member, copy)).ok
                        ):
                            delivered += 1
                        else:
                            failed.append(f"{member}: {outcome.detail}")
        finally:
            await transport.close()
        if failed:
            log.warning("group mail not delivered to %d member(s): %s", len(failed), "; ".join(failed[:10]))
        return f"250 Delivered to {delivered} member{'s' if delivered != 1 else ''}"

    return Route("groups", accepts, deliver, peer_allowed=settings.relay.trusts)


def _headers(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data[: end if end >= 0 else len(data)]
