"""Joiners, movers and leavers: what a `PersonEvent` does, whatever its source.

An event has one effect however often it is delivered (its id is kept), and events for one
person apply in order: one older than the last applied for that person changes nothing.
Joiner: the rule groups. Mover: rule groups recomputed, manual memberships kept. Leaver: out
of every group, manual ones too — at once, or when the grace period ends (a persistent scheduled
job, so a restart does not forget it). Rehire: rules apply again and HR hears what they had.
Every membership change is a plan executed through the one membership path
(bot/groups/membership.py), and HR gets a short note.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, insert, select
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.addresses import normalise, routing_refusal
from bot.context import Context
from bot.db.models import AuditEntry, Group, Membership, Person, PersonId, ProcessedEvent
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.events import Joiner, Message, PersonEvent
from bot.groups import planner, service
from bot.groups.guard import Kind
from bot.groups.membership import Memberships, Refused
from bot.groups.rules import RuleBook, person_values
from bot.hr import admission
from bot.hr.admission import HR_SOURCES, id_namespace
from bot.i18n import t
from bot.messengers import Messengers
from bot.scheduler import Scheduler, now

log = logging.getLogger(__name__)
KINDS = ("joined", "changed", "left")
RETRY_DELAYS_S = (0.2, 1.0)
# A leaver event naming nobody known yet (no email, an id no source has given before) is tried again:
# the joiner event, or the directory's, may still be on its way.
UNKNOWN_LEAVER_RETRY_MIN = (1, 10, 60, 360, 1440)
# Messenger directories namespace what they know so it never overwrites an HR attribute the rules match on.
DIRECTORY_PREFIXES = ("slack_", "dingtalk_", "wecom_")
# The scheduled jobs this module owns (registered with the scheduler by the composition root).
FINISH_LEAVER = "hr.finish-leaver"
RETRY_EVENT = "hr.retry-event"
RETRY_UNKNOWN_LEAVER = "hr.retry-unknown-leaver"
SNAPSHOT_RUN = 500  # a snapshot's plain events applied in one transaction (Lifecycle.apply_snapshot)


class UnknownPerson(UserError):
    """An event with no email for a person no source has told us about."""


@dataclass
class Outcome:
    status: str  # applied | duplicate | stale | queued (an unknown leaver, tried again later)
    person: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # manual memberships a mover keeps
    owned: list[str] = field(default_factory=list)  # groups a leaver owned
    before: list[str] | None = None  # a rehire's groups when they left
    removal_due: datetime | None = None  # a leaver in their grace period
    held: int | None = None  # a plan waiting for an approver (protected groups)
    note: str = ""  # what HR was told (in the language of the moment; each messenger gets its own)
    person_id: int | None = None
    kind: str = ""
    who: str = ""  # "Name (email)" or the email
    moved: list[str] = field(default_factory=list)  # a mover's attribute changes, "key old → new"
    schedule_failed: bool = False
    future_leave: bool = False  # a leave dated later than now: they stay until its date (and grace)


def another_persons_address(person: Person, hr_ids: set[str], external_id: str, email: str) -> str | None:
    """Why an HR event (webhook or CSV) under `external_id` can't take `email`, the address of `person`
    on record under other HR ids (`hr_ids`: theirs in PersonId's "hr" namespace); None when it may (they
    have no HR id, or this is one of theirs). HR ids are immutable and a rehire keeps the employee id
    (docs/hr-webhook.md): taken by its address, such an event would take that person over — a `joined`
    renames and regroups them, a `left` removes them from every group — or re-activate a leaver as a
    rehire. Directory sources (Slack, DingTalk, WeCom) have ids of their own and are matched by address
    as before."""
    ids = set(hr_ids)
    if person.employee_id and person.source in HR_SOURCES:  # a directory-made person's is its directory id
        ids.add(person.employee_id)
    if not ids or external_id in ids:
        return None  # a person on record without an HR id (or under this one): matched by address
    theirs = person.employee_id if person.employee_id in ids else sorted(ids)[0]
    if person.status == "left":
        return t(
            "{email} belongs to {theirs}, who left; a rehire keeps the employee id: send the joined event "
            "for {theirs}, or correct the email.",
            email=email,
            theirs=theirs,
        )
    return t(
        "{email} belongs to {theirs}; an HR id is one person's and does not change: send the event for "
        "{theirs}, or correct the email.",
        email=email,
        theirs=theirs,
    )


async def _refuse_another_persons_address(
    session: AsyncSession, person: Person, event: PersonEvent, email: str
) -> None:
    """`another_persons_address` for an HR event, as a UserError; their HR ids looked up."""
    if id_namespace(event.source) != "hr":
        return
    ids = set(
        (
            await session.execute(
                select(PersonId.external_id).where(
                    PersonId.person_id == person.id, PersonId.namespace == "hr"
                )
            )
        ).scalars()
    )
    sentence = another_persons_address(person, ids, event.external_id, email)
    if sentence is not None:
        raise UserError(sentence)


class _RunFailed(Exception):
    """A run of a snapshot's plain events could not be applied together: each is applied on its own."""


