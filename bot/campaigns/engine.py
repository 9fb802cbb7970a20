"""The delivery engine: snapshot the audience into delivery rows, then claim, render and send them
in batches over persistent SMTP connections, recording results a batch at a time.

Nothing is lost: a row is `pending` until a batch claims it (`sending`, with a lease that the
worker renews while it works); a process that dies leaves its claimed rows to be re-claimed when
the lease runs out, so at most one batch per worker is repeated (the in-flight window). Several
workers share a campaign by claiming disjoint batches (`FOR UPDATE SKIP LOCKED` on PostgreSQL;
SQLite's single writer serialises the claim).

While a batch is out, a watcher reads the campaign's state a few times a second: a pause or a
cancel from any process stops the next message, and what was not sent goes back to `pending`.

Only a recipient's own permanent failure bounces and suppresses (bot/mail/replies.py). A failure of the
send itself — the connection, the login, the sender, the relay — trips a circuit breaker: the campaign
pauses at once with a sentence saying what to check, and the rows go back to `pending` uncounted, so a
resume after the fix mails everyone once (invariant 8).

A bare 5xx at RCPT (no enhanced code naming the mailbox, `Outcome.unproven`) is what a relay refusing
everyone says too, so it is judged by what follows it. Real relays fail in three ways that look alike one
reply at a time, and each leaves a different trace:

- a relay that refuses everything (misconfigured, out of quota, its own upstream down) gives the same
  reply for every recipient at every domain, over every connection;
- one pooled connection gone bad (a session the relay has flagged, a half-broken TLS state) refuses
  everything over that connection while the others deliver;
- a provider with dead mailboxes refuses just those, and still accepts its live ones — and a provider
  refusing the relay altogether refuses every address of its own domain and no other.

So a bare refusal is proven to be the recipient's only by a later delivery **over the same connection to
the same recipient domain**: the same connection rules out the connection's state, the same domain rules
out the route to that domain. Until then the row stays claimed by this worker (its lease renewed by the
watcher) and waits, across batches, in `UnprovenRefusals` (bot/outbox.py) (bounded by `unproven_hold`; when its connection
closes or nothing is left to claim it is retried instead, and after `max_attempts` it fails without being
suppressed). And the server is blamed — pause at once, none of them suppressed, back to `pending`
uncounted with the reply kept — only when one connection gives the same bare reply to
`same_refusal_limit` distinct recipients in a row **at more than one domain** (a provider's run of dead
mailboxes never spans domains, a relay refusing everyone does within a few recipients), or at one domain
before this run has delivered anything at all (no sign yet that the relay accepts any mail). A row put back
that way (its `last_error` is that reply) is not counted in a streak again, so a resumed run sends on past
it instead of pausing on the same rows each time: every resume makes progress.

A domain that refuses everyone is a circuit of its own (`_DomainBreaker`): when `domain_refusal_limit`
distinct recipients there, over any connections, get the same bare reply in a row with nothing delivered to
that domain in between, while other domains take mail in this run, the domain is **deferred**: its held
refusals wait (`pending`, tried again from a time that backs off with each deferral, the attempt counted —
they were tried — so a row refused `max_attempts` times fails unsuppressed), every row of it claimed before
the deferral ends goes back untried to wait for the same time with its attempt uncounted (a domain deferred
again and again gives up nobody it was never asked about), and its refusals leave the error window — the
campaign-wide pause is for failures not confined to one domain. After the wait, the domain's first refusal
with the same reply defers it again; a delivery there ends it. The chat is told once per run which domain
waits, why and until when; nobody there is suppressed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.exc import IntegrityError

from bot.addresses import email_hash
from bot.campaigns import service
from bot.campaigns.audience import (
    Recipient,
    audience_key_bound,
    snapshot_deliveries,
    suppressed_among,
    withdrawn_among,
)
from bot.campaigns.messages import CampaignMessages
from bot.campaigns.notes import english, note
from bot.campaigns.send_faults import deferred_domain_note, pause_note, repeated_refusal_note
from bot.campaigns.templates import TemplateProblem, load_source
from bot.config import Settings
from bot.context import Context
from bot.db.models import Campaign, Delivery, Suppression
from bot.mail.replies import reply_key
from bot.mail.transport import Outcome, SmtpTarget, SmtpTransport
from bot.outbox import Claims, RefusalStreak, UnprovenRefusals, backoff_s, verdict
from bot.suppressions import Evidence, suppress

log = logging.getLogger(__name__)

CLAIMS = Claims(
    cast(Table, Delivery.__table__),
    "campaign_id",
    ("id", "email", "name", "attributes", "attempts", "last_error"),
    sent_extra=(("message_id", "mid"),),
)

# (campaign id, event: progress | done | paused | auto-paused | failed)
ProgressCallback = Callable[[int, str], Awaitable[None]]
# (campaign id, a status note to tell the chat while the campaign goes on: a deferred domain)
NoticeCallback = Callable[[int, str], Awaitable[None]]


def _domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].lower()


def _given_up(d: Any, why: str, *, unsuppressed: bool = False) -> dict[str, Any]:
    """The record of a row failed after its `max_attempts` tries. `unsuppressed` says in it that nobody was
    suppressed, where a reader might think otherwise (a bare refusal no delivery proved the recipient's)."""
    said = ", not suppressed" if unsuppressed else ""
    return {"b_id": d.id, "status": "failed", "err": f"gave up after {d.attempts} attempts{said}: {why}"}


class _DomainBreaker:
    """Per recipient domain, across connections: the same bare refusal to distinct recipients in a row with
    nothing delivered to that domain in between, and the domains deferred for it (the module's docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streaks: dict[str, RefusalStreak] = {}
        self.until: dict[str, datetime] = {}  # deferred: its rows wait until then
        self.reply: dict[str, str] = {}  # the reply that deferred it
        self.trips: Counter[str] = Counter()
        self.delivered: set[str] = set()  # domains that took mail in this run
        self.told: set[str] = set()

    def holding(self, domain: str, since: datetime) -> datetime | None:
        """When `domain`'s rows are tried again, if it was deferred until `since` or later."""
        until = self.until.get(domain)
        return until if until is not None and until >= since else None

    def delivered_to(self, domain: str) -> None:
        self.delivered.add(domain)
        self.streaks.pop(domain, None)
        self.until.pop(domain, None)
        self.trips.pop(domain, None)

    def refused(self, domain: str, reply: str, email: str) -> int:
        """Count a bare refusal; the streak's length when the domain should be deferred now, else 0."""
        streak = self.streaks.setdefault(domain, RefusalStreak())
        count = streak.add(reply, email)
        need = 1 if self.trips[domain] else self.limit  # deferred before: the first refusal after the wait
        return count if count >= need and self.delivered - {domain} else 0

    def trip(self, domain: str, reply: str, now: datetime, base_s: float, max_s: float) -> datetime:
        self.trips[domain] += 1
        self.until[domain] = until = now + timedelta(seconds=backoff_s(self.trips[domain], base_s, max_s))
        self.reply[domain] = reply
        self.streaks.pop(domain, None)
        return until


@dataclass
class EngineOptions:
    batch_size: int = 500
    lease_s: float = 30.0
    max_attempts: int = 5
    retry_base_s: float = 60.0
    retry_max_s: float = 3600.0
    idle_poll_s: float = 0.5
    watch_s: float = 0.25  # how often the campaign's state is read while sending (pause within a second)
    rate_per_s: float = 0.0  # messages per second overall, 0: unlimited
    connections: int | None = None  # None: smtp.connections
    connections_per_domain: int = 0  # concurrent sends to one recipient domain, 0: unlimited
    error_window: int = 200
    error_min_samples: int = 50
    error_pause_share: float = 0.5
    same_refusal_limit: int = 3  # the same unproven RCPT refusal this often in a row, >1 domain: the server's
    domain_refusal_limit: int = 10  # ... at one domain while others take mail: that domain waits
    unproven_hold: int = 1000  # bare refusals held across batches awaiting proof; the oldest beyond: retried
    frequency_cap: int = 0
    frequency_period_s: float = 7 * 86400.0
    # The snapshot in chunks of the audience's key: the first with the start, so the first message leaves
    # while the rest is written beside the sending (one contact id, person id or membership id a key).
    snapshot_first_keys: int = 5_000
    snapshot_chunk_keys: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EngineOptions:
        c = settings.campaigns
        values: dict[str, Any] = dict(
            batch_size=c.batch_size,
            lease_s=c.lease_s,
            max_attempts=c.max_attempts,
            retry_base_s=c.retry_base_s,
            retry_max_s=c.retry_max_s,
            rate_per_s=c.rate_per_s,
            connections_per_domain=c.connections_per_domain,
            error_window=c.error_window,
            error_min_samples=c.error_min_samples,
            error_pause_share=c.error_pause_share,
            same_refusal_limit=c.same_refusal_limit,
            domain_refusal_limit=c.domain_refusal_limit,
            frequency_cap=c.frequency_cap,
            frequency_period_s=c.frequency_period_days * 86400.0,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class RunResult:
    campaign_id: int
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    note: str | None = None


class _RateLimiter:
    """A pacing limiter: one slot every 1/rate seconds, waiting interruptibly."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = 0.0

    async def wait(self, halt: asyncio.Event) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval
        if slot > now:
            try:
                await asyncio.wait_for(halt.wait(), slot - now)
            except TimeoutError:
                pass


class _ErrorWindow:
    """The share of failures among the last N outcomes, each with its recipient's domain."""

    def __init__(self, size: int):
        self.size = size
        self.outcomes: deque[tuple[str | None, str]] = deque()
        self.errors = 0

    def add(self, error: str | None, domain: str = "") -> None:
        self.outcomes.append((error, domain))
        if error is not None:
            self.errors += 1
        if len(self.outcomes) > self.size and self.outcomes.popleft()[0] is not None:
            self.errors -= 1

    def forget(self, domain: str) -> None:
        """A deferred domain's refusals are its own circuit's, not the campaign's."""
        self.outcomes = deque(o for o in self.outcomes if o[1] != domain)
        self.errors = sum(1 for e, _d in self.outcomes if e is not None)

    def share(self) -> tuple[int, int]:
        return self.errors, len(self.outcomes)

    def most_common(self) -> str:
        errors = Counter(e[:120] for e, _d in self.outcomes if e is not None)
        return errors.most_common(1)[0][0] if errors else ""


class _ChunkTaken(Exception):
    """Another worker moved the snapshot's mark first: this chunk is rolled back."""


class DeliveryEngine:
    def __init__(
        self,
        ctx: Context,
        *,
        options: EngineOptions | None = None,
        on_event: ProgressCallback | None = None,
        on_notice: NoticeCallback | None = None,
        worker_id: str | None = None,
    ):
        self.ctx = ctx
        self.options = options or EngineOptions.from_settings(ctx.settings)
        self.on_event = on_event
        self.on_notice = on_notice
        self.worker_id = worker_id or f"w-{secrets.token_hex(4)}"
        self._stop = asyncio.Event()
        self._halt = asyncio.Event()  # the campaign left `sending`, or the engine paused it itself
        self._more = asyncio.Event()  # another chunk of the snapshot is written
        self._halt_reason: str | None = None
        self._window = _ErrorWindow(self.options.error_window)
        self._limiter = _RateLimiter(self.options.rate_per_s)  # the route's own rate, when it has one (run)
        smtp = ctx.settings.smtp
        self._server = f"{smtp.host}:{smtp.port}"  # the route's server, named in pause notes (run)
        self._keys = "smtp"  # where the route's settings live, named in pause notes (run)
        self._domain_slots: dict[str, asyncio.Semaphore] = {}
        self._late_suppressions: set[str] = set()  # hashes suppressed while a batch is out
        self._suppression_mark = 0
        self._streaks: dict[int | None, RefusalStreak] = {}  # per connection, since its last delivery
        self._unproven = UnprovenRefusals()  # bare RCPT refusals awaiting proof, across batches
        self._delivered = False  # anything delivered in this run: the relay accepts mail at all
        self._domains = _DomainBreaker(self.options.domain_refusal_limit)
        self._notices: list[str] = []  # deferred domains to tell the chat about once the batch is recorded
        self.sent_total = 0

    def stop(self) -> None:
        """Stop this process's work (shutdown); the campaign stays `sending` for a restart to resume."""
        self._stop.set()
        self._halt.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def _emit(self, campaign_id: int, what: str) -> None:
        if self.on_event is not None:
            try:
                await self.on_event(campaign_id, what)
            except Exception:  # a chat failure must not stop a send
                log.exception("progress callback failed for campaign %s", campaign_id)

    # -- start ----------------------------------------------------------------------------------
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
            gap = await service.approval_gap(self.ctx, session, campaign, digest)
            if gap is not None:
                won = await service.transition(
                    session,
                    campaign.id,
                    ("approved", "scheduled"),
                    "failed",
                    status_note=gap,
                    finished_at=self.ctx.now(),
                )
                if won:
                    service.audit_campaign(
                        session,
                        campaign,
                        actor=actor,
                        via="engine",
                        action="campaign.fail",
                        before=campaign.state,
                        after="failed",
                        detail=english(gap),
                    )
                return "failed"
            won = await service.transition(
                session, campaign.id, ("approved", "scheduled"), "sending", started_at=self.ctx.now()
            )
            if not won:
                return (await session.get(Campaign, campaign_id, populate_existing=True)).state
            if campaign.kind != "automation":  # an automation's deliveries are made by its triggers
                await self._snapshot(session, campaign)
            service.audit_campaign(
                session,
                campaign,
                actor=actor,
                via="engine",
                action="campaign.start",
                before=campaign.state,
                after="sending",
            )
        return "sending"

    async def _snapshot(self, session, campaign: Campaign) -> None:
        """The first chunk of the audience, with the start; `_extend_snapshot` writes the rest while the
        first messages leave. The audience is bounded by its key's largest value now: whoever is added to
        the source with a larger key after the start is not in this send."""
        upto = await audience_key_bound(session, campaign)
        first = min(upto, self.options.snapshot_first_keys)
        await snapshot_deliveries(session, self.ctx.settings, campaign, within=(0, first))
        if first < upto:
            await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign.id)
                .values(snapshot_after=first, snapshot_upto=upto)
            )

    async def _extend_snapshot(self, campaign_id: int) -> None:
        """Write the rest of the snapshot a chunk at a time, each chunk with the mark of how far it got in one
        transaction: a kill -9 between chunks resumes at the mark, and two workers never write one chunk
        twice (the mark moves by compare-and-set at the end, and the loser's chunk is rolled back). The
        campaign's row is updated last, so a pause waits for no chunk on PostgreSQL; on SQLite a chunk is
        small enough (snapshot_chunk_keys) to hold the one writer's lock well under a second."""
        while not self._halt.is_set():
            try:
                async with self.ctx.sessions() as session, session.begin():
                    campaign = await session.get(Campaign, campaign_id)
                    if campaign is None or campaign.snapshot_after is None or campaign.state != "sending":
                        return
                    after, upto = campaign.snapshot_after, campaign.snapshot_upto or 0
                    hi = min(upto, after + self.options.snapshot_chunk_keys)
                    await snapshot_deliveries(session, self.ctx.settings, campaign, within=(after, hi))
                    moved = await session.execute(
                        update(Campaign)
                        .where(Campaign.id == campaign_id, Campaign.snapshot_after == after)
                        .values(snapshot_after=hi if hi < upto else None)
                    )
                    if moved.rowcount != 1:
                        raise _ChunkTaken
            except (_ChunkTaken, IntegrityError):
                continue  # another worker wrote this chunk first: read the mark again
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: the mark did not move; try again shortly
                log.exception("writing the snapshot of campaign %s failed; trying again", campaign_id)
                await asyncio.sleep(1.0)
                continue
            self._more.set()
            await asyncio.sleep(0)  # let the sending take its turn between chunks

    async def _idle(self, seconds: float) -> None:
        """Wait up to `seconds`, less if the campaign halts or the snapshot grows."""
        self._more.clear()
        waits = [asyncio.ensure_future(self._halt.wait()), asyncio.ensure_future(self._more.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _snapshot_pending(self, campaign_id: int) -> bool:
        async with self.ctx.sessions() as session:
            after = (
                await session.execute(select(Campaign.snapshot_after).where(Campaign.id == campaign_id))
            ).scalar_one_or_none()
        return after is not None

    # -- run ------------------------------------------------------------------------------------
    async def run(self, campaign_id: int, transport: SmtpTransport | None = None) -> RunResult:
        """Send every remaining delivery of a `sending` campaign. Returns when it is done, paused or stopped."""
        async with self.ctx.sessions() as session:
            campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return RunResult(campaign_id, "missing")
        # Its route's own server, login, pool and rate (bot/config.py SmtpSettings): two campaigns on
        # different routes share nothing, and a route's failure pauses only the campaigns on it.
        route = service.route_of(self.ctx, campaign)
        smtp = self.ctx.settings.smtp
        server = smtp.server(route)
        if server is None:  # the route was removed from the configuration since: the admin's to fix
            return await self._pause(
                campaign,
                note(
                    "Paused: it goes by the SMTP route “{route}”, which is no longer configured (there are: "
                    "{routes}). Configure it again or /campaign edit {name} --route, then /campaign resume "
                    "{name}.",
                    route=route,
                    routes=", ".join(smtp.route_names()),
                    name=campaign.name,
                ),
            )
        target = SmtpTarget.from_settings(server, route)
        self._server, self._keys = target.where, target.keys
        if server.rate_per_s is not None:
            self._limiter = _RateLimiter(server.rate_per_s)
        own_transport = transport is None
        transport = transport or self.ctx.new_transport(self.options.connections, route)
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self._watch(campaign_id))
        snapshot = loop.create_task(self._extend_snapshot(campaign_id))
        try:
            return await self._run(campaign_id, transport)
        finally:
            watcher.cancel()
            snapshot.cancel()
            try:
                await self._hand_back_unproven()
            except Exception:  # the lease runs out and another run claims them: nobody is lost
                log.exception("handing back unproven refusals of campaign %s failed", campaign_id)
            if own_transport:
                await transport.close()

    async def _watch(self, campaign_id: int) -> None:
        """Read the state a few times a second, pick up new suppressions (an unsubscribe takes effect
        before the next message, even within a batch), and renew the lease on what this worker holds."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        async with self.ctx.sessions() as session:
            self._suppression_mark = (await session.execute(select(func.max(Suppression.id)))).scalar() or 0
        while not self._halt.is_set():
            await asyncio.sleep(self.options.watch_s)
            try:
                state = await self._state(campaign_id)
                if state != "sending":
                    self._halt.set()
                    return
                async with self.ctx.sessions() as session:
                    fresh = (
                        await session.execute(
                            select(Suppression.id, Suppression.email_hash).where(
                                Suppression.id > self._suppression_mark
                            )
                        )
                    ).all()
                for sid, hashed in fresh:
                    self._late_suppressions.add(hashed)
                    self._suppression_mark = max(self._suppression_mark, sid)
                if loop.time() - renewed > self.options.lease_s / 3:
                    renewed = loop.time()
                    async with self.ctx.sessions() as session, session.begin():
                        await CLAIMS.renew(session, campaign_id, self.worker_id, self.ctx.now())
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again next tick
                log.exception("watching campaign %s failed", campaign_id)

    async def _run(self, campaign_id: int, transport: SmtpTransport) -> RunResult:
        async with self.ctx.sessions() as session:
            campaign = await session.get(Campaign, campaign_id)
        if campaign is None:
            return RunResult(campaign_id, "missing")
        if not self.ctx.signer.ready:  # a configuration problem, not the campaign's: pause (invariant 8)
            return await self._pause(
                campaign,
                note(
                    "Paused: links in mail can't be signed because web.secret is not set. Run {init}, "
                    "then /campaign resume {name}.",
                    init="postroom init",
                    name=campaign.name,
                ),
            )
        try:
            source = load_source(self.ctx.settings.campaigns.templates_dir, campaign.template)
            messages = CampaignMessages(self.ctx.settings, self.ctx.signer, campaign, source)
        except Exception as exc:
            return await self._fail(
                campaign, note("The template can no longer be loaded: {error}", error=exc)
            )
        # Every start and resume (a command, a restart, another process joining) checks the approval
        # against the very source it will send from: nothing unapproved or expired leaves (invariant 1).
        async with self.ctx.sessions() as session:
            gap = await service.approval_gap(
                self.ctx, session, campaign, service.content_hash(campaign, source.digest())
            )
        if gap is not None:
            return await self._fail(campaign, gap)
        last_progress = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            state = await self._state(campaign_id)
            if state != "sending" or self._halt.is_set():
                await self._hand_back_unproven()
                if state == "cancelled":  # rows this batch handed back must not wait forever
                    await self._cancel_pending(campaign_id)
                return RunResult(campaign_id, state)
            batch = await self._claim(campaign_id)
            if not batch and self._unproven:
                # Nothing left to send after them in this run: no proof can come; tried again after their
                # backoff, and after max_attempts failed without being suppressed.
                failed: list[dict] = []
                retry: list[dict] = []
                self._give_back(self._unproven.take(), failed, retry)
                await self._record(campaign, [], failed, retry, [], [], [])
                continue
            if not batch:
                if campaign.kind == "automation":  # standing: idle until its triggers make more (runs.py)
                    return RunResult(campaign_id, "idle")
                if await self._finished(campaign_id):
                    return await self._complete(campaign)
                # Retries waiting out their backoff, another worker's batch, or the next chunk of the
                # snapshot (which wakes this at once).
                await self._idle(self.options.idle_poll_s)
                continue
            await self._send_batch(campaign, messages, batch, transport)
            if self._halt_reason is not None:  # the error window or the circuit breaker tripped
                return await self._pause(campaign, self._halt_reason)
            if loop.time() - last_progress > 1.0:
                last_progress = loop.time()
                await self._emit(campaign_id, "progress")
        return RunResult(campaign_id, await self._state(campaign_id))

    async def _pause(self, campaign: Campaign, stored: str) -> RunResult:
        """`stored` is a status note from `notes.note` (shown translated; English in the audit trail)."""
        async with self.ctx.sessions() as session, session.begin():
            won = await service.transition(session, campaign.id, ("sending",), "paused", status_note=stored)
            if won:
                service.audit_campaign(
                    session,
                    campaign,
                    actor="system",
                    via="engine",
                    action="campaign.pause",
                    before="sending",
                    after="paused",
                    detail=english(stored),
                )
        if won:
            await self._emit(campaign.id, "auto-paused")
        return RunResult(campaign.id, "paused", note=english(stored))

    async def _hand_back_unproven(self) -> None:
        """The run stops (a pause, a cancel, a shutdown): held refusals go back to `pending` uncounted, each
        with the reply it got (so a resumed run does not count it in a streak again)."""
        if self._unproven:
            unsent = [{"b_id": d.id, "err": o.detail} for d, o in self._unproven.take()]
            async with self.ctx.sessions() as session, session.begin():
                await CLAIMS.record(session, self.worker_id, self.ctx.now(), unsent=unsent)

    def _give_back(self, held: list[tuple[Any, Outcome]], failed: list[dict], retry: list[dict]) -> None:
        """Refusals no delivery proved: retried after their backoff; after max_attempts, failed unsuppressed."""
        opts = self.options
        now = self.ctx.now()
        for d, outcome in held:
            if d.attempts >= opts.max_attempts:
                failed.append(_given_up(d, outcome.detail, unsuppressed=True))
            else:
                delay = backoff_s(d.attempts, opts.retry_base_s, opts.retry_max_s)
                retry.append({"b_id": d.id, "err": outcome.detail, "nxt": now + timedelta(seconds=delay)})

    async def _cancel_pending(self, campaign_id: int) -> None:
        async with self.ctx.sessions() as session, session.begin():
            await session.execute(
                update(Delivery)
                .where(Delivery.campaign_id == campaign_id, Delivery.status == "pending")
                .values(status="cancelled")
                .execution_options(synchronize_session=False)
            )

    async def _state(self, campaign_id: int) -> str:
        async with self.ctx.sessions() as session:
            return (
                await session.execute(select(Campaign.state).where(Campaign.id == campaign_id))
            ).scalar_one()

    async def _claim(self, campaign_id: int) -> list[Any]:
        """Claim up to a batch (bot/outbox.py): rows whose lease ran out first, then due pending ones."""
        return await CLAIMS.claim(
            self.ctx.sessions,
            self.ctx.dialect,
            campaign_id,
            self.worker_id,
            self.options.batch_size,
            self.options.lease_s,
            self.ctx.now(),
        )

    async def _capped(self, campaign_id: int, emails: list[str]) -> set[str]:
        """Addresses that already had `frequency_cap` campaign messages within the period."""
        cap = self.options.frequency_cap
        if not cap or not emails:
            return set()
        cutoff = self.ctx.now() - timedelta(seconds=self.options.frequency_period_s)
        async with self.ctx.sessions() as session:
            rows = (
                await session.execute(
                    select(Delivery.email, func.count())
                    .where(
                        Delivery.email.in_(emails),
                        Delivery.status == "sent",
                        Delivery.sent_at >= cutoff,
                        Delivery.campaign_id != campaign_id,
                    )
                    .group_by(Delivery.email)
                )
            ).all()
        return {email for email, n in rows if n >= cap}

    def _domain_slot(self, email: str) -> asyncio.Semaphore | None:
        if not self.options.connections_per_domain:
            return None
        domain = email.rsplit("@", 1)[-1]
        slot = self._domain_slots.get(domain)
        if slot is None:
            slot = self._domain_slots[domain] = asyncio.Semaphore(self.options.connections_per_domain)
        return slot

    async def _send_batch(
        self, campaign: Campaign, messages: CampaignMessages, batch: list[Any], transport: SmtpTransport
    ) -> None:
        """Send one claimed batch and record every outcome. A failure of the send itself sets
        `_halt_reason` and halts: what was not sent goes back to `pending`, its attempt not counted."""
        emails = [d.email for d in batch]
        async with self.ctx.sessions() as session:
            # Checked at send time, per batch: an unsubscribe mid-campaign stops the next message; an
            # automation's contact who left the list or withdrew consent since the trigger is not mailed.
            suppressed = await suppressed_among(session, emails)
            suppressed |= await withdrawn_among(session, campaign, emails)
        capped = await self._capped(campaign.id, emails)
        sent: list[dict] = []
        failed: list[dict] = []
        retry: list[dict] = []
        bounced: list[dict] = []
        skipped: list[dict] = []
        unsent: list[dict] = []
        later: list[dict] = []
        now = self.ctx.now()
        opts = self.options
        window = self._window
        server = self._server
        queue = deque(batch)
        unproven = self._unproven
        streaks = self._streaks
        halt = self._halt
        late = self._late_suppressions
        domains = self._domains

        def defer(d: Any, reply: str, until: datetime) -> None:
            """Tried, and its domain refuses everyone: the row waits (this attempt counted), failed
            unsuppressed after max_attempts tries."""
            if d.attempts >= opts.max_attempts:
                failed.append(_given_up(d, f"its domain refused everyone with {reply}", unsuppressed=True))
            else:
                retry.append({"b_id": d.id, "err": reply, "nxt": until})

        def defer_domain(domain: str, outcome: Outcome, reply: str, count: int) -> None:
            until = domains.trip(domain, outcome.detail, self.ctx.now(), opts.retry_base_s, opts.retry_max_s)
            window.forget(domain)
            for connection in [c for c, st in streaks.items() if domain in st.domains]:
                del streaks[connection]  # explained by the domain: not a sign against the relay any more
            for p, o in unproven.take(lambda p, _o: _domain(p.email) != domain):
                defer(p, o.detail, until)
            log.warning(
                "campaign %s: %s refused %d recipients in a row (%s); deferred until %s",
                campaign.id,
                domain,
                count,
                outcome.detail,
                until.isoformat(),
            )
            if domain not in domains.told:
                domains.told.add(domain)
                self._notices.append(
                    deferred_domain_note(outcome, domain=domain, count=count, until=until, name=campaign.name)
                )

        def check_window() -> None:
            errors, seen = window.share()
            if (
                seen >= opts.error_min_samples
                and errors / seen >= opts.error_pause_share
                and not halt.is_set()
            ):
                self._halt_reason = note(
                    "Paused by itself: {errors} of the last {seen} messages failed (most often: {error}). "
                    "Check the mail server, then /campaign resume {name}.",
                    errors=errors,
                    seen=seen,
                    error=window.most_common(),
                    name=campaign.name,
                )
                halt.set()

        async def worker() -> None:
            while queue:
                d = queue.popleft()
                if halt.is_set():
                    unsent.append({"b_id": d.id})
                    continue
                if d.email in suppressed or (late and email_hash(d.email) in late):
                    skipped.append({"b_id": d.id, "status": "suppressed", "err": "suppressed before sending"})
                    continue
                if d.email in capped:
                    skipped.append(
                        {
                            "b_id": d.id,
                            "status": "capped",
                            "err": f"frequency cap: {opts.frequency_cap} campaign messages per period",
                        }
                    )
                    continue
                domain = _domain(d.email)
                held = domains.holding(domain, now)
                if held is not None:  # not tried: it waits for the deferral's end, the attempt uncounted
                    later.append({"b_id": d.id, "nxt": held})
                    continue
                await self._limiter.wait(halt)
                if halt.is_set():
                    unsent.append({"b_id": d.id})
                    continue
                if late and email_hash(d.email) in late:  # unsubscribed while it waited for its slot
                    skipped.append({"b_id": d.id, "status": "suppressed", "err": "suppressed before sending"})
                    continue
                try:
                    built = await messages.build_async(
                        Recipient(d.email, d.name, d.attributes or {}), delivery_id=d.id
                    )
                except TemplateProblem as exc:
                    failed.append({"b_id": d.id, "status": "failed", "err": exc.sentence})
                    continue
                slot = self._domain_slot(d.email)
                if slot is None:
                    outcome: Outcome = await transport.send(built.sender, d.email, built.data)
                else:
                    async with slot:
                        outcome = await transport.send(built.sender, d.email, built.data)
                kind = verdict(outcome, d.attempts, opts.max_attempts)
                if kind == "sent":
                    sent.append({"b_id": d.id, "mid": built.message_id})
                    window.add(None, domain)
                    domains.delivered_to(domain)
                    # Delivered over the same connection to the same domain after them: the bare refusals
                    # before it were about those recipients (the module's docstring says why both).
                    bounced.extend(
                        {"b_id": p.id, "status": "bounced", "err": o.detail, "email": p.email}
                        for p, o in unproven.prove(outcome.connection, d.email)
                    )
                    streaks.pop(outcome.connection, None)
                    self._delivered = True
                    continue
                if kind == "bounced" and outcome.unproven:
                    held = domains.holding(domain, now)
                    if held is not None:  # in flight when its domain was deferred
                        defer(d, outcome.detail, held)
                        continue
                    unproven.add(d, outcome)
                    window.add(outcome.detail, domain)
                    reply = outcome.same_reply()
                    count = domains.refused(domain, reply, d.email)
                    if count:
                        defer_domain(domain, outcome, reply, count)
                        continue
                    if d.last_error and reply_key(d.last_error) == reply:
                        # Put back (or retried) after this very reply: it was counted once. Counting it
                        # again would pause every resumed run on the same rows before anyone else.
                        check_window()
                        continue
                    streak = streaks.get(outcome.connection)
                    if streak is None:
                        if len(streaks) > 4 * transport.size:  # connections closed since: forget theirs
                            streaks.clear()
                        streak = streaks[outcome.connection] = RefusalStreak()
                    streak.add(reply, d.email)
                    if streak.blames_server(opts.same_refusal_limit, self._delivered):
                        # The same bare refusal at several domains over one connection with nothing delivered
                        # over it in between (or before anything was delivered at all): the server's (or
                        # that connection's), not theirs. None of them is suppressed (the batch's end puts
                        # them back uncounted); the campaign pauses now.
                        if not halt.is_set():
                            self._halt_reason = repeated_refusal_note(
                                outcome, count=streak.count, server=server, name=campaign.name
                            )
                            halt.set()
                    check_window()
                    continue
                if kind == "halt":
                    # The server, the login, the sender or the connection failed, not this recipient:
                    # the row goes back untouched and the campaign pauses now (a circuit breaker that
                    # does not wait for error_min_samples).
                    unsent.append({"b_id": d.id})
                    if not halt.is_set():
                        self._halt_reason = pause_note(
                            outcome, server=server, keys=self._keys, sender=built.sender, name=campaign.name
                        )
                        halt.set()
                    continue
                window.add(outcome.detail or "error", domain)
                if kind == "bounced":
                    bounced.append(
                        {"b_id": d.id, "status": "bounced", "err": outcome.detail, "email": d.email}
                    )
                elif kind == "failed":
                    failed.append({"b_id": d.id, "status": "failed", "err": outcome.detail})
                elif kind == "gave_up":
                    failed.append(_given_up(d, outcome.detail))
                else:
                    delay = backoff_s(d.attempts, opts.retry_base_s, opts.retry_max_s)
                    retry.append({"b_id": d.id, "err": outcome.detail, "nxt": now + timedelta(seconds=delay)})
                check_window()

        workers = max(1, transport.size)
        await asyncio.gather(*(worker() for _ in range(min(workers, len(batch)))))
        if halt.is_set():
            # Halted (a pause, a cancel, a stop, a failure of the send): the refusals not yet proven go back
            # to `pending` uncounted, each with its reply (not counted in a streak again on resume).
            unsent.extend({"b_id": p.id, "err": o.detail} for p, o in unproven.take())
        else:
            # Held for the next batches, but not past the connection that refused them (no proof can come
            # over a closed one) nor beyond `unproven_hold`: those are retried after their backoff.
            alive = transport.open_connections()
            self._give_back(
                unproven.take(lambda _d, o: o.connection in alive, over=opts.unproven_hold), failed, retry
            )
        await self._record(campaign, sent, failed, retry, bounced, skipped, unsent, later)
        self.sent_total += len(sent)
        await self._tell(campaign)

    async def _tell(self, campaign: Campaign) -> None:
        """Each domain deferred in this batch, once per run: in the audit trail and in the chat."""
        notices, self._notices = self._notices, []
        if not notices:
            return
        async with self.ctx.sessions() as session, session.begin():
            for stored in notices:
                service.audit_campaign(
                    session,
                    campaign,
                    actor="system",
                    via="engine",
                    action="campaign.defer_domain",
                    before="sending",
                    after="sending",
                    detail=english(stored),
                )
        if self.on_notice is not None:
            for stored in notices:
                try:
                    await self.on_notice(campaign.id, stored)
                except Exception:  # a chat failure must not stop a send
                    log.exception("telling the chat about campaign %s failed", campaign.id)

    async def _record(
        self,
        campaign: Campaign,
        sent: list[dict],
        failed: list[dict],
        retry: list[dict],
        bounced: list[dict],
        skipped: list[dict],
        unsent: list[dict],
        later: Sequence[dict] = (),
    ) -> None:
        now = self.ctx.now()
        async with self.ctx.sessions() as session, session.begin():
            await CLAIMS.record(
                session,
                self.worker_id,
                now,
                sent=sent,
                ended=[*failed, *bounced, *skipped],
                retry=retry,
                unsent=unsent,  # halted before these went out: back in the queue, the attempt not counted
                later=later,  # held by a deferred domain, never tried: due when the deferral ends, uncounted
            )
            for r in bounced:  # the relay refused this very address: the evidence is its reply
                await suppress(
                    session,
                    r["email"],
                    "hard_bounce",
                    Evidence("rcpt", "smtp", r["err"], campaign.id, "system"),
                )

    async def _finished(self, campaign_id: int) -> bool:
        """Nothing left to send, and no part of the audience left to write."""
        if await CLAIMS.remaining(self.ctx.sessions, campaign_id):
            return False
        return not await self._snapshot_pending(campaign_id)

    async def _complete(self, campaign: Campaign) -> RunResult:
        async with self.ctx.sessions() as session, session.begin():
            won = await service.transition(
                session, campaign.id, ("sending",), "completed", finished_at=self.ctx.now()
            )
            if won:
                counts = await service.counts(session, campaign.id)
                service.audit_campaign(
                    session,
                    campaign,
                    actor="system",
                    via="engine",
                    action="campaign.complete",
                    before="sending",
                    after="completed",
                    detail=", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                )
        async with self.ctx.sessions() as session:
            counts = await service.counts(session, campaign.id)
        if won:
            await self._emit(campaign.id, "done")
        return RunResult(campaign.id, "completed", counts)

    async def _fail(self, campaign: Campaign, stored: str) -> RunResult:
        """Move a sending campaign to `failed`, audited in the same transaction (invariant 6)."""
        async with self.ctx.sessions() as session, session.begin():
            won = await service.transition(
                session, campaign.id, ("sending",), "failed", status_note=stored, finished_at=self.ctx.now()
            )
            if won:
                service.audit_campaign(
                    session,
                    campaign,
                    actor="system",
                    via="engine",
                    action="campaign.fail",
                    before="sending",
                    after="failed",
                    detail=english(stored),
                )
        if not won:  # paused, cancelled or failed by someone else meanwhile: theirs is the last word
            return RunResult(campaign.id, await self._state(campaign.id))
        await self._emit(campaign.id, "failed")
        return RunResult(campaign.id, "failed", note=english(stored))
