"""The outbox: membership changes of groups that live on a platform, pushed there after they commit.

`service.apply` writes a platform group's change as waiting (`adding` / `removing`) together with a
`provider_ops` entry, in the plan's own transaction. After the commit the outbox pushes it (within
seconds: a leaver leaves the platform as soon as it answers) and writes what the platform said:

- confirmed: the membership becomes `active` (or its row goes) — only then is it applied;
- refused for good (an address the platform does not know): the add is undone, audited, HR told;
- not now (down, throttling, a quota): tried again with back-off (`Retry-After` when the platform
  gives one), by the scheduled job `groups.push-providers`, until it lands; HR hears of the first
  failure and of the late success. A removal is never given up.

A platform whose only write replaces the whole list (WeCom mail) gets the full desired list,
computed from Postroom's database at the moment of the push — never from an earlier read; what the
platform holds that Postroom did not put there (drift) is recorded and kept until HR decides.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.background import Background
from bot.context import Context
from bot.db.models import Group, Membership, Person, ProviderDrift, ProviderOp
from bot.events import Message
from bot.groups import drift
from bot.groups.providers.base import GroupMissing, Provider, ProviderError, Pushed, RemoteMember
from bot.groups.providers.registry import LABELS, Providers
from bot.i18n import t
from bot.messengers import Messengers
from bot.scheduler import Scheduler, now

log = logging.getLogger(__name__)
JOB = "groups.push-providers"  # the scheduled job's id and handler name
LEASE_S = 120
PARALLEL = 8  # groups pushed at once
BATCH = 500


@dataclass
class _Op:
    id: int
    group_id: int
    address: str
    display_name: str | None
    kind: str
    provider: str
    email: str
    op: str
    role: str
    cause: str
    attempts: int


@dataclass
class Drained:
    done: int = 0
    refused: int = 0
    waiting: int = 0
    lines_failed: list[tuple[str, str]] = field(default_factory=list)  # (provider, line)
    lines_late: list[tuple[str, str]] = field(default_factory=list)
    lines_refused: list[tuple[str, str]] = field(default_factory=list)


def _line(o: _Op) -> str:
    if o.op == "add":
        return t("+ {email} to {group}", email=o.email, group=o.address)
    return t("− {email} from {group}", email=o.email, group=o.address)


class Outbox:
    def __init__(self, ctx: Context, providers: Providers, messengers: Messengers, scheduler: Scheduler):
        self.ctx = ctx
        self.providers = providers
        self.messengers = messengers
        self.scheduler = scheduler
        self.background = Background("outbox", log)
        self._lock = asyncio.Lock()
        self._again = False
        self._posts: list[Any] = []

    # -- after a commit --------------------------------------------------------------------------
    def watch(self, session: AsyncSession) -> None:
        """Push once the transaction that wrote the entries commits (a rollback leaves nothing to push)."""
        if session.info.get("outbox.watch"):
            return
        session.info["outbox.watch"] = True

        def committed(_session: Any) -> None:
            _session.info.pop("outbox.watch", None)
            self.kick()

        def rolled_back(_session: Any) -> None:
            _session.info.pop("outbox.watch", None)

        event.listen(session.sync_session, "after_commit", committed, once=True)
        event.listen(session.sync_session, "after_rollback", rolled_back, once=True)

    def kick(self) -> None:
        if self._lock.locked():
            self._again = True
            return
        self.background.spawn(self.drain(), "push")

    async def settle(self, timeout: float | None = None) -> None:
        await self.background.settle(timeout)

    async def run_job(self) -> Drained:
        """Scheduled job: push whatever is due."""
        return await self.drain()

    # -- pushing ---------------------------------------------------------------------------------
    async def drain(self) -> Drained:
        """Push every due entry (several rounds while new ones arrive), then tell HR what needs telling."""
        total = Drained()
        async with self._lock:
            for _ in range(20):
                self._again = False
                ops = await self._claim()
                if ops:
                    await self._push(ops, total)
                if not self._again and len(ops) < BATCH:
                    break
        await self._tell_hr(total)
        await self._schedule_next()
        if self._again:  # a commit between the last look and the lock's release: look once more
            self._again = False
            self.kick()
        return total

    async def _claim(self) -> list[_Op]:
        at = now()
        due = (ProviderOp.next_attempt_at <= at) & or_(
            ProviderOp.claimed_until.is_(None), ProviderOp.claimed_until < at
        )
        async with self.ctx.sessions() as session, session.begin():
            ids = list(
                (
                    await session.execute(
                        select(ProviderOp.id).where(due).order_by(ProviderOp.id).limit(BATCH)
                    )
                ).scalars()
            )
            if not ids:
                return []
            # A conditional claim: another process pushing at the same moment gets the others.
            claimed = set(
                (
                    await session.execute(
                        update(ProviderOp)
                        .where(ProviderOp.id.in_(ids), due)
                        .values(claimed_until=at + timedelta(seconds=LEASE_S))
                        .returning(ProviderOp.id)
                    )
                ).scalars()
            )
            rows = (
                await session.execute(
                    select(ProviderOp, Group.address, Group.display_name, Group.kind)
                    .join(Group, Group.id == ProviderOp.group_id)
                    .where(ProviderOp.id.in_(claimed))
                    .order_by(ProviderOp.id)
                )
            ).all()
        return [
            _Op(o.id, o.group_id, a, n, k, o.provider, o.email, o.op, o.role, o.cause, o.attempts)
            for o, a, n, k in rows
        ]

    async def _push(self, ops: list[_Op], total: Drained) -> None:
        by_group: dict[int, list[_Op]] = defaultdict(list)
        for o in ops:
            by_group[o.group_id].append(o)
        batched: dict[str, list[list[_Op]]] = defaultdict(list)
        alone: list[list[_Op]] = []
        for group_ops in by_group.values():
            name = group_ops[0].provider
            try:
                shared = self.providers.get(name).cross_group_batches
            except ProviderError:
                shared = False
            (batched[name] if shared else alone).append(group_ops)
        # A leaver's fifty groups are pushed side by side (a few at a time: the platforms' rate limits),
        # or in shared batches where the platform takes them; what each said is written group by group.
        gate = asyncio.Semaphore(PARALLEL)

        async def one(group_ops: list[_Op]) -> list[tuple[list[_Op], Pushed]]:
            async with gate:
                return [(group_ops, await self._push_one(group_ops))]

        work = [one(g) for g in alone] + [self._push_shared(name, groups) for name, groups in batched.items()]
        for answers in await asyncio.gather(*work):
            for group_ops, answer in answers:
                await self._record(group_ops, answer, total)

    async def _push_shared(self, name: str, groups: list[list[_Op]]) -> list[tuple[list[_Op], Pushed]]:
        work = {
            g[0].address: (
                [RemoteMember(o.email, o.role) for o in g if o.op == "add"],
                [o.email for o in g if o.op == "remove"],
            )
            for g in groups
        }
        try:
            said = await self.providers.get(name).push_many(work)
        except Exception as exc:  # a platform's own failure changes nobody's data (invariant 8)
            error = (
                exc
                if isinstance(exc, ProviderError)
                else ProviderError(t("an unexpected error ({error})", error=type(exc).__name__))
            )
            if not isinstance(exc, ProviderError):
                log.exception("pushing to %s failed", name)
            said = {}
            for g in groups:
                said[g[0].address] = Pushed()
                said[g[0].address].fail_all([o.email for o in g], error)
        return [(g, said.get(g[0].address, Pushed())) for g in groups]

    async def _push_one(self, group_ops: list[_Op]) -> Pushed:
        first = group_ops[0]
        try:
            provider = self.providers.get(first.provider)
            return await self._push_group(provider, group_ops)
        except ProviderError as exc:
            said = Pushed()
            said.fail_all([o.email for o in group_ops], exc)
            return said
        except Exception as exc:  # a platform's own failure changes nobody's data (invariant 8)
            log.exception("pushing to %s failed", first.provider)
            said = Pushed()
            said.fail_all(
                [o.email for o in group_ops],
                ProviderError(t("an unexpected error ({error})", error=type(exc).__name__)),
            )
            return said

    async def _push_group(self, provider: Provider, ops: list[_Op]) -> Pushed:
        first = ops[0]
        if provider.whole_list_writes:
            return await self._write_whole_list(provider, first, ops)
        adds = [RemoteMember(o.email, o.role) for o in ops if o.op == "add"]
        removes = [o.email for o in ops if o.op == "remove"]
        said = Pushed()
        try:
            if removes:  # leavers first
                said.merge(await provider.remove(first.address, removes))
            if adds:
                said.merge(await provider.add(first.address, adds))
        except GroupMissing:
            if not adds:  # nothing to remove from a group that is not there
                said.done.update(removes)
                return said
            await provider.create_group(first.address, first.display_name, first.kind != "internal", adds)
            said.done.update(m.email for m in adds)
        return said

    async def _write_whole_list(self, provider: Provider, first: _Op, ops: list[_Op]) -> Pushed:
        try:
            there = await provider.members(first.address)
        except GroupMissing:
            there = None
        async with self.ctx.sessions() as session, session.begin():
            if there is not None:
                # What the platform holds that nobody in Postroom put there is drift: found now, kept
                # in the write (nothing overwritten silently) until HR decides.
                await drift.record(
                    session,
                    first.group_id,
                    first.provider,
                    await drift.compare(session, first.group_id, there),
                )
            wanted = {
                e: r
                for e, r in (
                    await session.execute(
                        select(Membership.email, Membership.role).where(
                            Membership.group_id == first.group_id, Membership.state != "removing"
                        )
                    )
                ).all()
            }
            for d in (
                await session.execute(select(ProviderDrift).where(ProviderDrift.group_id == first.group_id))
            ).scalars():
                if d.kind == "removed":
                    wanted.pop(d.email, None)
                else:
                    wanted.setdefault(d.email, d.role)
            gone = set(
                (
                    await session.execute(
                        select(Person.email).where(Person.email.in_(list(wanted)), Person.status == "left")
                    )
                ).scalars()
            )
        # A leaver is out of every group, whoever put them back on the platform.
        members = [RemoteMember(e, r) for e, r in sorted(wanted.items()) if e not in gone]
        if there is None:
            await provider.create_group(first.address, first.display_name, first.kind != "internal", members)
        else:
            await provider.set_members(first.address, members)
        return Pushed(done={o.email for o in ops})

    async def _record(self, ops: list[_Op], said: Pushed, total: Drained) -> None:
        settings = self.ctx.settings.providers
        at = now()
        async with self.ctx.sessions() as session, session.begin():
            for o in ops:
                label = LABELS.get(o.provider, o.provider)
                where = (Membership.group_id == o.group_id) & (Membership.email == o.email)
                if o.email in said.done or o.email in said.refused:
                    # Only the entry pushed is settled: a newer change of the same pair replaced it and waits.
                    gone = await session.execute(delete(ProviderOp).where(ProviderOp.id == o.id))
                    if not gone.rowcount:
                        continue
                if o.email in said.done:
                    total.done += 1
                    if o.op == "add":
                        await session.execute(
                            update(Membership)
                            .where(where, Membership.state == "adding")
                            .values(state="active")
                        )
                    else:
                        await session.execute(delete(Membership).where(where, Membership.state == "removing"))
                    audit.record(
                        session,
                        actor=f"provider:{o.provider}",
                        via=f"provider:{o.provider}",
                        action=f"membership.{o.op}.confirmed",
                        subject=f"group:{o.address}",
                        after={"email": o.email, "attempts": o.attempts + 1},
                    )
                    if o.attempts:
                        total.lines_late.append((label, _line(o)))
                elif o.email in said.refused and o.op == "add":
                    total.refused += 1
                    why = said.refused[o.email]
                    await session.execute(delete(Membership).where(where, Membership.state == "adding"))
                    audit.record(
                        session,
                        actor=f"provider:{o.provider}",
                        via=f"provider:{o.provider}",
                        action="membership.add.refused",
                        subject=f"group:{o.address}",
                        before={"email": o.email},
                        detail=why,
                    )
                    total.lines_refused.append((label, _line(o) + " — " + why))
                else:
                    # Not now (or a removal the platform refused: a leaver must still leave): try again.
                    total.waiting += 1
                    why = said.retry.get(o.email) or said.refused.get(o.email) or t("no answer")
                    delay = min(settings.retry_base_s * (2 ** min(o.attempts, 12)), settings.retry_max_s)
                    if said.retry_after_s is not None:
                        delay = max(delay if o.attempts else 0, said.retry_after_s)
                    await session.execute(
                        update(ProviderOp)
                        .where(ProviderOp.id == o.id)
                        .values(
                            attempts=ProviderOp.attempts + 1,
                            next_attempt_at=at + timedelta(seconds=delay),
                            claimed_until=None,
                            last_error=why[:2000],
                        )
                    )
                    if o.attempts == 0:
                        total.lines_failed.append((label, _line(o) + " — " + why))

    async def _tell_hr(self, d: Drained) -> None:
        def lines(items: list[tuple[str, str]]) -> dict[str, list[str]]:
            out: dict[str, list[str]] = defaultdict(list)
            for label, line in items:
                out[label].append(line)
            return out

        for label, items in lines(d.lines_failed).items():
            shown = items[:20]
            self._post(
                lambda label=label, shown=shown, more=len(items) - len(shown): Message(
                    t(
                        "{platform} did not take these changes yet; I will keep trying and tell you when it does:",
                        platform=label,
                    )
                    + "\n"
                    + "\n".join("  " + s for s in shown)
                    + (("\n  " + t("… and {count} more", count=more)) if more > 0 else "")
                )
            )
        for label, items in lines(d.lines_late).items():
            shown = items[:20]
            self._post(
                lambda label=label, shown=shown: Message(
                    t("{platform} has now taken the changes it could not take earlier:", platform=label)
                    + "\n"
                    + "\n".join("  " + s for s in shown)
                )
            )
        for label, items in lines(d.lines_refused).items():
            shown = items[:20]
            self._post(
                lambda label=label, shown=shown: Message(
                    t(
                        "{platform} refused these changes, so Postroom does not count them as members:",
                        platform=label,
                    )
                    + "\n"
                    + "\n".join("  " + s for s in shown)
                )
            )
        if self._posts:
            posts, self._posts = self._posts, []
            for build in posts:
                await self.messengers.post("hr", build)

    def _post(self, build: Any) -> None:
        self._posts.append(build)

    async def _schedule_next(self) -> None:
        """The next try at the earliest waiting entry (the minute job is the fallback)."""
        async with self.ctx.sessions() as session:
            nxt = (
                await session.execute(
                    select(ProviderOp.next_attempt_at).order_by(ProviderOp.next_attempt_at).limit(1)
                )
            ).scalar_one_or_none()
        if nxt is None or JOB not in self.scheduler.handlers:
            return
        try:
            self.scheduler.at(f"{JOB}:next", max(nxt, now() + timedelta(seconds=1)), JOB)
        except Exception:
            log.exception("could not schedule the next push")

    async def pending(self, group_id: int | None = None) -> int:
        async with self.ctx.sessions() as session:
            query = select(ProviderOp.id)
            if group_id is not None:
                query = query.where(ProviderOp.group_id == group_id)
            return len((await session.execute(query)).all())
