"""The fan-out: group posts delivered from the post store, one copy per member, with the campaigns'
crash-safe machinery (bot/outbox.py): claimed batches with leases, retries with backoff, each outcome read
by whose fault it is, results written while the copies go out (never more than `relay.record_every` of
them unwritten), and the next batch claimed while one is being sent: nothing the database does waits
between two copies unless a write falls far behind.

Each member's copy has its own VERP return path (`bounces+g.<delivery>-<mac>@<bounce domain>`), so a
bounce names the delivery. A member's own permanent failure (a 5.1.x at RCPT, or a DSN later) marks that
delivery `bounced` and is reported to HR in chat and to the group's owners by mail; it never suppresses
the member — whether the address is wrong is for a person to decide. A failure of the relay itself (the
connection, the login, our sender) puts the rows back uncounted and waits before trying that post again.

A bare refusal at RCPT (no enhanced code: "550 Requested action not taken: mailbox unavailable",
`Outcome.unproven`) is read as the campaign engine reads it (bot/outbox.py, bot/campaigns/engine.py): a
relay refusing everyone says the same, so it is that member's bounce only once a later copy of the same
batch went out over the same connection to the same domain. The same bare reply over one connection for
`relay.same_refusal_limit` members in a row at more than one domain (or before anything was delivered) is
the relay's fault: the post waits as for any relay failure, nobody's copy is bounced. One no delivery
proves is retried with backoff and, after `relay.max_attempts`, fails — never filed as a bounce.

A process that dies mid-post leaves its claimed batches (the one being sent, and the next) to be claimed
again when the lease runs out: nobody is skipped, and only the copies not yet recorded (at most
`record_every`, the ones in flight included) are repeated.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, select, update

from bot.context import Context
from bot.db.models import Group, GroupPost, GroupPostDelivery
from bot.events import Message
from bot.groups.dmarc import DmarcPolicies
from bot.groups.notices import send_notice, still_here
from bot.groups.posts import impersonates, inspect, relayed_copy
from bot.i18n import t
from bot.links import Signer, base36_id
from bot.mail.dsn import parse_report
from bot.mail.replies import reply_key
from bot.mail.server import Route
from bot.mail.transport import Outcome, SmtpTransport
from bot.messengers import Messengers
from bot.outbox import Claims, RefusalStreak, UnprovenRefusals, backoff_s, verdict

log = logging.getLogger(__name__)

CLAIMS = Claims(
    cast(Table, GroupPostDelivery.__table__), "post_id", ("id", "email", "attempts", "last_error")
)
GROUP_VERP_RE = re.compile(r"^bounces\+g\.([0-9a-z]{1,13})-([0-9a-f]{16})@([a-z0-9.-]+)$")


def group_verp(signer: Signer, delivery_id: int, domain: str) -> str:
    ident = _base36(delivery_id)
    return f"bounces+g.{ident}-{signer.short_mac('gverp:' + ident)}@{domain}"


def group_verp_delivery(signer: Signer, address: str) -> int | None:
    m = GROUP_VERP_RE.match(address.strip().lower())
    if m is None or signer.short_mac("gverp:" + m.group(1)) != m.group(2):
        return None
    return base36_id(m.group(1))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass
class _Copy:
    group: Group
    data: bytes


class _Results:
    """One claimed batch's outcomes, written while its workers go on sending.

    A write starts once half of `limit` (`relay.record_every`) outcomes wait for one, and a worker takes
    another member only while fewer than `limit` of the members taken are unwritten (in flight, waiting,
    or in the write under way): so at most `limit` copies, the ones in flight included, are ever sent and
    not yet recorded, and the workers wait for a write only when one takes longer than sending half of
    `limit` copies. (Written with the workers stopped, as before, every write was a pause in the fan-out:
    a tenth of a 10,000-member post's time on a loaded machine.)"""

    def __init__(self, write: Callable[[dict[str, list[dict[str, Any]]]], Awaitable[None]], limit: int):
        self.lists: dict[str, list[dict[str, Any]]] = {"sent": [], "ended": [], "retry": [], "unsent": []}
        self._write = write
        self._limit = limit
        self._early = max(1, limit // 2)
        self._taken = 0  # members the workers took
        self._done = 0  # of them, the ones whose outcome is known (in `lists`, or held in memory)
        self._written = 0  # of those, the ones a write has committed
        self._started = 0  # `_done` when the last write took its rows
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failed: Exception | None = None

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.lists[kind].append(row)

    async def next(self, queue: deque[Any]) -> Any | None:
        """The next member of `queue` for a worker, once there is room for it; None when none is left."""
        while self._taken - self._written >= self._limit and self._failed is None:
            self._room.clear()
            self._kick()
            await self._room.wait()
        if self._failed is not None:
            raise self._failed
        if not queue:
            return None
        self._taken += 1
        return queue.popleft()

    def finished(self) -> None:
        """A member's outcome is known: added to `lists`, or held in memory (an unproven refusal)."""
        self._done += 1
        self._kick()

    def _due(self) -> bool:
        waiting = self._done - self._started
        return waiting > 0 and (waiting >= self._early or self._taken - self._written >= self._limit)

    def _kick(self) -> None:
        if (self._task is None or self._task.done()) and self._failed is None and self._due():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _take(self) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        self._started = self._done
        taken = {k: v[:] for k, v in self.lists.items()}
        for v in self.lists.values():
            v.clear()
        return self._done, taken

    async def _run(self) -> None:
        try:
            while self._due():
                upto, taken = self._take()
                await self._write(taken)
                self._written = upto
                self._room.set()
        except Exception as exc:  # the workers stop and _send_batch raises it (close)
            self._failed = exc
            self._room.set()

    async def close(self) -> None:
        """Wait for the write under way, then write what is left; a failed write raises here."""
        if self._task is not None:
            await asyncio.wait([self._task])
        if self._failed is not None:
            raise self._failed
        upto, taken = self._take()
        await self._write(taken)
        self._written = upto


class BounceReports:
    """A member's hard bounce from group mail: HR hears in chat, the group's owners by mail. Nobody is
    suppressed or removed: a person decides (`/removegroup`)."""

    def __init__(self, ctx: Context, messengers: Messengers):
        self.ctx = ctx
        self.messengers = messengers

    async def report(self, group: Group, bounced: list[tuple[str, str]]) -> None:
        if not bounced:
            return
        lines = "\n".join(f"• {email}: {detail[:200]}" for email, detail in bounced[:20])
        more = len(bounced) - 20
        owners = await still_here(self.ctx, list(group.owners or []))

        def build() -> Message:
            text = t(
                "Group mail to {group} bounced for {count} member(s); they stay in the group until someone "
                "removes them (/removegroup {local} <email>):",
                group=group.address,
                count=len(bounced),
                local=group.local_part,
            )
            extra = "\n" + t("…and {count} more.", count=more) if more > 0 else ""
            if not owners:
                extra += "\n" + t(
                    "{group} has no owner at the company to tell by mail: this message is the only notice.",
                    group=group.address,
                )
            return Message(f"{text}\n{lines}{extra}")

        try:
            await self.messengers.post("hr", build)
        except Exception:  # a chat failure must not stop delivery
            log.exception("reporting group bounces to HR failed")
        await send_notice(
            self.ctx,
            owners,
            f"Undeliverable group mail to {group.address}",
            f"Mail to {group.address} could not be delivered to these members:\n\n{lines}\n\n"
            "They are still members. If an address is wrong or gone, ask HR to update it or remove it "
            f"with /removegroup {group.local_part} <email>.\n",
        )


class GroupFanout:
    """Works off every post in `sending`, in this process, until stopped. Several processes may run one."""

    def __init__(
        self,
        ctx: Context,
        dmarc: DmarcPolicies,
        reports: BounceReports,
        *,
        worker_id: str | None = None,
        transport_factory: Callable[[], SmtpTransport] | None = None,
    ):
        self.ctx = ctx
        self.dmarc = dmarc
        self.reports = reports
        self.options = ctx.settings.relay
        self.worker_id = worker_id or f"g-{secrets.token_hex(4)}"
        self._transport_factory = transport_factory
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._copies: dict[int, _Copy] = {}
        self._resume_at: dict[int, float] = {}  # post id -> loop time: the relay failed, wait
        self._halts: dict[int, int] = {}  # post id -> relay failures in a row (the wait doubles)
        self._streaks: dict[int | None, RefusalStreak] = {}  # per connection, since its last delivery
        self._delivered = False  # anything delivered since this fan-out started (bot/outbox.py)
        # This fan-out's writes (claims, results, lease renewals) one at a time: the next batch is claimed
        # while results are written, and two writers at once would meet in SQLite's busy wait.
        self._db = asyncio.Lock()
        self.sent_total = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        transport = self._new_transport()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    await self.run_pending(transport)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a database hiccup: try again shortly
                    log.exception("group fan-out failed; trying again")
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                except TimeoutError:
                    pass
        finally:
            await transport.close()

    def _new_transport(self) -> SmtpTransport:
        if self._transport_factory is not None:
            return self._transport_factory()
        return self.ctx.new_transport(self.options.connections, self.options.route)

    async def run_pending(self, transport: SmtpTransport | None = None) -> int:
        """Deliver what can be delivered now of every post in `sending`; returns the copies sent."""
        own = transport is None
        transport = transport or self._new_transport()
        before = self.sent_total
        try:
            async with self.ctx.sessions() as session:
                ids = list(
                    (
                        await session.execute(
                            select(GroupPost.id).where(GroupPost.state == "sending").order_by(GroupPost.id)
                        )
                    ).scalars()
                )
            loop = asyncio.get_running_loop()
            for post_id in ids:
                if self._stop.is_set():
                    break
                if self._resume_at.get(post_id, 0) > loop.time():
                    continue
                await self._work(post_id, transport)
        finally:
            if own:
                await transport.close()
        return self.sent_total - before

    async def _copy(self, post_id: int) -> _Copy | None:
        cached = self._copies.get(post_id)
        if cached is not None:
            return cached
        async with self.ctx.sessions() as session:
            post = await session.get(GroupPost, post_id)
            group = await session.get(Group, post.group_id) if post and post.group_id else None
        if post is None or group is None or post.body is None:
            return None
        inspected = inspect(post.body, self.options.max_header_bytes)
        internal = self.ctx.settings.is_internal
        forged = impersonates(inspected, post.sender or "", internal)
        munge = not forged and await self.dmarc.needs_munging(inspected.author_address, internal)
        data = relayed_copy(
            post.body,
            group,
            inspected,
            munge=munge,
            domain=group.address.split("@", 1)[1],
            impersonated_by=(post.sender or "<>") if forged else None,
        )
        if len(self._copies) > 64:
            self._copies.clear()
        copy = self._copies[post_id] = _Copy(group, data)
        return copy

    async def _work(self, post_id: int, transport: SmtpTransport) -> None:
        copy = await self._copy(post_id)
        if copy is None:  # the group was deleted under a post: nothing to deliver it to
            await self._finish(post_id)
            return
        # One lease renewal for the whole post: it covers the batch being sent and the next one, claimed
        # meanwhile, also while a batch's bounces are being reported.
        renewing = asyncio.get_running_loop().create_task(self._renew(post_id))
        try:
            batch = await self._claim(post_id)
            while batch:
                # The next batch is claimed while this one goes out, so no copy waits for a claim.
                following = asyncio.get_running_loop().create_task(self._claim(post_id))
                try:
                    going = await self._send_batch(post_id, copy, batch, transport)
                except BaseException:
                    following.cancel()  # what it claimed waits for its lease to run out, as this batch does
                    await asyncio.gather(following, return_exceptions=True)
                    raise
                # A row of this batch whose lease ran out meanwhile (a renewal failed) is claimed again:
                # it went out with this batch, not once more with the next.
                sending = {d.id for d in batch}
                batch = [d for d in await following if d.id not in sending]
                if not going or self._stop.is_set():  # the relay failed (the post waits), or stopping
                    await self._release(batch)
                    return
        finally:
            renewing.cancel()
        if not await CLAIMS.remaining(self.ctx.sessions, post_id):
            await self._finish(post_id)

    async def _claim(self, post_id: int) -> list[Any]:
        async with self._db:
            return await CLAIMS.claim(
                self.ctx.sessions,
                self.ctx.dialect,
                post_id,
                self.worker_id,
                self.options.batch_size,
                self.options.lease_s,
                self.ctx.now(),
            )

    async def _release(self, batch: list[Any]) -> None:
        """Rows claimed and not sent back to `pending`, their attempt uncounted."""
        if batch:
            async with self._db, self.ctx.sessions() as session, session.begin():
                await CLAIMS.record(
                    session, self.worker_id, self.ctx.now(), unsent=[{"b_id": d.id} for d in batch]
                )

    async def _renew(self, post_id: int) -> None:
        while True:
            await asyncio.sleep(self.options.lease_s / 3)
            try:
                async with self._db, self.ctx.sessions() as session, session.begin():
                    await CLAIMS.renew(session, post_id, self.worker_id, self.ctx.now())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing the lease on post %s failed", post_id)

    async def _send_batch(
        self, post_id: int, copy: _Copy, batch: list[Any], transport: SmtpTransport
    ) -> bool:
        """Send one claimed batch, its results written as it goes (`_Results`); False when the relay
        failed and the post waits.

        What a kill -9 can leave unrecorded — and so repeat once the lease runs out — is at most
        `record_every` copies, the ones in flight included, never the whole batch."""
        opts = self.options
        signer = self.ctx.signer
        domain = self.ctx.settings.campaigns.bounce_domain
        now = self.ctx.now()
        bounced: list[tuple[str, str]] = []
        halted: list[Outcome] = []
        unproven = UnprovenRefusals()
        streaks = self._streaks
        queue = deque(batch)
        unsent = 0

        async def write(taken: dict[str, list[dict[str, Any]]]) -> None:
            nonlocal unsent
            if not any(taken.values()):
                return
            async with self._db, self.ctx.sessions() as session, session.begin():
                await CLAIMS.record(session, self.worker_id, self.ctx.now(), **taken)
            self.sent_total += len(taken["sent"])
            unsent += len(taken["unsent"])

        results = _Results(write, opts.record_every)

        async def worker() -> None:
            while (d := await results.next(queue)) is not None:
                if halted:
                    results.add("unsent", {"b_id": d.id})
                    results.finished()
                    continue
                outcome = await transport.send(group_verp(signer, d.id, domain), d.email, copy.data)
                kind = verdict(outcome, d.attempts, opts.max_attempts)
                if kind == "halt" and outcome.status == "5.4.6":
                    kind = "failed"  # a loop through this member's address: theirs alone, not the relay's
                if kind == "sent":
                    results.add("sent", {"b_id": d.id})
                    # Delivered over the same connection to the same domain after them: the bare refusals
                    # before it were about those members (bot/campaigns/engine.py says why both).
                    for p, o in unproven.prove(outcome.connection, d.email):
                        results.add("ended", {"b_id": p.id, "status": "bounced", "err": o.detail})
                        bounced.append((p.email, o.detail))
                    streaks.pop(outcome.connection, None)
                    self._delivered = True
                elif kind == "bounced" and outcome.unproven:
                    unproven.add(d, outcome)
                    reply = outcome.same_reply()
                    if not (d.last_error and reply_key(d.last_error) == reply):  # not counted twice
                        streak = streaks.get(outcome.connection)
                        if streak is None:
                            if len(streaks) > 4 * transport.size:  # connections closed since
                                streaks.clear()
                            streak = streaks[outcome.connection] = RefusalStreak()
                        streak.add(reply, d.email)
                        if streak.blames_server(opts.same_refusal_limit, self._delivered) and not halted:
                            halted.append(outcome)  # the relay refuses everyone: nobody's bounce
                elif kind == "halt":
                    results.add("unsent", {"b_id": d.id})
                    halted.append(outcome)
                elif kind == "bounced":
                    results.add("ended", {"b_id": d.id, "status": "bounced", "err": outcome.detail})
                    bounced.append((d.email, outcome.detail))
                elif kind in ("failed", "gave_up"):
                    err = (
                        outcome.detail
                        if kind == "failed"
                        else f"gave up after {d.attempts} attempts: {outcome.detail}"
                    )
                    results.add("ended", {"b_id": d.id, "status": "failed", "err": err})
                else:
                    delay = backoff_s(d.attempts, opts.retry_base_s, opts.retry_max_s)
                    results.add(
                        "retry", {"b_id": d.id, "err": outcome.detail, "nxt": now + timedelta(seconds=delay)}
                    )
                results.finished()

        await asyncio.gather(*(worker() for _ in range(min(max(1, transport.size), len(batch)))))
        if halted:  # back to pending uncounted, each with its reply (not counted in a streak again)
            for p, o in unproven.take():
                results.add("unsent", {"b_id": p.id, "err": o.detail})
        else:  # no delivery proved them: tried again after their backoff, never filed as bounces
            for p, o in unproven.take():
                if p.attempts >= opts.max_attempts:
                    err = f"gave up after {p.attempts} attempts, not a proven bounce: {o.detail}"
                    results.add("ended", {"b_id": p.id, "status": "failed", "err": err})
                else:
                    delay = backoff_s(p.attempts, opts.retry_base_s, opts.retry_max_s)
                    results.add(
                        "retry", {"b_id": p.id, "err": o.detail, "nxt": now + timedelta(seconds=delay)}
                    )
        await results.close()
        if bounced:
            await self.reports.report(copy.group, bounced)
        if halted:
            halts = self._halts[post_id] = self._halts.get(post_id, 0) + 1
            wait = backoff_s(halts, opts.retry_base_s, opts.retry_max_s)
            self._resume_at[post_id] = asyncio.get_running_loop().time() + wait
            log.warning(
                "group mail to %s paused for %.0f s: the outbound relay failed (%s, %s); %d copies wait",
                copy.group.address,
                wait,
                halted[0].fault,
                halted[0].detail,
                unsent,
            )
            return False
        self._halts.pop(post_id, None)
        return True

    async def _finish(self, post_id: int) -> None:
        async with self.ctx.sessions() as session, session.begin():
            await session.execute(
                update(GroupPost)
                .where(GroupPost.id == post_id, GroupPost.state == "sending")
                .values(state="delivered", body=None)
            )
        self._copies.pop(post_id, None)
        self._resume_at.pop(post_id, None)
        self._halts.pop(post_id, None)


class GroupBounceMailbox:
    """The embedded SMTP server's route for group mail's VERP return paths: a DSN marks that member's
    delivery bounced (hard) or notes it (soft) and reports a hard one; nobody is suppressed."""

    def __init__(self, ctx: Context, reports: BounceReports):
        self.ctx = ctx
        self.reports = reports

    async def accepts(self, rcpt: str, mail_from: str) -> str | None:
        if group_verp_delivery(self.ctx.signer, rcpt) is not None:
            return "250 OK"
        if rcpt.startswith("bounces+g."):
            return f"550 5.1.1 <{rcpt}>: not a return path of this server"
        return None

    async def deliver(self, mail_from: str, rcpts: list[str], data: bytes) -> str:
        findings = parse_report(data)
        hard = [f for f in findings if f.kind == "hard_bounce"]
        finding = hard[0] if hard else (findings[0] if findings else None)
        if finding is None:
            return "250 OK"
        for rcpt in rcpts:
            delivery_id = group_verp_delivery(self.ctx.signer, rcpt)
            if delivery_id is None:
                continue
            async with self.ctx.sessions() as session, session.begin():
                row = (
                    await session.execute(
                        select(GroupPostDelivery.email, GroupPostDelivery.status, GroupPost.group_id)
                        .join(GroupPost, GroupPost.id == GroupPostDelivery.post_id)
                        .where(GroupPostDelivery.id == delivery_id)
                    )
                ).first()
                if row is None:
                    continue
                changed = False
                if finding.kind == "hard_bounce" and row.status != "bounced":
                    await session.execute(
                        update(GroupPostDelivery)
                        .where(GroupPostDelivery.id == delivery_id)
                        .values(status="bounced", last_error=finding.detail or "hard bounce")
                    )
                    changed = True
                group = await session.get(Group, row.group_id) if row.group_id else None
            if changed and group is not None:
                await self.reports.report(group, [(row.email, finding.detail or "hard bounce")])
        return "250 OK"

    def route(self) -> Route:
        return Route("group-bounces", self.accepts, self.deliver)
