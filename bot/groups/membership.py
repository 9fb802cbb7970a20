"""The one membership path: every change to who is in which group — a command, an HR event from any
source, a rule edit, a CSV snapshot, `/sync`, an approved plan, the demo's seeding — is a `Plan`
handed to `Memberships.execute`. It asks the one guard (bot/groups/guard.py), applies what may apply
now through `service.apply` (idempotent, audited), keeps the rest in `pending_plans` for an approver
(a card with Approve/Reject), and keeps rule exceptions: a person HR removed by hand from a group
their rules put them in stays out of it until HR adds them again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.context import Context
from bot.db.models import AuditEntry, Group, Membership, PendingPlan, Person, RuleException
from bot.errors import Refusal
from bot.events import Button, Card, Message
from bot.groups import planner, service
from bot.groups.guard import Guard, Kind, Verdict, leavers
from bot.groups.outbox import Outbox
from bot.groups.providers.registry import LOCAL
from bot.groups.rules import RuleBook, RuleSet, person_values
from bot.groups.service import SHOWN, Change, Plan, listed
from bot.i18n import t
from bot.messengers import Messengers

log = logging.getLogger(__name__)

# Held plans of whole HR events (a CSV snapshot) are applied, once approved, by the HR lifecycle.
EventReplay = Callable[[list[dict[str, Any]]], Awaitable[tuple[int, list[str]]]]


class Refused(Refusal):
    """The plan was to apply whole (a command, a joiner) and policy refused part of it."""

    def __init__(self, refused: list[tuple[Change, str]]):
        super().__init__(refused[0][1])
        self.refused = refused


@dataclass
class Outcome:
    applied: int = 0
    held: int | None = None  # the pending plan's id
    reasons: list[str] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)  # what applied now (refused changes in plan.refused)
    waiting: list[Change] = field(default_factory=list)  # what the held plan holds
    pushed: bool = False  # it changed a group on a platform (the outbox pushes it after the commit)


class Memberships:
    def __init__(self, ctx: Context, rules: RuleBook, messengers: Messengers, outbox: Outbox):
        self.ctx = ctx
        self.rules = rules
        self.messengers = messengers
        self.outbox = outbox
        self.guard = Guard(ctx.settings)
        self.replay_events: EventReplay | None = None  # set by the composition root

    # -- the path --------------------------------------------------------------------------------
    async def review(self, session: AsyncSession, plan: Plan, kind: Kind) -> Verdict:
        """What the guard says of a plan, without applying anything (dry runs, previews)."""
        return await self.guard.review(session, plan, kind)

    async def execute(
        self,
        plan: Plan,
        *,
        kind: Kind,
        source: str,
        actor: str,
        via: str,
        session: AsyncSession | None = None,
        whole: bool = False,
        approved: bool = False,
    ) -> Outcome:
        """Guard, apply, hold. With `whole`, a refusal of any change refuses the plan (raises Refused,
        nothing applied). With `approved` (an approver released it), its removals are marked so (cause
        "approved"): the brake's window does not count what an approver has seen already. Inside a
        caller's `session`, the caller announces a held plan after its commit (`announce`); otherwise it
        is announced here."""
        if approved:
            plan = _approved(plan)
        if session is not None:
            return await self._execute(session, plan, kind, source, actor, via, whole)
        async with self.ctx.sessions() as own, own.begin():
            out = await self._execute(own, plan, kind, source, actor, via, whole)
        await self.announce(out.held)
        if out.pushed:
            # A command's answer comes once the platform has answered (or the bound has passed: the
            # outbox keeps trying and HR hears of it).
            await self.outbox.settle(self.ctx.settings.providers.max_inline_wait_s + 5)
        return out

    async def _execute(
        self, session: AsyncSession, plan: Plan, kind: Kind, source: str, actor: str, via: str, whole: bool
    ) -> Outcome:
        verdict = await self.guard.review(session, plan, kind)
        if whole and verdict.plan.refused:
            raise Refused(verdict.plan.refused)
        out = Outcome(plan=verdict.plan, reasons=verdict.reasons, waiting=verdict.held)
        if verdict.held:
            same = await _same_pending(session, verdict.held)
            pending = same or await self.hold(
                session,
                source=source,
                actor=actor,
                via=via,
                reasons=verdict.reasons,
                summary=Plan(verdict.held).summary(),
                changes=verdict.held,
            )
            out.held = pending.id
        out.applied = await self._apply(session, verdict.plan, actor=actor, via=via)
        out.pushed = bool(session.info.get("outbox.watch"))
        return out

    async def _apply(self, session: AsyncSession, plan: Plan, *, actor: str, via: str) -> int:
        """Where a plan takes effect: Postroom's rows, and for a group on a platform its outbox entries,
        pushed once this transaction commits."""
        await self._keep_exceptions(session, plan, actor=actor, via=via)
        remote = await self._platforms(session, plan)
        applied = await service.apply(session, plan, actor=actor, via=via, remote=remote)
        if remote and any(c.group_id in remote for c in plan.changes):
            self.outbox.watch(session)
        return applied

    async def _platforms(self, session: AsyncSession, plan: Plan) -> dict[int, str]:
        """The groups of this plan whose membership lives on a platform, with its provider's name."""
        ids = sorted({c.group_id for c in plan.changes})
        found: dict[int, str] = {}
        providers = self.outbox.providers
        for i in range(0, len(ids), 500):
            rows = await session.execute(
                select(Group.id, Group.provider).where(Group.id.in_(ids[i : i + 500]))
            )
            for gid, own in rows.all():
                name = providers.name_of(own)
                if name != LOCAL:
                    found[gid] = name
        return found

    async def reconcile(self, *, source: str, actor: str, via: str, dry_run: bool) -> str:
        """Definitions from the rules file, then every person against the rules: the /sync plan, in words."""
        ctx = self.ctx
        rules = self.rules.current()
        async with ctx.sessions() as session, session.begin():
            if dry_run:
                existing = (
                    set((await session.execute(select(Group.address))).scalars()) if rules.groups else set()
                )
                defs = [
                    t("would create {group}", group=g.address)
                    for g in rules.groups
                    if g.address not in existing
                ]
            else:
                defs = await planner.sync_group_definitions(
                    session, rules, ctx.settings, actor=actor, via=via
                )
            plan = await planner.plan_reconcile(session, rules, ctx.settings, now=ctx.now())
            if dry_run:
                verdict = await self.guard.review(session, plan, "reconcile")
                kept_out = await _exceptions(session)
        head = (t("Groups: {changes}.", changes=listed(defs)) + "\n") if defs else ""
        if dry_run:
            tail = (
                ("\n" + t("Kept out by rule exceptions: {items}.", items=t("; ").join(kept_out)))
                if kept_out
                else ""
            )
            allowed = Plan(verdict.plan.changes + verdict.held, refused=verdict.plan.refused)
            if not allowed.changes and not allowed.refused:
                return head + t("Everything matches the rules: nothing to change (dry run).") + tail
            text = head + t("Dry run — nothing changed.") + " " + allowed.summary()
            if verdict.reasons:
                text += "\n" + t(
                    "Applying it would need an approver: {reasons}.", reasons=listed(verdict.reasons)
                )
            return text + tail
        if not plan.changes:
            return head + t("Everything matches the rules: nothing changed.")
        out = await self.execute(plan, kind="reconcile", source=source, actor=actor, via=via)
        if not out.plan.changes and not out.waiting:
            return head + t("Everything matches the rules: nothing changed.") + "\n" + out.plan.summary()
        applied = (
            t("Applied {count} change.", count=out.applied)
            if out.applied == 1
            else t("Applied {count} changes.", count=out.applied)
        )
        if out.held is None:
            return head + applied + " " + out.plan.summary()
        waiting = t(
            "The plan waits for an approver (plan #{id}): {reasons}.",
            id=out.held,
            reasons=listed(out.reasons),
        )
        done = (applied + " " + out.plan.summary() + "\n") if out.plan.changes else ""
        whole = _whole_plan(out.held, len(out.waiting))
        return head + done + waiting + "\n" + Plan(out.waiting).summary() + whole

    # -- rule exceptions -------------------------------------------------------------------------
    async def _keep_exceptions(self, session: AsyncSession, plan: Plan, *, actor: str, via: str) -> None:
        """A manual removal of someone the rules put in that group becomes a rule exception; adding
        them again by hand lifts it."""
        manual = [c for c in plan.changes if c.source == "manual"]
        if not manual:
            return
        rules = self.rules.current()
        emails = sorted({c.email for c in manual})
        people = {
            p.email: p
            for p in (await session.execute(select(Person).where(Person.email.in_(emails)))).scalars()
        }
        for c in manual:
            person = people.get(c.email)
            if person is None:
                continue
            if c.op == "add":
                gone = await session.execute(
                    delete(RuleException)
                    .where(RuleException.group_id == c.group_id, RuleException.person_id == person.id)
                    .returning(RuleException.rule)
                )
                for lifted in gone.scalars():
                    audit.record(
                        session,
                        actor=actor,
                        via=via,
                        action="rule_exception.lift",
                        subject=f"group:{c.group_address}",
                        before={"email": c.email, "rule": lifted},
                        detail=c.reason,
                    )
                continue
            values = person_values(person.email, person.employee_id, person.name, person.attributes)
            rule = next((r for r in rules.groups_for(values) if r.address == c.group_address), None)
            if rule is None:
                continue
            exists = (
                await session.execute(
                    select(RuleException.id).where(
                        RuleException.group_id == c.group_id, RuleException.person_id == person.id
                    )
                )
            ).first()
            if exists:
                continue
            session.add(
                RuleException(
                    group_id=c.group_id,
                    person_id=person.id,
                    email=person.email,
                    rule=rule.source,
                    created_by=actor,
                    created_at=self.ctx.now(),
                    reason=c.reason,
                )
            )
            audit.record(
                session,
                actor=actor,
                via=via,
                action="rule_exception.add",
                subject=f"group:{c.group_address}",
                after={"email": c.email, "rule": rule.source},
                detail=c.reason,
            )

    async def forget_exceptions(self, session: AsyncSession, person: Person, *, actor: str, via: str) -> None:
        """A rehire starts afresh: the rules apply again, exceptions made for their earlier time included."""
        gone = await session.execute(
            delete(RuleException).where(RuleException.person_id == person.id).returning(RuleException.rule)
        )
        for rule in gone.scalars():
            audit.record(
                session,
                actor=actor,
                via=via,
                action="rule_exception.lift",
                subject=f"person:{person.employee_id or person.email}",
                before={"email": person.email, "rule": rule},
                detail="rehired",
            )

    # -- held plans ------------------------------------------------------------------------------
    async def hold(
        self,
        session: AsyncSession,
        *,
        source: str,
        actor: str,
        via: str,
        reasons: list[str],
        summary: str,
        changes: list[Change] | None = None,
        events: list[dict[str, Any]] | None = None,
        head: str = "",
        not_applied: list[str] | None = None,
    ) -> PendingPlan:
        """Keep a plan (its changes, or whole HR events) for an approver. The same request again while
        it waits (the same changes, and the same HR events) is that plan, not a second one. `head` and
        `not_applied` are what a snapshot's card says beside the plan: its counts, and the rows that
        will not apply."""
        same = await _same_pending(session, changes or [], events)
        if same is not None:
            return same
        payload: dict[str, Any] = {"changes": [asdict(c) for c in changes or []]}
        if events is not None:
            payload["events"] = events
        if head:
            payload["head"] = head
        if not_applied:
            payload["not_applied"] = not_applied
        pending = PendingPlan(
            source=source, actor=actor, via=via, reasons=reasons, summary=summary[:20_000], payload=payload
        )
        session.add(pending)
        await session.flush()
        audit.record(
            session,
            actor=actor,
            via=via,
            action="plan.hold",
            subject=f"plan:{pending.id}",
            after={"reasons": reasons, "changes": len(changes or []), "events": len(events or [])},
            detail=summary[:2000],
        )
        return pending

    async def announce(self, plan_id: int | None) -> None:
        """Post a held plan's card to the approvers (after the plan is committed)."""
        if plan_id is None or await self.messengers.posted_about([f"plan:{plan_id}"]):
            return  # nothing held, or the same plan asked for again (its card is out already)
        async with self.ctx.sessions() as session:
            pending = await session.get(PendingPlan, plan_id)
        if pending is not None:
            await self.messengers.post(
                "approvals", lambda: approval_card(pending), subject=f"plan:{pending.id}"
            )

    async def announce_pending(self) -> list[int]:
        """Post the card of every pending plan no approver has seen yet (one held by `postroom hr import`,
        a process with no messenger attached). Scheduled every minute in `postroom serve`."""
        async with self.ctx.sessions() as session:
            ids = (
                (
                    await session.execute(
                        select(PendingPlan.id).where(PendingPlan.state == "pending").order_by(PendingPlan.id)
                    )
                )
                .scalars()
                .all()
            )
        seen = await self.messengers.posted_about([f"plan:{i}" for i in ids])
        done = []
        for plan_id in ids:
            if f"plan:{plan_id}" not in seen:
                await self.announce(plan_id)
                done.append(plan_id)
        return done

    async def _apply_rest(
        self, pending: PendingPlan, events: list[dict[str, Any]], approver: str, via: str
    ) -> tuple[int, list[str]]:
        """An approved plan of HR events also holds changes for people none of its events is about (an
        unchanged person a rule now puts in a protected group): replaying the events does not make them,
        so they are applied here, made again against the groups now. Returns how many applied, and why
        each of the others did not."""
        named = {str(e.get("email") or "") for e in events}
        changes = [Change(**d) for d in pending.payload.get("changes", []) if d.get("email") not in named]
        if not changes:
            return 0, []
        approved = t("approved by {approver} (plan #{id})", approver=approver, id=pending.id)
        async with self.ctx.sessions() as session, session.begin():
            current, since = await _replan(session, changes, pending.created_at, self.rules.current())
            plan = _approved(Plan([replace(c, reason=f"{c.reason}; {approved}") for c in current]))
            out = await self._execute(session, plan, "reviewed", pending.source, pending.actor, via, False)
        if out.pushed:
            await self.outbox.settle(self.ctx.settings.providers.max_inline_wait_s + 5)
        return out.applied, since + [why for _c, why in out.plan.refused]

    async def decide(self, plan_id: int, approver: str, via: str, decision: str) -> str:
        """Approve (apply) or reject a held plan; one decision however often it is clicked."""
        now = self.ctx.now()
        applied = 0
        not_applied: list[str] = []  # why a change of the approved plan did not apply
        since: list[str] = []  # what changed in the groups since the plan was held (those changes dropped)
        rest = 0  # an approved plan of HR events: its changes applied for people without an event
        async with self.ctx.sessions() as session, session.begin():
            pending = await session.get(PendingPlan, plan_id)
            if pending is None:
                raise Refusal(t("There is no membership plan #{id}.", id=plan_id))
            if pending.state != "pending":
                if pending.state == "approved":
                    raise Refusal(
                        t(
                            "Plan #{id} was already approved by {who}: nothing changed.",
                            id=plan_id,
                            who=pending.decided_by,
                        )
                    )
                if pending.state == "rejected":
                    raise Refusal(
                        t(
                            "Plan #{id} was already rejected by {who}: nothing changed.",
                            id=plan_id,
                            who=pending.decided_by,
                        )
                    )
                raise Refusal(
                    t(
                        "Plan #{id} was already {state} by {who}: nothing changed.",
                        id=plan_id,
                        state=pending.state,
                        who=pending.decided_by,
                    )
                )
            if pending.actor == approver:
                raise Refusal(t("You asked for this plan, so someone else has to approve it."))
            won = await session.execute(
                update(PendingPlan)
                .where(PendingPlan.id == plan_id, PendingPlan.state == "pending")
                .values(state=decision, decided_by=approver, decided_at=now)
            )
            if won.rowcount != 1:
                raise Refusal(t("Plan #{id} was decided a moment ago: nothing changed.", id=plan_id))
            audit.record(
                session,
                actor=approver,
                via=via,
                action=f"plan.{decision}",
                subject=f"plan:{plan_id}",
                before={"state": "pending", "requested_by": pending.actor},
                after={"state": decision, "decided_by": approver},
            )
            events = pending.payload.get("events")
            if decision == "approved" and events is None:
                # Who asked is who changes the group (the membership's added_by, the audit's actor); the
                # approver is named in each change's reason and in the plan's own entry above. The plan is
                # made again against who is in each group now: what happened since it was held stands.
                approved = t("approved by {approver} (plan #{id})", approver=approver, id=plan_id)
                current, since = await _replan(
                    session,
                    [Change(**d) for d in pending.payload.get("changes", [])],
                    pending.created_at,
                    self.rules.current(),
                )
                plan = _approved(Plan([replace(c, reason=f"{c.reason}; {approved}") for c in current]))
                out = await self._execute(
                    session, plan, "reviewed", pending.source, pending.actor, via, False
                )
                applied = out.applied
                gone = await leavers(session, [c for c, _why in out.plan.refused])
                for c, why in out.plan.refused:
                    if c.email in gone or c.person_id in gone:
                        why = t("{email} has left since the plan was made", email=c.email)
                    if why not in not_applied:
                        not_applied.append(why)

        def events_tail() -> str:
            """After an approved plan of HR events: the other changes it applied, and what changed since."""
            text = ""
            if rest:
                text += " " + (
                    t("It also applied 1 change for someone without an event in the plan.")
                    if rest == 1
                    else t(
                        "It also applied {count} changes for people without an event in the plan.", count=rest
                    )
                )
            if since:
                text += " " + t("Changed since the plan was made: {changes}.", changes=listed(since))
            if not_applied:
                text += " " + t(
                    "Not applied: {reasons}.", reasons=listed([why.rstrip(".") for why in not_applied])
                )
            return text

        if decision == "approved" and events is not None:
            if self.replay_events is None:
                raise RuntimeError("no HR lifecycle is wired to apply approved HR events")
            applied, since = await self.replay_events(events)
            rest, dropped = await self._apply_rest(pending, events, approver, via)
            not_applied += dropped
            summary = pending.summary[:3000]
            await self.messengers.post(
                "hr",
                lambda: Message(
                    (
                        t(
                            "Plan #{id} from {requester}, approved by {approver}: {count} HR event from {source} "
                            "applied.",
                            id=plan_id,
                            requester=pending.actor,
                            approver=approver,
                            count=applied,
                            source=pending.source,
                        )
                        if applied == 1
                        else t(
                            "Plan #{id} from {requester}, approved by {approver}: {count} HR events from {source} "
                            "applied.",
                            id=plan_id,
                            requester=pending.actor,
                            approver=approver,
                            count=applied,
                            source=pending.source,
                        )
                    )
                    + events_tail()
                    + "\n"
                    + summary
                ),
            )

        def outcome_text() -> str:
            who = {"id": plan_id, "requester": pending.actor, "approver": approver}
            if decision != "approved":
                return t(
                    "Membership plan #{id} from {requester} rejected by {approver}; nothing was changed.",
                    **who,
                )
            if events is not None:
                return (
                    t(
                        "Membership plan #{id} from {requester}, approved by {approver}: 1 event applied.",
                        **who,
                    )
                    if applied == 1
                    else t(
                        "Membership plan #{id} from {requester}, approved by {approver}: {count} events applied.",
                        count=applied,
                        **who,
                    )
                ) + events_tail()
            if not applied and (not_applied or since):
                return t(
                    "Membership plan #{id} from {requester}, approved by {approver}: nothing to apply, because "
                    "{reasons}.",
                    reasons=listed([why.rstrip(".") for why in [*since, *not_applied]]),
                    **who,
                )
            text = (
                t("Membership plan #{id} from {requester}, approved by {approver}: 1 change applied.", **who)
                if applied == 1
                else t(
                    "Membership plan #{id} from {requester}, approved by {approver}: {count} changes applied.",
                    count=applied,
                    **who,
                )
            )
            if since:
                text += " " + t("Changed since the plan was made: {changes}.", changes=listed(since))
            if not_applied:
                text += " " + t(
                    "Not applied: {reasons}.", reasons=listed([why.rstrip(".") for why in not_applied])
                )
            return text

        def card() -> Message:
            text = outcome_text()
            return Message(
                text, Card(title=t("Membership plan #{id}", id=plan_id), fields=((t("Outcome"), text),))
            )

        await self.messengers.update_subject(f"plan:{plan_id}", card)
        return outcome_text()