class _NotApplied(Exception):
    """Raised inside the event's transaction so nothing of it is kept (not even its id as seen)."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome


def event_to_dict(e: PersonEvent) -> dict[str, Any]:
    return {
        "kind": e.kind,
        "source": e.source,
        "external_id": e.external_id,
        "email": e.email,
        "attributes": dict(e.attributes),
        "event_id": e.event_id,
        "at": e.at.isoformat(),
        "name": e.name,
    }


def event_from_dict(d: dict[str, Any]) -> PersonEvent:
    return PersonEvent(
        d["kind"],
        d["source"],
        d["external_id"],
        d.get("email"),
        dict(d.get("attributes") or {}),
        d["event_id"],
        datetime.fromisoformat(d["at"]),
        d.get("name"),
    )


class Lifecycle:
    """Applies PersonEvents from every source: the HR webhook, CSV snapshots, messenger directories."""

    def __init__(
        self,
        ctx: Context,
        rules: RuleBook,
        memberships: Memberships,
        messengers: Messengers,
        scheduler: Scheduler,
    ):
        self.ctx = ctx
        self.rules = rules
        self.memberships = memberships
        self.messengers = messengers
        self.scheduler = scheduler
        self._locks: dict[str, asyncio.Lock] = {}
        self._joiner_hooks: list[Callable[[list[Joiner]], Awaitable[None]]] = []

    def listen_for_joiners(self, hook: Callable[[list[Joiner]], Awaitable[None]]) -> None:
        """Call `hook` with applied joiners once they are committed (an onboarding automation): one at a
        time, or a snapshot's run of them together."""
        self._joiner_hooks.append(hook)

    def jobs(self) -> dict[str, Any]:
        """The scheduled jobs this lifecycle runs, by handler name."""
        return {
            FINISH_LEAVER: self.finish_leaver,
            RETRY_EVENT: self.retry_event,
            RETRY_UNKNOWN_LEAVER: self.retry_unknown_leaver,
        }

    def _lock_for(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) > 10_000:
                for k in [k for k, v in self._locks.items() if not v.locked()]:
                    self._locks.pop(k, None)
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def apply(
        self,
        event: PersonEvent,
        *,
        kind: Kind = "person",
        notify: bool = True,
        snapshot: bool = False,
        approved: bool = False,
    ) -> Outcome:
        """Apply one HR event. Raises UserError (nothing changed) when the event is unusable.

        `kind="reviewed"` applies an event whose plan an approver (or the snapshot's own review) has
        already seen; `notify=False` (a bulk import) leaves the per-person note to HR to the caller's
        summary; `snapshot=True` (a CSV row) replaces the attributes on record instead of merging;
        `approved=True` (an approved held plan) marks its removals so the brake's window does not count
        them again.
        """
        if event.kind not in KINDS:
            raise UserError(
                t("“{text}” is not an HR event type (joined, changed, left).", text=str(event.kind)[:40])
            )
        if event.at.tzinfo is None:
            raise UserError(t("The event's time has no time zone."))
        event = await admission.admit(self.ctx, event)  # dated within the window, clean values (or refused)
        async with self._lock_for(f"{id_namespace(event.source)}:{event.external_id}"):
            for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
                try:
                    outcome = await self._apply(event, kind, snapshot, approved)
                    break
                except UnknownPerson as exc:
                    if event.kind != "left":
                        raise
                    await self._retry_unknown_leaver(event, exc.sentence, attempt=0)
                    return Outcome("queued", person=event.external_id, kind=event.kind, note=exc.sentence)
                except DataError as exc:  # a value the database can't hold: sending it again won't help
                    log.warning("HR event %s has a value the database refuses: %s", event.event_id, exc.orig)
                    raise UserError(
                        t("The event has a value that can't be stored; correct it and send it again.")
                    ) from None
                except DBAPIError:
                    if delay is None:
                        log.exception("HR event %s failed %d times", event.event_id, attempt + 1)
                        await self._report_failure(event)
                        raise
                    await asyncio.sleep(delay)
        if outcome.status == "applied":
            await self._after_commit(event, outcome, notify)
        return outcome

    async def apply_snapshot(
        self,
        events: list[PersonEvent],
        *,
        approved: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Outcome | UserError]:
        """A CSV snapshot's events (reviewed as a whole already), in their order, each with what
        `apply(event, kind="reviewed", notify=False, snapshot=True)` gives or the UserError it raises.

        Applied one at a time, 3,000 rows took minutes: each event is its own transaction of some thirty
        statements. So runs of *plain* events — a joiner with an id and an address nobody has, a mover
        who is active, keeps their address and has nothing older or future-dated in the way — go
        together, up to SNAPSHOT_RUN in one transaction, with their reads and writes done for all of
        them; every other event (a leaver, a rehire, an address change, a duplicate, one to be refused)
        is applied on its own through `apply`, in its place in the order. A run that fails (a database
        error, someone else's change to the same people) is applied again one event at a time."""
        results: list[Outcome | UserError] = []
        while len(results) < len(events):
            run = self._plain_candidates(events, len(results))
            outcomes: list[Outcome] = []
            if run:
                try:
                    outcomes = await self._apply_run(run, approved)
                except _RunFailed:
                    for event, _email in run:
                        results.append(await self._apply_one(event, approved))
                        if progress is not None:
                            progress(len(results), len(events))
                    continue
            results += outcomes
            if len(outcomes) < len(run) or not run:  # the next event is not plain: on its own
                results.append(await self._apply_one(events[len(results)], approved))
            if progress is not None:
                progress(len(results), len(events))
        return results

    async def _apply_one(self, event: PersonEvent, approved: bool) -> Outcome | UserError:
        try:
            return await self.apply(event, kind="reviewed", notify=False, snapshot=True, approved=approved)
        except UserError as exc:  # refused for this person (nothing changed for them); the rest go on
            return exc

    def _plain_candidates(self, events: list[PersonEvent], start: int) -> list[tuple[PersonEvent, str]]:
        """The events from `start` that may be plain, by what they say alone, with their addresses: HR's
        joined or changed with an address, admissible, one source, each person and address once."""
        now, skew = self.ctx.now(), self.ctx.settings.hr.max_future_skew_s
        run: list[tuple[PersonEvent, str]] = []
        ids: set[str] = set()
        emails: set[str] = set()
        for event in events[start : start + SNAPSHOT_RUN]:
            if event.kind not in ("joined", "changed") or event.source not in HR_SOURCES or not event.email:
                break
            if run and event.source != run[0][0].source:
                break
            try:
                admission.check(event, now, skew)
                email = normalise(event.email, existing=True)
            except UserError:
                break
            if event.external_id in ids or email in emails or event.at.tzinfo is None:
                break
            ids.add(event.external_id)
            emails.add(email)
            run.append((event, email))
        return run

    async def _apply_run(self, run: list[tuple[PersonEvent, str]], approved: bool) -> list[Outcome]:
        """The plain events at the head of `run`, applied in one transaction; [] when the first is not."""
        async with contextlib.AsyncExitStack() as locks:
            for key in sorted({f"{id_namespace(e.source)}:{e.external_id}" for e, _m in run}):
                await locks.enter_async_context(self._lock_for(key))
            try:
                async with self.ctx.sessions() as session, session.begin():
                    plain = await self._plain_head(session, run)
                    if not plain:
                        return []
                    outcomes = await self._apply_plain(session, plain, approved)
            except DBAPIError as exc:  # IntegrityError included: someone else's change to these people
                log.warning(
                    "%d HR events applied together failed (%s): applying them one at a time", len(run), exc
                )
                raise _RunFailed from None
        for (event, _person, _email), outcome in zip(plain, outcomes, strict=True):
            await self._after_commit(event, outcome, notify=False, joiners=False)
        await self._joined(
            [(event, outcome) for (event, _p, _m), outcome in zip(plain, outcomes, strict=True)]
        )
        return outcomes

    async def _plain_head(
        self, session: AsyncSession, run: list[tuple[PersonEvent, str]]
    ) -> list[tuple[PersonEvent, Person | None, str]]:
        """The plain events at the head of `run` (event, their record or None for a joiner, address),
        judged as `_apply_once` judges each, from reads made once for the run."""
        ctx, settings = self.ctx, self.ctx.settings
        now = ctx.now()
        latest = now + timedelta(seconds=settings.hr.max_future_skew_s)
        rules = self.rules.current()
        pg = ctx.dialect == "postgresql"
        source = run[0][0].source
        exts = [e.external_id for e, _m in run]
        emails = [email for _e, email in run]
        seen = set(
            (
                await session.execute(
                    select(ProcessedEvent.event_id).where(
                        ProcessedEvent.source == f"person:{source}",
                        ProcessedEvent.event_id.in_([e.event_id[:300] for e, _m in run]),
                    )
                )
            ).scalars()
        )
        query = (
            select(PersonId.external_id, Person)
            .join(Person, Person.id == PersonId.person_id)
            .where(PersonId.namespace == id_namespace(source), PersonId.external_id.in_(exts))
        )
        by_id: dict[str, Person] = {
            ext: p
            for ext, p in (await session.execute(query.with_for_update(of=Person) if pg else query)).all()
        }
        query2 = select(Person).where(Person.employee_id.in_([x for x in exts if x not in by_id]))
        by_employee = {
            p.employee_id: p
            for p in (await session.execute(query2.with_for_update() if pg else query2)).scalars()
        }
        query3 = select(Person).where(Person.email.in_(emails))
        by_email = {
            p.email: p for p in (await session.execute(query3.with_for_update() if pg else query3)).scalars()
        }
        wanted = set(emails) | {service.untagged(settings, e) for e in emails}
        groups = set(
            (await session.execute(select(Group.address).where(Group.address.in_(wanted)))).scalars()
        )
        kinds = dict(
            (
                await session.execute(
                    select(Group.address, Group.kind).where(
                        Group.address.in_([g.address for g in rules.groups])
                    )
                )
            ).all()
        )
        plain: list[tuple[PersonEvent, Person | None, str]] = []
        for event, email in run:
            person = by_id.get(event.external_id) or by_employee.get(event.external_id)
            if event.event_id[:300] in seen:
                break  # a duplicate: `apply` says so
            if event.kind == "joined":
                if person is not None or email in by_email or service.not_a_mailbox(settings, email, groups):
                    break
                if not settings.is_internal(email):
                    values = person_values(email, event.external_id, event.name, event.attributes)
                    if any(kinds.get(r.address) == "internal" for r in rules.groups_for(values)):
                        break  # refused whole: `apply` says why
                plain.append((event, None, email))
                continue
            if person is None or person.status != "active" or person.email != email:
                break
            if (person.last_event_at is not None and person.last_event_at > latest) or (
                person.left_at is not None and person.left_at > latest
            ):
                break  # a date from before the window: admission repairs it first
            if person.last_event_at is not None and event.at < min(person.last_event_at, now):
                break  # stale
            plain.append((event, person, email))
        return plain

    async def _apply_plain(
        self, session: AsyncSession, plain: list[tuple[PersonEvent, Person | None, str]], approved: bool
    ) -> list[Outcome]:
        """What `_apply_once` does for each plain event, for all of them at once."""
        ctx = self.ctx
        source = plain[0][0].source
        actor, via = f"hr:{source}", source
        fresh = await insert_ignore(
            session,
            ProcessedEvent,
            [{"source": f"person:{source}", "event_id": e.event_id[:300]} for e, _p, _m in plain],
            ["source", "event_id"],
        )
        if fresh != len(plain):
            raise _RunFailed  # one of them was handled meanwhile: each is judged again on its own
        # The joiners in one INSERT … RETURNING (the ORM's unit of work sends one a row), written as their
        # event leaves them (the fields set below for everyone change nothing more for a joiner).
        new = [
            {
                "employee_id": event.external_id,
                "email": email,
                "name": event.name,
                "attributes": dict(event.attributes),
                "source": event.source,
                "status": "active",
                "last_event_at": event.at,
            }
            for event, person, email in plain
            if person is None
        ]
        made = {
            p.email: p for p in (await session.scalars(insert(Person).returning(Person), new) if new else [])
        }
        people = [person or made[email] for _e, person, email in plain]
        befores: list[tuple[dict[str, Any], dict[str, Any]]] = []
        await insert_ignore(
            session,
            PersonId,
            [
                {
                    "namespace": id_namespace(source),
                    "external_id": e.external_id[:200],
                    "person_id": p.id,
                    "created_at": ctx.now(),
                }
                for (e, _p, _m), p in zip(plain, people, strict=True)
            ],
            ["namespace", "external_id"],
        )
        await service.link_people(session, [(p.id, p.email) for p in people])
        for (event, _p, _m), person in zip(plain, people, strict=True):
            attributes_before = dict(person.attributes or {})
            befores.append(
                (
                    attributes_before,
                    {"status": person.status, "email": person.email, "attributes": attributes_before},
                )
            )
            person.last_event_at = event.at
            person.employee_id = person.employee_id or event.external_id
            person.status, person.left_at = "active", None
            if event.name:
                person.name = event.name
            # A snapshot is HR's whole record of HR's attributes; a messenger directory's (namespaced) stay.
            person.attributes = {
                **{k: v for k, v in (person.attributes or {}).items() if k.startswith(DIRECTORY_PREFIXES)},
                **dict(event.attributes),
            }
        await session.flush()
        plans = await planner.plan_people(session, self.rules.current(), people)
        out = await self.memberships.execute(
            service.Plan([c for plan in plans for c in plan.changes]),
            kind="reviewed",
            source=source,
            actor=actor,
            via=via,
            session=session,
            approved=approved,
        )
        joiners = {p.email for (_e, known, _m), p in zip(plain, people, strict=True) if known is None}
        if any(c.email in joiners for c, _why in out.plan.refused):
            raise _RunFailed  # a joiner is refused whole: `apply` says why
        added: dict[str, list[str]] = {}
        removed: dict[str, set[str]] = {}
        for c in out.plan.changes:
            if c.op == "add":
                added.setdefault(c.email, []).append(c.group_address)
            else:
                removed.setdefault(c.email, set()).add(c.group_address)
        manual = await _manual_groups_of(session, [p.email for p in people])
        await audit.record_all(
            session,
            [
                {
                    "actor": actor,
                    "via": via,
                    "action": f"person.{event.kind}",
                    "subject": f"person:{person.employee_id or email}",
                    "before": before,
                    "after": {
                        "status": person.status,
                        "email": person.email,
                        "attributes": person.attributes,
                    },
                    "detail": f"event {event.event_id}",
                }
                for (event, _p, email), person, (_a, before) in zip(plain, people, befores, strict=True)
            ],
        )
        outcomes = []
        for (event, _p, email), person, (attributes_before, _b) in zip(plain, people, befores, strict=True):
            outcome = Outcome(
                "applied",
                email,
                added=sorted(added.get(email, [])),
                removed=sorted(removed.get(email, set())),
                kept=manual.get(person.email, []),
                held=out.held,
                person_id=person.id,
                kind=event.kind,
                who=f"{person.name} ({person.email})" if person.name else person.email,
                moved=[
                    f"{k} {attributes_before.get(k, '—')} → {v}"
                    for k, v in sorted(event.attributes.items())
                    if attributes_before.get(k) != v
                ],
            )
            outcome.note = hr_note(outcome)
            outcomes.append(outcome)
        return outcomes

    async def replay(self, events: list[dict[str, Any]]) -> tuple[int, list[str]]:
        """Apply HR events an approver released (a held CSV snapshot); returns how many applied, and a
        sentence for each that did not (stale, a duplicate, refused for its person): the others still
        apply. A snapshot's events go as `postroom hr import` applies them (`apply_snapshot`)."""
        applied = 0
        skipped: list[str] = []
        parsed = [event_from_dict(raw) for raw in events]
        if all(raw.get("snapshot") for raw in events):
            results = await self.apply_snapshot(parsed, approved=True)
        else:
            results = []
            for raw, event in zip(events, parsed, strict=True):
                try:
                    results.append(
                        await self.apply(
                            event,
                            kind="reviewed",
                            notify=False,
                            snapshot=bool(raw.get("snapshot")),
                            approved=True,
                        )
                    )
                except UserError as exc:
                    results.append(exc)
        for event, out in zip(parsed, results, strict=True):
            if isinstance(out, UserError):
                log.warning("released HR event %s not applied: %s", event.event_id, out.sentence)
                skipped.append(not_applied(event, out.sentence.rstrip(".")))
            elif out.status == "applied":
                applied += 1
            else:
                skipped.append(not_applied(event, not_applied_why(out)))
        return applied, skipped

    # -- failures and retries ------------------------------------------------------------------
    async def _report_failure(self, event: PersonEvent) -> None:
        who = event.email or event.external_id
        scheduled = True
        try:
            self.scheduler.at(
                f"hr.retry:{event.source}:{event.event_id}"[:190],
                now() + timedelta(minutes=1),
                RETRY_EVENT,
                event=event_to_dict(event),
            )
        except Exception:
            log.exception("could not schedule the retry of %s", event.event_id)
            scheduled = False

        def text() -> Message:
            if event.kind == "left":
                if scheduled:
                    return Message(
                        t(
                            "Removing leaver {who} from their groups failed; I will try again in a minute.",
                            who=who,
                        )
                    )
                return Message(
                    t(
                        "Removing leaver {who} from their groups failed; the HR system's redelivery or /sync "
                        "will fix it.",
                        who=who,
                    )
                )
            if scheduled:
                return Message(
                    t(
                        "Applying the {kind} event for {who} failed; I will try again in a minute.",
                        kind=event.kind,
                        who=who,
                    )
                )
            return Message(
                t(
                    "Applying the {kind} event for {who} failed; the HR system's redelivery or /sync will fix "
                    "it.",
                    kind=event.kind,
                    who=who,
                )
            )

        await self.messengers.post("hr", text)

    async def retry_event(self, event: dict[str, Any]) -> None:
        """Scheduled job: a failed event, once more."""
        await self.apply(event_from_dict(event))

    async def _retry_unknown_leaver(self, event: PersonEvent, why: str, *, attempt: int) -> None:
        """A leaver event that names nobody known: HR hears of it, and it is tried again later."""
        who = event.external_id
        if attempt >= len(UNKNOWN_LEAVER_RETRY_MIN):
            log.error("leaver event %s from %s gave up: %s", event.event_id, event.source, why)
            await self.messengers.post(
                "hr",
                lambda: Message(
                    t(
                        "The leaver event for {who} ({source}) still names nobody I know, so I stopped trying: "
                        "remove them by hand (/removegroup) or send the event again with their email address.",
                        who=who,
                        source=event.source,
                    )
                ),
            )
            return
        minutes = UNKNOWN_LEAVER_RETRY_MIN[attempt]
        scheduled = True
        try:
            self.scheduler.at(
                f"hr.unknown-leaver:{event.source}:{event.event_id}"[:190],
                now() + timedelta(minutes=minutes),
                RETRY_UNKNOWN_LEAVER,
                event=event_to_dict(event),
                attempt=attempt + 1,
            )
        except Exception:
            log.exception("could not schedule the retry of leaver event %s", event.event_id)
            scheduled = False
        log.warning("leaver event %s from %s not applied yet: %s", event.event_id, event.source, why)
        if attempt == 0 or not scheduled:

            def text() -> Message:
                if scheduled:
                    return Message(
                        t(
                            "A leaver event for {who} ({source}) names nobody I know yet (no email address); "
                            "I will try again in {minutes} minutes. If they are still in groups, remove them by "
                            "hand (/removegroup).",
                            who=who,
                            source=event.source,
                            minutes=minutes,
                        )
                    )
                return Message(
                    t(
                        "A leaver event for {who} ({source}) names nobody I know (no email address), and I "
                        "could not schedule another try: remove them by hand (/removegroup) or send the event "
                        "again with their email address.",
                        who=who,
                        source=event.source,
                    )
                )

            await self.messengers.post("hr", text)

    async def retry_unknown_leaver(self, event: dict[str, Any], attempt: int) -> None:
        """Scheduled job: a leaver event that named nobody known, once more."""
        ev = event_from_dict(event)
        try:
            async with self._lock_for(f"{id_namespace(ev.source)}:{ev.external_id}"):
                outcome = await self._apply(ev, "person")
        except UnknownPerson as exc:
            await self._retry_unknown_leaver(ev, exc.sentence, attempt=attempt)
            return
        if outcome.status == "applied":
            await self._after_commit(ev, outcome, True)

    # -- one event -----------------------------------------------------------------------------
    async def _find(self, session: AsyncSession, event: PersonEvent) -> Person | None:
        namespace = id_namespace(event.source)
        known_ids = select(PersonId.person_id).where(
            PersonId.namespace == namespace, PersonId.external_id == event.external_id
        )
        query = select(Person).where(Person.id.in_(known_ids))
        if self.ctx.dialect == "postgresql":
            query = query.with_for_update()
        person = (await session.execute(query)).scalars().first()
        if person is None:  # a person on record before source ids were kept
            query = select(Person).where(Person.employee_id == event.external_id)
            if self.ctx.dialect == "postgresql":
                query = query.with_for_update()
            person = (await session.execute(query)).scalar_one_or_none()
        return person

    async def _apply(
        self, event: PersonEvent, kind: Kind, snapshot: bool = False, approved: bool = False
    ) -> Outcome:
        try:
            return await self._apply_once(event, kind, snapshot, approved)
        except _NotApplied as stale:  # rolled back: a resend is judged again, never a "duplicate"
            return stale.outcome

    async def _apply_once(self, event: PersonEvent, kind: Kind, snapshot: bool, approved: bool) -> Outcome:
        ctx = self.ctx
        settings = ctx.settings
        rules = self.rules.current()
        async with ctx.sessions() as session, session.begin():
            fresh = await insert_ignore(
                session,
                ProcessedEvent,
                [{"source": f"person:{event.source}", "event_id": event.event_id[:300]}],
                ["source", "event_id"],
            )
            if not fresh:
                return Outcome("duplicate")
            person = await self._find(session, event)
            email = (
                normalise(event.email, existing=True) if event.email else (person.email if person else None)
            )
            if email is None:
                raise UnknownPerson(
                    t(
                        "The {kind} event for {id} has no email address, and the person is not known yet.",
                        kind=event.kind,
                        id=event.external_id,
                    )
                )
            if person is None:
                person = (
                    await session.execute(select(Person).where(Person.email == email))
                ).scalar_one_or_none()
                if person is not None:
                    await _refuse_another_persons_address(session, person, event, email)
            if event.kind != "left" and (person is None or person.email != email):
                refused = await service.mailbox_refusal(
                    session, settings, email, directory=event.source in admission.DIRECTORY_SOURCES
                )
                if refused is not None:
                    raise UserError(refused)
            # Only a strictly older event is stale: one with the same time (sources with whole seconds) and
            # another id is a further change, applied in arrival order; the same id was caught as a duplicate.
            # The person's clock counts at most up to now, so an event dated in the future (inside the
            # allowed skew) holds back nothing after its time has come. A late `left` still applies — a
            # leaver must not stay in groups — unless they already left or a newer rehire is on record.
            late_left = False
            if person is not None and person.last_event_at is not None:
                clock = min(person.last_event_at, ctx.now())
                if event.at < clock:
                    if (
                        event.kind != "left"
                        or person.status == "left"
                        or (person.last_event_at > event.at and await _last_was_rehire(session, person))
                    ):
                        raise _NotApplied(Outcome("stale", email))
                    late_left = True
            known_before = person is not None
            if person is None:
                person = Person(
                    employee_id=event.external_id,
                    email=email,
                    name=event.name,
                    attributes=dict(event.attributes),
                    source=event.source,
                    status="active",
                )
                session.add(person)
                await session.flush()
            await insert_ignore(
                session,
                PersonId,
                [
                    {
                        "namespace": id_namespace(event.source),
                        "external_id": event.external_id[:200],
                        "person_id": person.id,
                        "created_at": ctx.now(),
                    }
                ],
                ["namespace", "external_id"],
            )
            await service.link_person(session, person.id, person.email)
            attributes_before = dict(person.attributes or {})
            before = {"status": person.status, "email": person.email, "attributes": attributes_before}
            assert person.last_event_at is not None or not late_left
            person.last_event_at = max(person.last_event_at, event.at) if late_left else event.at  # type: ignore[type-var]
            person.employee_id = person.employee_id or event.external_id
            outcome = Outcome("applied", email)
            actor, via = f"hr:{event.source}", event.source
            if event.kind == "left":
                person.status = "left"
                person.left_at = event.at
                due = event.at + timedelta(hours=settings.groups.leaver_grace_hours)
                current = await planner.plan_leaver(
                    session, person, t("{email} left ({source})", email=email, source=event.source)
                )
                person.left_groups = sorted({c.group_address for c in current.changes})
                if due <= ctx.now():
                    await self.memberships.execute(
                        current, kind=kind, source=event.source, actor=actor, via=via, session=session
                    )
                    outcome.removed = sorted({c.group_address for c in current.changes})
                else:
                    outcome.removal_due = due
                    outcome.future_leave = event.at > ctx.now()
                outcome.owned = await owned_groups(session, email)
            else:
                rehire = event.kind == "joined" and person.status == "left"
                if rehire:
                    outcome.before = list(person.left_groups or [])
                    await self.memberships.forget_exceptions(session, person, actor=actor, via=via)
                if event.kind == "joined" or person.status != "left":
                    person.status = "active"
                    person.left_at = None
                moved_out: list[str] = []
                if event.email and email != person.email:
                    moved_out = await self._rename(session, person, email, kind, actor=actor, via=via)
                if event.name:
                    person.name = event.name
                if event.source in HR_SOURCES and (event.kind == "joined" or snapshot):
                    # HR's record is the whole truth about HR's attributes; what a messenger's directory
                    # added (namespaced: slack_…, dingtalk_…, wecom_…) stays.
                    person.attributes = {
                        **{
                            k: v
                            for k, v in (person.attributes or {}).items()
                            if k.startswith(DIRECTORY_PREFIXES)
                        },
                        **dict(event.attributes),
                    }
                else:  # a directory's joined or changed merges, never replaces
                    person.attributes = {**(person.attributes or {}), **dict(event.attributes)}
                await session.flush()
                if person.status == "active":
                    plan = await planner.plan_person(session, rules, person)
                    # A new person (or a joiner) the rules would put in an internal group with an external
                    # address is refused whole; someone already on record who is external now (moved out by
                    # an address change) simply stays out of internal groups while their other changes apply.
                    whole = not moved_out and (event.kind == "joined" or not known_before)
                    try:
                        out = await self.memberships.execute(
                            plan,
                            kind=kind,
                            source=event.source,
                            actor=actor,
                            via=via,
                            session=session,
                            whole=whole,
                            approved=approved,
                        )
                    except Refused as exc:
                        c = exc.refused[0][0]
                        routed = routing_refusal(c.email, settings)
                        if routed:
                            raise UserError(
                                t(
                                    "{why}, and the rules put them in the internal group {group}: it can't "
                                    "join it.",
                                    why=routed,
                                    group=c.group_address,
                                )
                            ) from None
                        raise UserError(
                            t(
                                "{email} is outside {domains}, and the rules put them in the internal group "
                                "{group}: external people can't join it.",
                                email=c.email,
                                domains=", ".join(settings.org.domains),
                                group=c.group_address,
                            )
                        ) from None
                    outcome.added = sorted(c.group_address for c in out.plan.adds)
                    outcome.removed = sorted({*moved_out, *(c.group_address for c in out.plan.removes)})
                    outcome.held = out.held
                    outcome.kept = await _manual_groups(session, person)
            audit.record(
                session,
                actor=actor,
                via=via,
                action=f"person.{'rehired' if outcome.before is not None else event.kind}",
                subject=f"person:{person.employee_id or email}",
                before=before,
                after={"status": person.status, "email": person.email, "attributes": person.attributes},
                detail=f"event {event.event_id}",
            )
            outcome.kind = event.kind
            outcome.who = f"{person.name} ({person.email})" if person.name else person.email
            outcome.moved = [
                f"{k} {attributes_before.get(k, '—')} → {v}"
                for k, v in sorted(event.attributes.items())
                if attributes_before.get(k) != v
            ]
            outcome.note = hr_note(outcome)
            person_id = person.id
        outcome.person_id = person_id
        return outcome

    async def _rename(
        self, session: AsyncSession, person: Person, email: str, kind: Kind, *, actor: str, via: str
    ) -> list[str]:
        """A person's address changed: their memberships follow — except into internal groups when the new
        address is outside the company's domains: those memberships are removed (planned, audited, with
        the reason). Returns the groups they were removed from."""
        settings = self.ctx.settings
        taken = (
            await session.execute(select(Person.id).where(Person.email == email, Person.id != person.id))
        ).first()
        if taken:
            raise UserError(t("{email} already belongs to another person on record.", email=email))
        removed: list[str] = []
        if not settings.is_internal(email):
            rows = (
                await session.execute(
                    select(Membership.group_id, Group.address, Membership.email, Membership.source)
                    .join(Group, Group.id == Membership.group_id)
                    .where(
                        (Membership.person_id == person.id) | (Membership.email == person.email),
                        Group.kind == "internal",
                    )
                )
            ).all()
            why = t(
                "{old} changed address to {new}, outside {domains}: external people can't be in internal groups",
                old=person.email,
                new=email,
                domains=", ".join(settings.org.domains),
            )
            plan = service.Plan(
                [
                    service.Change(
                        "remove", r.group_id, r.address, r.email, r.source, why, person.id, "address-out"
                    )
                    for r in rows
                ]
            )
            await self.memberships.execute(plan, kind=kind, source=via, actor=actor, via=via, session=session)
            removed = sorted({r.address for r in rows})
        await service.follow_address(session, person.id, person.email, email)
        person.email = email
        return removed

    async def _after_commit(
        self, event: PersonEvent, o: Outcome, notify: bool = True, *, joiners: bool = True
    ) -> None:
        if o.removal_due is not None:
            try:
                assert o.person_id is not None
                self.scheduler.at(
                    leaver_job_id(o.person_id),
                    o.removal_due,
                    FINISH_LEAVER,
                    person_id=o.person_id,
                    left_at=event.at.isoformat(),
                )
            except Exception:
                log.exception("could not schedule the removal of leaver %s", o.person)
                o.schedule_failed = True
                o.note = hr_note(o)
        await self.memberships.announce(o.held)
        if notify:
            await self.messengers.post("hr", lambda: Message(hr_note(o)))
        if joiners:
            await self._joined([(event, o)])

    async def _joined(self, applied: list[tuple[PersonEvent, Outcome]]) -> None:
        joiners = [
            Joiner(o.person_id, o.person, event.name, dict(event.attributes), event.event_id)
            for event, o in applied
            if event.kind == "joined" and o.person_id is not None and o.person
        ]
        if not joiners:
            return
        for hook in self._joiner_hooks:
            try:
                await hook(joiners)
            except Exception:  # the membership change stands; the hook's owner logs its own trouble
                log.exception("joiner hook failed for %s", ", ".join(j.email for j in joiners[:5]))

    # -- the grace period ----------------------------------------------------------------------
    async def finish_leaver(self, person_id: int, left_at: str) -> list[str]:
        """Scheduled job: the grace period is over, so the leaver leaves every group."""
        left = datetime.fromisoformat(left_at)
        removed: list[str] = []
        try:
            async with self.ctx.sessions() as session, session.begin():
                person = await session.get(Person, person_id)
                # Rehired (or a newer leave) since: this job is no longer theirs to run.
                if person is None or person.status != "left" or person.left_at != left.astimezone(UTC):
                    return removed
                plan = await planner.plan_leaver(
                    session, person, t("{email} left; grace period over", email=person.email)
                )
                await self.memberships.execute(
                    plan,
                    kind="person",
                    source="grace-period",
                    actor="hr:grace-period",
                    via="scheduler",
                    session=session,
                )
                removed = sorted({c.group_address for c in plan.changes})
                who = person.email
        except Exception:
            log.exception("removing leaver %s failed", person_id)
            self.scheduler.at(
                leaver_job_id(person_id),
                now() + timedelta(minutes=1),
                FINISH_LEAVER,
                person_id=person_id,
                left_at=left_at,
            )
            await self.messengers.post(
                "hr",
                lambda: Message(
                    t(
                        "Removing a leaver (person #{id}) from their groups failed; I will try again in a minute.",
                        id=person_id,
                    )
                ),
            )
            return removed
        await self.messengers.post(
            "hr",
            lambda: Message(
                t("{who}'s grace period is over: removed from {groups}.", who=who, groups=_list(removed))
                if removed
                else t("{who}'s grace period is over; they were in no group.", who=who)
            ),
        )
        return removed


