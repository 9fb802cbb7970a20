"""Per-recipient delivery rows worked off in claimed batches: the machinery the campaign engine and the
group fan-out share.

A row is `pending` until a batch claims it (`sending`, with `claimed_by` and a lease in `claimed_at` that
the worker renews while it works); a process that dies leaves its claimed rows to be claimed again when
the lease runs out, so at most one batch per worker is repeated (the in-flight window). Workers claim
disjoint batches (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer serialises the claim).
Results are recorded a batch at a time, each row only by the worker that holds it.

`verdict` reads an SMTP `Outcome` the one way both senders must (invariant 8): only the recipient's own
permanent failure is `bounced`; a failure of the send itself (server, login, sender, connection) is
`halt` — the row goes back to `pending` with its attempt uncounted.

A bare refusal at RCPT (`Outcome.unproven`: "550 Requested action not taken", no enhanced code) is read
the one way both senders must too: `UnprovenRefusals` holds it until a delivery over the same connection
to the same domain proves it the recipient's, and `RefusalStreak.blames_server` says when a run of them
is the server's (bot/campaigns/engine.py explains the rule; bot/groups/fanout.py applies it to group
mail).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import Table, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.mail.transport import Outcome

Verdict = Literal["sent", "halt", "bounced", "failed", "gave_up", "retry"]


def verdict(outcome: Outcome, attempts: int, max_attempts: int) -> Verdict:
    """What one send's outcome means for its row, after `attempts` tries (this one included)."""
    if outcome.ok:
        return "sent"
    if outcome.stops_send or (
        outcome.fault == "transient" and not outcome.about_recipient and attempts >= max_attempts
    ):
        return "halt"
    if outcome.fault == "recipient":
        return "bounced"
    if outcome.fault == "rejected":
        return "failed"
    if attempts >= max_attempts:
        return "gave_up"
    return "retry"


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """The wait before try `attempts + 1`: doubling from `base_s`, at most `max_s`."""
    return min(base_s * (2 ** (attempts - 1)), max_s)


def _domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].lower()


class RefusalStreak:
    """The distinct recipients one connection refused in a row with the same unproven reply since its last
    delivery, and their domains."""

    def __init__(self) -> None:
        self.reply = ""
        self.emails: set[str] = set()
        self.domains: set[str] = set()

    @property
    def count(self) -> int:
        return len(self.emails)

    def add(self, reply: str, email: str) -> int:
        if reply != self.reply:
            self.reply, self.emails, self.domains = reply, set(), set()
        self.emails.add(email)
        self.domains.add(_domain(email))
        return self.count

    def blames_server(self, limit: int, delivered: bool) -> bool:
        """`limit` distinct recipients refused in a row at more than one domain (a provider's run of dead
        mailboxes never spans domains), or at one domain before anything was delivered at all."""
        return self.count >= limit and (len(self.domains) > 1 or not delivered)