CARD_PLAN_CHARS = 1500  # a card's plan field (a WeCom card is 2,048 bytes whole)


def approval_card(pending: PendingPlan) -> Message:
    changes = pending.payload.get("changes", [])
    events = pending.payload.get("events")
    adds = sum(1 for c in changes if c["op"] == "add")
    removes = len(changes) - adds
    fields: list[tuple[str, str]] = [
        (t("Requested by"), t("{actor} via {via}", actor=pending.actor, via=pending.via)),
        (t("Why it waits"), listed(list(pending.reasons))),
    ]
    if events is not None:
        head = str(pending.payload.get("head") or "")
        fields.append((t("HR events"), f"{len(events)} — {head}" if head else str(len(events))))
        not_applied = [str(line) for line in pending.payload.get("not_applied") or []]
        if not_applied:
            fields.append((t("Not applied"), listed(not_applied, 5)))
    fields.append((t("Changes"), t("{adds} to add, {removes} to remove", adds=adds, removes=removes)))
    # The plan from its changes, in the reader's language, cut in whole changes and counted in them (the
    # counts are said once, in the field above).
    plan = Plan([Change(**c) for c in changes])
    fields.append(
        (t("Plan"), plan.summary(CARD_PLAN_CHARS, counts=False) + _whole_plan(pending.id, len(changes)))
    )
    card = Card(
        title=t("Membership plan #{id} needs an approver", id=pending.id),
        fields=tuple(fields),
        buttons=(
            Button(
                "plan.approve",
                t("Approve"),
                str(pending.id),
                style="primary",
                confirm=t("Apply this membership plan?"),
                text_command=f"/plan approve {pending.id}",
            ),
            Button(
                "plan.reject",
                t("Reject"),
                str(pending.id),
                style="danger",
                text_command=f"/plan reject {pending.id}",
            ),
        ),
    )
    return Message(t("A membership plan from {source} waits for approval.", source=pending.source), card)


