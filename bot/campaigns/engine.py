"""The delivery engine: snapshot the audience into delivery rows, then claim, render and send them
in batches over persistent SMTP connections, recording results a batch at a time.

Nothing is lost: a row is `pending` until a batch claims it (`sending`, with a lease); a process
that dies leaves its claimed rows to be re-claimed when the lease runs out, so at most one batch
per worker is repeated. Several workers share a campaign by claiming disjoint batches
(`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's single writer serialises the claim).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, insert, or_, select, update

from bot.campaigns import service
from bot.campaigns.audience import Recipient, stream_audience, suppressed_among
from bot.campaigns.messages import CampaignMessages
from bot.campaigns.templates import TemplateProblem
from bot.context import Context
from bot.db.models import Campaign, Delivery
from bot.mail.transport import Outcome, SmtpTransport
from bot.suppressions import suppress

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, str], Awaitable[None]]  # (campaign id, event: progress|done|paused|failed)


@dataclass
class EngineOptions:
    batch_size: int = 500
    lease_s: float = 60.0
    max_attempts: int = 5
    retry_base_s: float = 30.0
    idle_poll_s: float = 0.5


@dataclass
class RunResult:
    campaign_id: int
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    note: str | None = None


class DeliveryEngine:
    def __init__(self, ctx: Context, *, options: EngineOptions | None = None, on_event: ProgressCallback | None = None,
                 worker_id: str | None = None):
        self.ctx = ctx
        self.options = options or EngineOptions(batch_size=ctx.settings.campaigns.batch_size)
        self.on_event = on_event
        self.worker_id = worker_id or f"w-{secrets.token_hex(4)}"
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def _emit(self, campaign_id: int, what: str) -> None:
        if self.on_event is not None:
            try:
                await self.on_event(campaign_id, what)
            except Exception:  # a chat failure must not stop a send
                log.exception("progress callback failed for campaign %s", campaign_id)

    async def start(self, campaign_id: int, actor: str = "system") -> str:
        """Move an approved (or due scheduled) campaign to `sending` and snapshot its audience.

        Returns the campaign's state afterwards. The snapshot and the state change commit together.
        """
        async with self.ctx.sessions() as session, session.begin():
            campaign = await session.get(Campaign, campaign_id)
            if campaign is None:
                return "missing"
            if campaign.state not in ("approved", "scheduled"):
                return campaign.state
            try:
                digest = service.current_hash(self.ctx, campaign)
            except Exception as exc:
                digest = f"unavailable: {exc}"
            approval = await service.valid_approval(session, campaign, digest, self.ctx.now())
            if digest != campaign.content_hash or approval is None:
                won = await service.transition(
                    session, campaign.id, ("approved", "scheduled"), "failed",
                    status_note="What would be sent no longer matches the approval (or it expired); "
                    "submit it again.", finished_at=self.ctx.now(),
                )
                if won:
                    service.audit_campaign(session, campaign, actor=actor, via="engine", action="campaign.fail",
                                           before=campaign.state, after="failed", detail="approval mismatch")
                return "failed"
            won = await service.transition(
                session, campaign.id, ("approved", "scheduled"), "sending", started_at=self.ctx.now()
            )
            if not won:
                return (await session.get(Campaign, campaign_id, populate_existing=True)).state  # type: ignore[union-attr]
            await self._snapshot(session, campaign)
            service.audit_campaign(session, campaign, actor=actor, via="engine", action="campaign.start",
                                   before=campaign.state, after="sending")
        return "sending"

    async def _snapshot(self, session, campaign: Campaign) -> None:  # type: ignore[no-untyped-def]
        async for chunk in stream_audience(session, self.ctx.settings, campaign):
            await session.execute(
                insert(Delivery),
                [
                    {"campaign_id": campaign.id, "email": r.email, "name": r.name, "attributes": r.attributes,
                     "status": "pending", "attempts": 0}
                    for r in chunk
                ],
            )

    async def run(self, campaign_id: int, transport: SmtpTransport | None = None) -> RunResult:
        """Send every remaining delivery of a `sending` campaign. Returns when it is done, paused or stopped."""
        own_transport = transport is None
        transport = transport or self.ctx.new_transport()
        try:
            return await self._run(campaign_id, transport)
        finally:
            if own_transport:
                await transport.close()

    async def _run(self, campaign_id: int, transport: SmtpTransport) -> RunResult:
        async with self.ctx.sessions() as session:
            campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return RunResult(campaign_id, "missing")
        try:
            messages = service.messages_for(self.ctx, campaign)
        except Exception as exc:
            return await self._fail(campaign, f"The template can no longer be loaded: {exc}")
        last_progress = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            state = await self._state(campaign_id)
            if state != "sending":
                return RunResult(campaign_id, state)
            batch = await self._claim(campaign_id)
            if not batch:
                if await self._finished(campaign_id):
                    return await self._complete(campaign)
                await asyncio.sleep(self.options.idle_poll_s)  # retries waiting out their backoff
                continue
            broken = await self._send_batch(campaign, messages, batch, transport)
            if broken:
                note = (f"Paused: the mail server at {self.ctx.settings.smtp.host}:{self.ctx.settings.smtp.port} "
                        f"refused or dropped every message of the last batch ({broken}).")
                async with self.ctx.sessions() as session, session.begin():
                    if await service.transition(session, campaign_id, ("sending",), "paused", status_note=note):
                        service.audit_campaign(session, campaign, actor="system", via="engine",
                                               action="campaign.pause", before="sending", after="paused",
                                               detail=note)
                await self._emit(campaign_id, "paused")
                return RunResult(campaign_id, "paused", note=note)
            if loop.time() - last_progress > 1.0:
                last_progress = loop.time()
                await self._emit(campaign_id, "progress")
        return RunResult(campaign_id, await self._state(campaign_id))

    async def _state(self, campaign_id: int) -> str:
        async with self.ctx.sessions() as session:
            return (await session.execute(select(Campaign.state).where(Campaign.id == campaign_id))).scalar_one()

    async def _claim(self, campaign_id: int) -> list[Delivery]:
        now = self.ctx.now()
        lease_cutoff = now - timedelta(seconds=self.options.lease_s)
        claimable = or_(
            and_(Delivery.status == "pending",
                 or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now)),
            and_(Delivery.status == "sending", Delivery.claimed_at < lease_cutoff),
        )
        ids = (
            select(Delivery.id)
            .where(Delivery.campaign_id == campaign_id, claimable)
            .order_by(Delivery.id)
            .limit(self.options.batch_size)
        )
        if self.ctx.dialect == "postgresql":
            ids = ids.with_for_update(skip_locked=True)
        stmt = (
            update(Delivery)
            .where(Delivery.id.in_(ids.scalar_subquery()))
            .values(status="sending", claimed_by=self.worker_id, claimed_at=now, attempts=Delivery.attempts + 1)
            .returning(Delivery.id, Delivery.email, Delivery.name, Delivery.attributes, Delivery.attempts)
            .execution_options(synchronize_session=False)
        )
        async with self.ctx.sessions() as session, session.begin():
            rows = (await session.execute(stmt)).all()
        batch = [Delivery(id=r.id, email=r.email, name=r.name, attributes=r.attributes, attempts=r.attempts)
                 for r in rows]
        batch.sort(key=lambda d: d.id)
        return batch

    async def _send_batch(self, campaign: Campaign, messages: CampaignMessages, batch: list[Delivery],
                          transport: SmtpTransport) -> str | None:
        """Send one claimed batch and record every outcome. Returns a reason when the server is unusable."""
        async with self.ctx.sessions() as session:
            # Checked at send time, per batch: an unsubscribe mid-campaign stops the next message.
            suppressed = await suppressed_among(session, (d.email for d in batch))
        sent: list[dict] = []
        failed: list[dict] = []
        retry: list[dict] = []
        bounced: list[dict] = []
        skipped: list[dict] = []
        now = self.ctx.now()
        sender = campaign.from_address
        sem = asyncio.Semaphore(transport.size)
        connection_failures = 0
        attempted = 0

        async def one(d: Delivery) -> None:
            nonlocal connection_failures, attempted
            if d.email in suppressed:
                skipped.append({"b_id": d.id, "status": "suppressed", "err": "suppressed before sending"})
                return
            try:
                built = messages.build(Recipient(d.email, d.name, dict(d.attributes or {})))
            except TemplateProblem as exc:
                failed.append({"b_id": d.id, "status": "failed", "err": exc.sentence})
                return
            async with sem:
                outcome: Outcome = await transport.send(sender, d.email, built.data)
            attempted += 1
            if outcome.ok:
                sent.append({"b_id": d.id, "mid": built.message_id})
            elif outcome.permanent:
                bounced.append({"b_id": d.id, "status": "bounced", "err": outcome.detail, "email": d.email})
            else:
                if outcome.code is None:
                    connection_failures += 1
                if d.attempts >= self.options.max_attempts:
                    failed.append({"b_id": d.id, "status": "failed",
                                   "err": f"gave up after {d.attempts} attempts: {outcome.detail}"})
                else:
                    delay = self.options.retry_base_s * (2 ** (d.attempts - 1))
                    retry.append({"b_id": d.id, "err": outcome.detail, "nxt": now + timedelta(seconds=delay)})

        await asyncio.gather(*(one(d) for d in batch))
        await self._record(campaign, sent, failed, retry, bounced, skipped)
        if attempted and connection_failures == attempted:
            return retry[0]["err"] if retry else "connection failures"
        return None

    async def _record(self, campaign: Campaign, sent: list[dict], failed: list[dict], retry: list[dict],
                      bounced: list[dict], skipped: list[dict]) -> None:
        from sqlalchemy import bindparam

        now = self.ctx.now()
        async with self.ctx.sessions() as session, session.begin():
            conn = await session.connection()
            table = Delivery.__table__
            mine = and_(table.c.id == bindparam("b_id"), table.c.claimed_by == self.worker_id)
            if sent:
                await conn.execute(
                    table.update().where(mine).values(status="sent", sent_at=now, message_id=bindparam("mid"),
                                                      last_error=None),
                    sent,
                )
            for rows in (failed, bounced, skipped):
                if rows:
                    await conn.execute(
                        table.update().where(mine).values(status=bindparam("status"), last_error=bindparam("err")),
                        [{k: v for k, v in r.items() if k != "email"} for r in rows],
                    )
            if retry:
                await conn.execute(
                    table.update().where(mine).values(status="pending", last_error=bindparam("err"),
                                                      next_attempt_at=bindparam("nxt")),
                    retry,
                )
            for r in bounced:
                await suppress(session, r["email"], "hard_bounce", f"campaign {campaign.name}: {r['err']}",
                               campaign.id)

    async def _finished(self, campaign_id: int) -> bool:
        async with self.ctx.sessions() as session:
            left = (
                await session.execute(
                    select(Delivery.id)
                    .where(Delivery.campaign_id == campaign_id, Delivery.status.in_(("pending", "sending")))
                    .limit(1)
                )
            ).scalar_one_or_none()
        return left is None

    async def _complete(self, campaign: Campaign) -> RunResult:
        async with self.ctx.sessions() as session, session.begin():
            if await service.transition(session, campaign.id, ("sending",), "completed", finished_at=self.ctx.now()):
                counts = await service.counts(session, campaign.id)
                service.audit_campaign(session, campaign, actor="system", via="engine", action="campaign.complete",
                                       before="sending", after="completed",
                                       detail=", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        async with self.ctx.sessions() as session:
            counts = await service.counts(session, campaign.id)
        await self._emit(campaign.id, "done")
        return RunResult(campaign.id, "completed", counts)

    async def _fail(self, campaign: Campaign, note: str) -> RunResult:
        async with self.ctx.sessions() as session, session.begin():
            await service.transition(session, campaign.id, ("sending",), "failed", status_note=note,
                                     finished_at=self.ctx.now())
        await self._emit(campaign.id, "failed")
        return RunResult(campaign.id, "failed", note=note)