async def _last_was_rehire(session: AsyncSession, person: Person) -> bool:
    """Whether the last event applied for `person` was a rehire (the audit log keeps each applied event)."""
    last = (
        await session.execute(
            select(AuditEntry.action)
            .where(
                AuditEntry.subject == f"person:{person.employee_id or person.email}",
                AuditEntry.action.in_(("person.joined", "person.changed", "person.left", "person.rehired")),
            )
            .order_by(AuditEntry.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return last == "person.rehired"


async def _manual_groups(session: Any, person: Person) -> list[str]:
    return (await _manual_groups_of(session, [person.email])).get(person.email, [])


async def _manual_groups_of(session: Any, emails: list[str]) -> dict[str, list[str]]:
    """Each address's groups it is in by hand (or imported), not by a rule."""
    found: dict[str, list[str]] = {}
    for i in range(0, len(emails), 500):
        for email, address in (
            await session.execute(
                select(Membership.email, Group.address)
                .join(Group, Group.id == Membership.group_id)
                .where(Membership.email.in_(emails[i : i + 500]), ~Membership.source.like("rule:%"))
            )
        ).all():
            found.setdefault(email, []).append(address)
    return {email: sorted(groups) for email, groups in found.items()}


async def owned_groups(session: Any, email: str) -> list[str]:
    # The text match narrows the rows on both databases; the list check makes it exact.
    rows = (
        await session.execute(
            select(Group.address, Group.owners).where(cast(Group.owners, String).like(f'%"{email}"%'))
        )
    ).all()
    return sorted(a for a, owners in rows if email in (owners or []))


def _list(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return (
        t("{items} and {count} more", items=shown, count=len(items) - limit) if len(items) > limit else shown
    )


def hr_note(o: Outcome) -> str:
    """What HR is told about an applied event, in the current language."""
    who = o.who
    if o.kind == "left":
        if o.removal_due is not None and o.future_leave:
            text = t(
                "{who} leaves on a later date; they stay in their groups until {due} UTC.",
                who=who,
                due=f"{o.removal_due:%Y-%m-%d %H:%M}",
            )
        elif o.removal_due is not None:
            text = t(
                "{who} left; they stay in their groups until {due} UTC (grace period).",
                who=who,
                due=f"{o.removal_due:%Y-%m-%d %H:%M}",
            )
        elif o.removed:
            text = t("{who} left: removed from {groups}.", who=who, groups=_list(o.removed))
        else:
            text = t("{who} left; they were in no group.", who=who)
        if o.owned:
            text += " " + t("They owned {groups}: those groups need a new owner.", groups=_list(o.owned))
    else:
        changes = []
        if o.added:
            changes.append(t("added to {groups}", groups=_list(o.added)))
        if o.removed:
            changes.append(t("removed from {groups}", groups=_list(o.removed)))
        done = t("; ").join(changes) if changes else t("no group changed")
        if o.before is not None:
            if o.before:
                text = t(
                    "{who} is back (rehired): {changes}. When they left they were in {groups}.",
                    who=who,
                    changes=done,
                    groups=_list(o.before),
                )
            else:
                text = t(
                    "{who} is back (rehired): {changes}. When they left they were in no group.",
                    who=who,
                    changes=done,
                )
        elif o.kind == "joined":
            text = t("{who} joined: {changes}.", who=who, changes=done)
        else:
            if o.moved:
                text = t(
                    "{who} changed ({moves}): {changes}.", who=who, moves=t("; ").join(o.moved), changes=done
                )
            else:
                text = t("{who} changed: {changes}.", who=who, changes=done)
            kept = [g for g in o.kept if g not in o.added]
            if kept and changes:
                text += " " + t("Kept (added by hand): {groups}.", groups=_list(kept))
        if o.held is not None:
            text += " " + t("Changes to protected groups wait for an approver (plan #{id}).", id=o.held)
    if o.schedule_failed:
        text += " " + t(
            "Scheduling their removal failed: /sync will remove them when the grace period is over."
        )
    return text


def not_applied_why(outcome: Outcome) -> str:
    """Why an event changed nothing, in words."""
    return {
        "stale": t("an event dated later than this import is on record for them"),
        "duplicate": t("this same file was imported before, and this event was handled then"),
        "queued": outcome.note,
    }.get(outcome.status, outcome.status)


def not_applied(event: PersonEvent, why: str) -> str:
    who = f"{event.external_id} ({event.email})" if event.email else event.external_id
    return t("{who}, {kind}: not applied — {why}", who=who, kind=event.kind, why=why)


def leaver_job_id(person_id: int) -> str:
    return f"hr.leaver:{person_id}"