def _whole_plan(plan_id: int | None, count: int) -> str:
    """Where a held plan too big to name in chat is listed whole."""
    if plan_id is None or count <= SHOWN:
        return ""
    return "\n" + t("The whole plan: postroom groups plan {id}", id=plan_id)


def _approved(plan: Plan) -> Plan:
    """An approved plan's removals are marked so (cause "approved"): the brake's window does not count
    what an approver has seen already — whether the plan held changes or whole HR events."""
    return replace(
        plan,
        changes=[replace(c, cause=c.cause or ("approved" if c.op == "remove" else "")) for c in plan.changes],
    )


def _key(c: Change) -> tuple[str, int, str, str]:
    return (c.op, c.group_id, c.email, c.role)


def _event_key(e: dict[str, Any]) -> str:
    """What an HR event says, whatever file or moment it came with (its id and time left out)."""
    said = {k: e.get(k) for k in ("kind", "source", "external_id", "email", "attributes", "name", "snapshot")}
    return json.dumps(said, sort_keys=True, default=str)


async def _same_pending(
    session: AsyncSession, changes: list[Change], events: list[dict[str, Any]] | None = None
) -> PendingPlan | None:
    """A pending plan holding exactly these changes — and, for a plan of HR events (a CSV snapshot),
    the same events (the same request sent again): it is not queued twice."""
    wanted = sorted(_key(c) for c in changes)
    wanted_events = None if events is None else sorted(_event_key(e) for e in events)
    rows = (
        (
            await session.execute(
                select(PendingPlan).where(PendingPlan.state == "pending").order_by(PendingPlan.id)
            )
        )
        .scalars()
        .all()
    )
    for pending in rows:
        held_events = pending.payload.get("events")
        if (held_events is None) != (wanted_events is None):
            continue
        if held_events is not None and sorted(_event_key(e) for e in held_events) != wanted_events:
            continue
        held = pending.payload.get("changes", [])
        if len(held) == len(wanted) and sorted(_key(Change(**d)) for d in held) == wanted:
            return pending
    return None