class UnprovenRefusals:
    """Bare RCPT refusals no delivery has proven yet, held across batches (their rows stay claimed), each
    waiting for a delivery over the same connection to the same domain."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[Any, Outcome]] = {}  # delivery id -> (row, outcome), oldest first
        self._by_key: dict[tuple[int | None, str], list[int]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, d: Any, outcome: Outcome) -> None:
        self.rows[d.id] = (d, outcome)
        self._by_key.setdefault((outcome.connection, _domain(d.email)), []).append(d.id)

    def prove(self, connection: int | None, email: str) -> list[tuple[Any, Outcome]]:
        """The refusals a delivery to `email` over `connection` proves, taken out."""
        if connection is None or not self.rows:
            return []
        ids = self._by_key.pop((connection, _domain(email)), [])
        return [self.rows.pop(i) for i in ids if i in self.rows]

    def take(self, keep: Callable[[Any, Outcome], bool] = lambda _d, _o: False, *, over: int = 0) -> list:
        """Take out every refusal `keep` says no to, then the oldest beyond `over` of those left (0: none)."""
        taken = [(d, o) for d, o in self.rows.values() if not keep(d, o)]
        for d, _o in taken:
            del self.rows[d.id]
        if over and len(self.rows) > over:
            oldest = list(self.rows)[: len(self.rows) - over]
            taken.extend(self.rows.pop(i) for i in oldest)
        if taken:
            self._by_key = {}
            for d, o in self.rows.values():
                self._by_key.setdefault((o.connection, _domain(d.email)), []).append(d.id)
        return taken


@dataclass(frozen=True)
class Claims:
    """Claims and records over one table of delivery rows, scoped by one column (a campaign, a post).

    The table has `id`, the scope column, `status`, `attempts`, `last_error`, `claimed_by`,
    `claimed_at`, `next_attempt_at` and `sent_at`; an index on (scope, status, id) keeps each claim
    the cost of the batch, not of the scope's size.
    """

    table: Table
    scope: str  # the scoping column's name
    returning: tuple[str, ...]  # the columns a claim hands back (id and attempts among them)
    sent_extra: tuple[tuple[str, str], ...] = ()  # (column, bind key) also written for a sent row

    async def claim(
        self,
        sessions: async_sessionmaker,
        dialect: str,
        scope_id: int,
        worker_id: str,
        batch_size: int,
        lease_s: float,
        now: datetime,
    ) -> list[Any]:
        """Up to a batch: first rows whose lease ran out (a dead worker's), then due pending ones.

        Two range scans rather than one OR, so a claim costs the batch whatever the scope's size."""
        c = self.table.c
        lease_cutoff = now - timedelta(seconds=lease_s)
        conditions = (
            and_(c.status == "sending", c.claimed_at < lease_cutoff),
            and_(c.status == "pending", or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)),
        )
        returning = [c[name] for name in self.returning]
        rows: list[Any] = []
        async with sessions() as session, session.begin():
            for condition in conditions:
                room = batch_size - len(rows)
                if room <= 0:
                    break
                ids = select(c.id).where(c[self.scope] == scope_id, condition).order_by(c.id).limit(room)
                if dialect == "postgresql":
                    ids = ids.with_for_update(skip_locked=True)
                stmt = (
                    self.table.update()
                    .where(c.id.in_(ids.scalar_subquery()))
                    .values(status="sending", claimed_by=worker_id, claimed_at=now, attempts=c.attempts + 1)
                    .returning(*returning)
                )
                rows.extend((await session.execute(stmt)).all())
        rows.sort(key=lambda d: d.id)  # plain rows: no ORM bookkeeping
        return rows

    async def renew(self, session: AsyncSession, scope_id: int, worker_id: str, now: datetime) -> None:
        """Extend the lease on every row this worker holds in the scope."""
        c = self.table.c
        await session.execute(
            self.table.update()
            .where(c[self.scope] == scope_id, c.status == "sending", c.claimed_by == worker_id)
            .values(claimed_at=now)
        )

    async def record(
        self,
        session: AsyncSession,
        worker_id: str,
        now: datetime,
        *,
        sent: Sequence[dict[str, Any]] = (),
        ended: Sequence[dict[str, Any]] = (),
        retry: Sequence[dict[str, Any]] = (),
        unsent: Sequence[dict[str, Any]] = (),
        later: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Write a batch's results, each list as one executemany. Rows carry `b_id`; `ended` rows a
        final `status` and `err`; `retry` rows `err` and `nxt` (when to try again); `unsent` rows go back
        to `pending` with the attempt uncounted (an `err` given with one is kept as its `last_error`);
        `later` rows too, not due before their `nxt` (claimed, never tried: held by a deferral)."""
        conn = await session.connection()
        table = self.table
        mine = and_(table.c.id == bindparam("b_id"), table.c.claimed_by == worker_id)
        if sent and not self.sent_extra:  # one statement: nothing differs between the rows but their id
            await conn.execute(
                self._sent_by_id, {"ids": [r["b_id"] for r in sent], "wid": worker_id, "at": now}
            )
        elif sent:
            extra: dict[str, Any] = {column: bindparam(key) for column, key in self.sent_extra}
            await conn.execute(
                table.update().where(mine).values(status="sent", sent_at=now, last_error=None, **extra), sent
            )
        if ended:
            await conn.execute(
                table.update().where(mine).values(status=bindparam("status"), last_error=bindparam("err")),
                [{k: v for k, v in r.items() if k in ("b_id", "status", "err")} for r in ended],
            )
        if retry:
            await conn.execute(
                table.update()
                .where(mine)
                .values(status="pending", last_error=bindparam("err"), next_attempt_at=bindparam("nxt")),
                retry,
            )
        back = [r for r in unsent if "err" not in r]
        said = [r for r in unsent if "err" in r]
        if back:
            await conn.execute(
                table.update().where(mine).values(status="pending", attempts=table.c.attempts - 1), back
            )
        if said:
            await conn.execute(
                table.update()
                .where(mine)
                .values(status="pending", attempts=table.c.attempts - 1, last_error=bindparam("err")),
                said,
            )
        waiting = (
            table.update()
            .where(mine)
            .values(status="pending", attempts=table.c.attempts - 1, next_attempt_at=bindparam("nxt"))
        )
        quiet = [r for r in later if "err" not in r]
        told = [r for r in later if "err" in r]
        if quiet:
            await conn.execute(waiting, quiet)
        if told:
            await conn.execute(waiting.values(last_error=bindparam("err")), told)

    @cached_property
    def _sent_by_id(self) -> Any:
        """The rows `ids` held by worker `wid` sent at `at`: built once (with its values, a statement built
        per write cost a fifth of the write)."""
        c = self.table.c
        return (
            self.table.update()
            .where(c.id.in_(bindparam("ids", expanding=True)), c.claimed_by == bindparam("wid"))
            .values(status="sent", sent_at=bindparam("at"), last_error=None)
        )

    async def remaining(self, sessions: async_sessionmaker, scope_id: int) -> bool:
        """Whether any row of the scope is still `pending` or `sending`."""
        c = self.table.c
        async with sessions() as session:
            left = (
                await session.execute(
                    select(c.id)
                    .where(c[self.scope] == scope_id, c.status.in_(("pending", "sending")))
                    .limit(1)
                )
            ).scalar_one_or_none()
        return left is not None