async def _replan(
    session: AsyncSession, changes: list[Change], held_at: datetime, rules: RuleSet
) -> tuple[list[Change], list[str]]:
    """The held changes that still make sense now, and, in words, each one dropped because the group
    changed since the plan was held (`held_at`): a removal of someone no longer in the group or added
    again since, an addition of someone already in it or removed since, a group that no longer exists;
    and for a rule's change, a person who no longer matches the rule (a mover), or matches it again.
    (Leavers are refused by the guard, which runs again on what is left.)"""
    if not changes:
        return [], []
    ids = sorted({c.group_id for c in changes})
    emails = sorted({c.email for c in changes})
    groups = set((await session.execute(select(Group.id).where(Group.id.in_(ids)))).scalars())
    now_in: dict[tuple[int, str], datetime] = {}
    for i in range(0, len(emails), 500):
        found = await session.execute(
            select(Membership.group_id, Membership.email, Membership.added_at).where(
                Membership.group_id.in_(ids), Membership.email.in_(emails[i : i + 500])
            )
        )
        for gid, email, joined in found.all():
            now_in[(gid, email)] = joined
    removed_since: set[tuple[str, str]] = set()
    if any(c.op == "add" for c in changes):
        subjects = sorted({f"group:{c.group_address}" for c in changes if c.op == "add"})
        rows = await session.execute(
            select(AuditEntry.subject, AuditEntry.before).where(
                AuditEntry.action == "membership.remove",
                AuditEntry.subject.in_(subjects),
                AuditEntry.at > held_at,
            )
        )
        for subject, before in rows.all():
            if isinstance(before, dict) and before.get("email"):
                removed_since.add((subject, str(before["email"])))
    matching = await _rule_matches(session, [c for c in changes if c.source.startswith("rule:")], rules)
    keep: list[Change] = []
    since: list[str] = []
    said: set[str] = set()
    staying: dict[str, list[str]] = {}
    for c in changes:
        added_at = now_in.get((c.group_id, c.email))
        match = matching.get((c.email, c.source))
        if c.group_id not in groups:
            why = t("{group} no longer exists", group=c.group_address)
        elif c.op == "add" and match == "gone":
            why = t("the rule {rule} is no longer in the rules file", rule=c.source[5:])
        elif c.op == "add" and match == "no":
            why = t("{email} no longer matches rule {rule}", email=c.email, rule=c.source[5:])
        elif c.op == "remove" and not c.cause and match == "yes":
            # Not a change: counted per rule, never a line for each of thousands of people.
            staying.setdefault(c.source, []).append(c.email)
            continue
        elif c.op == "remove" and added_at is None:
            why = t("{email} is no longer in {group}", email=c.email, group=c.group_address)
        elif c.op == "remove" and added_at is not None and added_at > held_at:
            why = t(
                "{email} was added to {group} again after the plan was made, so stays",
                email=c.email,
                group=c.group_address,
            )
        elif c.op == "add" and added_at is not None:
            why = t("{email} is already in {group}", email=c.email, group=c.group_address)
        elif c.op == "add" and (f"group:{c.group_address}", c.email) in removed_since:
            why = t(
                "{email} was removed from {group} after the plan was made, so is not added",
                email=c.email,
                group=c.group_address,
            )
        else:
            keep.append(c)
            continue
        if why not in said:
            said.add(why)
            since.append(why)
    for source, emails in staying.items():
        since.append(
            t("{email} matches rule {rule} again, so stays", email=emails[0], rule=source[5:])
            if len(emails) == 1
            else t("{count} people match rule {rule} again, so stay", count=len(emails), rule=source[5:])
        )
    return keep, since


async def _rule_matches(
    session: AsyncSession, changes: list[Change], rules: RuleSet
) -> dict[tuple[str, str], str]:
    """For each rule change's (email, rule source): "yes" when the person on record matches that rule
    now, "no" when not, "gone" when the rule is no longer in the file. Nothing is said when the rules
    could not be read, or of an address nobody is on record for."""
    if not changes or rules.error:
        return {}
    emails = sorted({c.email for c in changes})
    people: dict[str, Person] = {}
    for i in range(0, len(emails), 500):
        for person in (
            await session.execute(select(Person).where(Person.email.in_(emails[i : i + 500])))
        ).scalars():
            people[person.email] = person
    sources = rules.rule_sources
    out: dict[tuple[str, str], str] = {}
    for c in changes:
        who = people.get(c.email)
        if who is None:
            continue
        rule = sources.get(c.source)
        if rule is None:
            out[(c.email, c.source)] = "gone"
            continue
        found = rules.groups_for(person_values(who.email, who.employee_id, who.name, who.attributes))
        out[(c.email, c.source)] = "yes" if rule in found else "no"
    return out


async def _exceptions(session: AsyncSession) -> list[str]:
    rows = await session.execute(
        select(RuleException.email, Group.address, RuleException.created_by)
        .join(Group, Group.id == RuleException.group_id)
        .order_by(Group.address, RuleException.email)
        .limit(50)
    )
    return [t("{email} from {group} (by {who})", email=e, group=g, who=w) for e, g, w in rows.all()]


async def whole_plan(ctx: Context, plan_id: int) -> str:
    """A held plan with every change it holds, one a line: what `postroom groups plan <id>` prints (a
    terminal, not a chat message, so not bounded — chat answers name the first few and point here)."""
    async with ctx.sessions() as session:
        pending = await session.get(PendingPlan, plan_id)
    if pending is None:
        raise Refusal(t("There is no membership plan #{id}.", id=plan_id))
    changes = [Change(**d) for d in pending.payload.get("changes", [])]
    plan = Plan(changes)
    lines = [
        t(
            "Membership plan #{id} ({state}) from {actor} via {via}, source {source}.",
            id=pending.id,
            state=pending.state,
            actor=pending.actor,
            via=pending.via,
            source=pending.source,
        ),
        t("Why it waits: {reasons}.", reasons=t("; ").join(pending.reasons)),
        t("{adds} to add, {removes} to remove.", adds=len(plan.adds), removes=len(plan.removes)),
    ]
    events = pending.payload.get("events")
    if events is not None:
        lines.append(t("HR events: {count}", count=len(events)))
    for c in changes:
        if c.op == "add":
            lines.append(
                t("+ {email} to {group} ({reason})", email=c.email, group=c.group_address, reason=c.reason)
            )
        else:
            lines.append(
                t("− {email} from {group} ({reason})", email=c.email, group=c.group_address, reason=c.reason)
            )
    return "\n".join(lines) + "\n"
