"""One planner for every membership change: a command, an HR event, a rule edit, a full reconcile.

Each produces a `Plan` (adds and removes, each with its reason). `execute` checks policy, then the
guards — a plan removing too many people, or touching a protected group, is held for an approver
(a card with Approve/Reject; the plan waits in `pending_plans`) — and otherwise applies it
idempotently through `groups.service.apply`, which audits each change.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.config import Settings
from bot.db.models import Group, Membership, PendingPlan, Person
from bot.errors import UserError
from bot.events import Button, Card, Message
from bot.groups import service
from bot.groups.rules import GroupRule, RulesError, RuleSet, load_rules, person_values
from bot.groups.service import Change, Plan
from bot.i18n import t

if TYPE_CHECKING:
    from bot.core import Core

log = logging.getLogger(__name__)


# -- the rules in force -------------------------------------------------------------------------
def rules_in_force(core: Core) -> RuleSet:
    """The rules this process runs on; read from `groups.rules_file` the first time."""
    rules = core.services.get("rules")
    if isinstance(rules, RuleSet):
        return rules
    path = core.ctx.settings.groups.rules_file
    rules = RuleSet((), None)
    if path:
        try:
            rules = load_rules(path, core.ctx.settings)
        except RulesError as exc:
            log.error("group rules not loaded: %s", exc.sentence)
            # Not "no rules": unknown rules. Plans add nothing and remove no rule membership.
            rules = RuleSet((), path, error=exc.sentence)
    core.services["rules"] = rules
    return rules


def check_rules_at_start(core: Core) -> RuleSet:
    """`serve` and the demo start only on a rules file that loads: a broken one would strip every mover."""
    rules = rules_in_force(core)
    if rules.error:
        raise UserError(
            t(
                "The group rules file could not be loaded, so Postroom did not start: {problem}",
                problem=rules.error,
            )
        )
    return rules


def reload_rules(core: Core) -> RuleSet:
    """Re-read the rules file; on any error raise UserError and keep the rules in force."""
    path = core.ctx.settings.groups.rules_file
    if not path:
        raise UserError(t("No rules file is configured: set groups.rules_file in the configuration."))
    try:
        rules = load_rules(path, core.ctx.settings)
    except RulesError as exc:
        raise UserError(t("{problem} The rules in force are unchanged.", problem=exc.sentence)) from None
    core.services["rules"] = rules
    return rules


async def sync_group_definitions(
    session: AsyncSession, rules: RuleSet, settings: Settings, *, actor: str, via: str
) -> list[str]:
    """Create or update every group the rules file declares; returns what changed, in words."""
    done: list[str] = []
    if not rules.groups:
        return done
    existing = {
        g.address: g
        for g in (
            await session.execute(select(Group).where(Group.address.in_([r.address for r in rules.groups])))
        ).scalars()
    }
    for rule in rules.groups:
        group = existing.get(rule.address)
        wanted = {
            "display_name": rule.display_name,
            "kind": rule.kind,
            "protected": rule.protected,
            "post_policy": rule.post_policy,
            "visibility": rule.visibility,
            "owners": list(rule.owners),
        }
        if group is None:
            await service.create_group(
                session,
                settings,
                address=rule.address,
                display_name=rule.display_name,
                actor=actor,
                via=via,
                kind=rule.kind,
                owners=rule.owners,
                protected=rule.protected,
                post_policy=rule.post_policy,
                visibility=rule.visibility,
            )
            done.append(t("created {group}", group=rule.address))
            continue
        before = {k: getattr(group, k) for k in wanted}
        if rule.kind == "internal" and group.kind != "internal":
            await _refuse_external_members(session, group, settings)
        if rule.display_name is None:
            wanted["display_name"] = group.display_name
        if before != wanted:
            for k, v in wanted.items():
                setattr(group, k, v)
            audit.record(
                session,
                actor=actor,
                via=via,
                action="group.update",
                subject=f"group:{group.address}",
                before=before,
                after=wanted,
                detail="from the rules file",
            )
            done.append(t("updated {group}", group=rule.address))
    await session.flush()
    return done


async def _refuse_external_members(session: AsyncSession, group: Group, settings: Settings) -> None:
    """A group may become internal only once no external address is in it (invariant 4)."""
    emails = (
        (
            await session.execute(
                select(Membership.email).where(Membership.group_id == group.id).order_by(Membership.email)
            )
        )
        .scalars()
        .all()
    )
    outside = [e for e in emails if not settings.is_internal(e)]
    if outside:
        shown = ", ".join(outside[:10]) + (
            t(" and {count} more", count=len(outside) - 10) if len(outside) > 10 else ""
        )
        raise UserError(
            t(
                "{group} can't become internal while external people are in it ({emails}): remove them "
                "first (/removegroup). The rules in force are unchanged.",
                group=group.address,
                emails=shown,
            )
        )


async def _group_ids(session: AsyncSession, rules: RuleSet) -> dict[str, int]:
    addresses = [g.address for g in rules.groups if g.has_rule]
    if not addresses:
        return {}
    return dict(
        (await session.execute(select(Group.address, Group.id).where(Group.address.in_(addresses)))).all()
    )


def _add_reason(rule: GroupRule) -> str:
    return t("rule {rule}: {wording}", rule=rule.local_part, wording=rule.describe())


# -- plans --------------------------------------------------------------------------------------
async def plan_person(session: AsyncSession, rules: RuleSet, person: Person) -> Plan:
    """Joiner or mover: the rule groups recomputed; manual and imported memberships kept."""
    plan = Plan()
    ids = await _group_ids(session, rules)
    values = person_values(person.email, person.employee_id, person.name, person.attributes)
    desired = {r.address: r for r in rules.groups_for(values) if r.address in ids}
    rows = (
        await session.execute(
            select(Membership.group_id, Group.address, Membership.email, Membership.source)
            .join(Group, Group.id == Membership.group_id)
            .where((Membership.person_id == person.id) | (Membership.email == person.email))
        )
    ).all()
    present = {r.address for r in rows}
    for r in rows:
        if rules.error:  # the rules are unknown, so nothing says a rule membership is wrong
            break
        if r.source.startswith("rule:") and r.address not in desired:
            plan.changes.append(
                Change(
                    "remove",
                    r.group_id,
                    r.address,
                    r.email,
                    r.source,
                    t("{email} no longer matches rule {rule}", email=person.email, rule=r.source[5:]),
                    person.id,
                )
            )
    for address, rule in desired.items():
        if address not in present:
            plan.changes.append(
                Change("add", ids[address], address, person.email, rule.source, _add_reason(rule), person.id)
            )
    return plan


async def plan_leaver(session: AsyncSession, person: Person, why: str) -> Plan:
    """Every membership goes, manual ones too."""
    plan = Plan()
    rows = (
        await session.execute(
            select(Membership.group_id, Group.address, Membership.email, Membership.source)
            .join(Group, Group.id == Membership.group_id)
            .where((Membership.person_id == person.id) | (Membership.email == person.email))
        )
    ).all()
    for r in rows:
        plan.changes.append(Change("remove", r.group_id, r.address, r.email, r.source, why, person.id))
    return plan


@dataclass
class PersonRow:
    """A person as a snapshot planner sees them (from the database or from a CSV row)."""

    id: int | None
    employee_id: str | None
    email: str
    name: str | None
    attributes: dict[str, Any]
    status: str = "active"
    left_at: Any = None


async def plan_reconcile(
    session: AsyncSession,
    rules: RuleSet,
    settings: Settings,
    *,
    now: Any,
    people: list[PersonRow] | None = None,
    leaving: set[str] | None = None,
    reason_suffix: str = "",
) -> Plan:
    """The whole population against the rules: what a full sync (or a CSV snapshot) would change.

    `people` replaces the database's people (a CSV snapshot); `leaving` lists emails that leave.
    Leavers whose grace period is over lose every membership; the rest get exactly their rule
    groups while manual memberships stay.
    """
    plan = Plan()
    ids = await _group_ids(session, rules)
    if people is None:
        people = [
            PersonRow(r.id, r.employee_id, r.email, r.name, r.attributes or {}, r.status, r.left_at)
            for r in (
                await session.execute(
                    select(
                        Person.id,
                        Person.employee_id,
                        Person.email,
                        Person.name,
                        Person.attributes,
                        Person.status,
                        Person.left_at,
                    )
                )
            ).all()
        ]
    grace = timedelta(hours=settings.groups.leaver_grace_hours)
    addresses = {gid: addr for addr, gid in ids.items()}
    all_groups = dict((await session.execute(select(Group.id, Group.address))).all())
    memberships: dict[str, list[tuple[int, str]]] = defaultdict(list)
    # One fetch: streaming in batches costs five times more through the async drivers.
    for email, gid, source in (
        await session.execute(select(Membership.email, Membership.group_id, Membership.source))
    ).all():
        memberships[email].append((gid, source))
    known: set[str] = set()
    leaving = leaving or set()
    rule_sources = rules.rule_sources
    for p in people:
        known.add(p.email)
        mine = memberships.get(p.email, ())
        if p.email in leaving or p.status == "left":
            due = p.email in leaving or p.left_at is None or p.left_at + grace <= now
            if due:
                why = t("{email} left", email=p.email) + reason_suffix
                for gid, source in mine:
                    plan.changes.append(Change("remove", gid, all_groups[gid], p.email, source, why, p.id))
            continue
        desired = {
            ids[r.address]: r
            for r in rules.groups_for(person_values(p.email, p.employee_id, p.name, p.attributes))
            if r.address in ids
        }
        present = set()
        for gid, source in mine:
            present.add(gid)
            if source.startswith("rule:") and gid not in desired and not rules.error:
                plan.changes.append(
                    Change(
                        "remove",
                        gid,
                        all_groups[gid],
                        p.email,
                        source,
                        t("{email} no longer matches rule {rule}", email=p.email, rule=source[5:])
                        + reason_suffix,
                        p.id,
                    )
                )
        for gid, rule in desired.items():
            if gid not in present:
                plan.changes.append(
                    Change("add", gid, addresses[gid], p.email, rule.source, _add_reason(rule), p.id)
                )
    # Rule memberships of addresses that are nobody we know, or of rules that no longer exist.
    for email, mine in ({} if rules.error else memberships).items():
        for gid, source in mine:
            if not source.startswith("rule:"):
                continue
            if email not in known:
                plan.changes.append(
                    Change(
                        "remove",
                        gid,
                        all_groups[gid],
                        email,
                        source,
                        t("{email} is not a person on record", email=email) + reason_suffix,
                    )
                )
            elif source not in rule_sources and email not in leaving:
                plan.changes.append(
                    Change(
                        "remove",
                        gid,
                        all_groups[gid],
                        email,
                        source,
                        t("the rule {rule} is no longer in the rules file", rule=source[5:]),
                    )
                )
    return plan


# -- guards -------------------------------------------------------------------------------------
async def hold_reasons(session: AsyncSession, plan: Plan, settings: Settings) -> list[str]:
    """Why this plan needs an approver before it applies (empty: it may apply now)."""
    g = settings.groups
    reasons: list[str] = []
    removes = Counter(c.group_address for c in plan.removes)
    group_ids = {c.group_address: c.group_id for c in plan.changes}
    if removes:
        sizes = dict(
            (
                await session.execute(
                    select(Membership.group_id, func.count())
                    .where(Membership.group_id.in_([group_ids[a] for a in removes]))
                    .group_by(Membership.group_id)
                )
            ).all()
        )
        for address, n in sorted(removes.items()):
            size = sizes.get(group_ids[address], 0)
            if n >= g.guard_min_removals and size and n / size > g.max_remove_share:
                reasons.append(
                    t(
                        "it removes {count} of {size} members ({share}) of {group}, more than the {limit} "
                        "allowed without approval",
                        count=n,
                        size=size,
                        share=f"{n / size:.0%}",
                        group=address,
                        limit=f"{g.max_remove_share:.0%}",
                    )
                )
        total = sum(removes.values())
        if total > g.max_remove_count:
            reasons.append(
                t(
                    "it removes {count} memberships at once, more than the {limit} allowed without approval",
                    count=total,
                    limit=g.max_remove_count,
                )
            )
    if group_ids:
        protected = (
            (
                await session.execute(
                    select(Group.address).where(
                        Group.id.in_(list(group_ids.values())), Group.protected.is_(True)
                    )
                )
            )
            .scalars()
            .all()
        )
        for address in sorted(protected):
            reasons.append(t("it changes the protected group {group}", group=address))
    return reasons


def split_protected(plan: Plan, protected: set[str]) -> tuple[Plan, Plan]:
    """(changes that may apply now, changes to protected groups that wait for an approver)."""
    now, held = Plan(unchanged=list(plan.unchanged), refused=list(plan.refused)), Plan()
    for c in plan.changes:
        (held if c.group_address in protected else now).changes.append(c)
    return now, held


async def protected_addresses(session: AsyncSession, plan: Plan) -> set[str]:
    ids = {c.group_id for c in plan.changes}
    if not ids:
        return set()
    return set(
        (
            await session.execute(select(Group.address).where(Group.id.in_(ids), Group.protected.is_(True)))
        ).scalars()
    )


# -- held plans ---------------------------------------------------------------------------------
@dataclass
class Outcome:
    applied: int = 0
    held: int | None = None  # the pending plan's id
    reasons: list[str] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)


def _change_dict(c: Change) -> dict[str, Any]:
    return asdict(c)


def _change_from(d: dict[str, Any]) -> Change:
    return Change(**d)


async def hold(
    session: AsyncSession,
    *,
    source: str,
    actor: str,
    via: str,
    reasons: list[str],
    summary: str,
    changes: list[Change] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> PendingPlan:
    payload: dict[str, Any] = {"changes": [_change_dict(c) for c in changes or []]}
    if events is not None:
        payload["events"] = events
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


def approval_card(pending: PendingPlan) -> Message:
    changes = pending.payload.get("changes", [])
    events = pending.payload.get("events")
    adds = sum(1 for c in changes if c["op"] == "add")
    removes = len(changes) - adds
    fields: list[tuple[str, str]] = [
        (t("Requested by"), t("{actor} via {via}", actor=pending.actor, via=pending.via)),
        (t("Why it waits"), t("; ").join(pending.reasons)),
    ]
    if events is not None:
        fields.append((t("HR events"), str(len(events))))
    fields.append((t("Changes"), t("{adds} to add, {removes} to remove", adds=adds, removes=removes)))
    fields.append((t("Plan"), pending.summary[:1500]))
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


async def announce_hold(core: Core, pending: PendingPlan) -> None:
    await core.post("approvals", lambda: approval_card(pending), subject=f"plan:{pending.id}")


async def announce_pending(core: Core) -> list[int]:
    """Post the card of every pending plan no approver has seen yet (one held by `postroom hr import`,
    a process with no messenger attached). Returns the plan ids announced."""
    from bot.db.models import MessageRecord

    async with core.ctx.sessions() as session:
        pending = (
            (
                await session.execute(
                    select(PendingPlan).where(PendingPlan.state == "pending").order_by(PendingPlan.id)
                )
            )
            .scalars()
            .all()
        )
        if not pending:
            return []
        seen = set(
            (
                await session.execute(
                    select(MessageRecord.subject).where(
                        MessageRecord.subject.in_([f"plan:{p.id}" for p in pending])
                    )
                )
            ).scalars()
        )
    done = []
    for p in pending:
        if f"plan:{p.id}" not in seen:
            await announce_hold(core, p)
            done.append(p.id)
    return done


async def announce_pending_job() -> None:
    """Scheduled job (every minute in `postroom serve`)."""
    from bot.scheduler import current_core

    await announce_pending(current_core())


async def execute(
    core: Core,
    plan: Plan,
    *,
    source: str,
    actor: str,
    via: str,
    guard: bool = True,
    session: AsyncSession | None = None,
) -> Outcome:
    """Policy, guards, apply. Refused changes are dropped (see plan.refused); a guarded plan is held."""
    if session is None:
        async with core.ctx.sessions() as s, s.begin():
            out = await _execute(core, s, plan, source=source, actor=actor, via=via, guard=guard)
    else:
        out = await _execute(core, session, plan, source=source, actor=actor, via=via, guard=guard)
    if out.held is not None:
        async with core.ctx.sessions() as s:
            pending = await s.get(PendingPlan, out.held)
        if pending is not None:
            await announce_hold(core, pending)
    return out


async def _execute(
    core: Core, session: AsyncSession, plan: Plan, *, source: str, actor: str, via: str, guard: bool
) -> Outcome:
    settings = core.ctx.settings
    plan = await service.check_policy(session, plan, settings)
    out = Outcome(plan=plan)
    if guard:
        reasons = await hold_reasons(session, plan, settings)
        if reasons:
            pending = await hold(
                session,
                source=source,
                actor=actor,
                via=via,
                reasons=reasons,
                summary=plan.summary(),
                changes=plan.changes,
            )
            out.held, out.reasons = pending.id, reasons
            return out
    out.applied = await service.apply(session, plan, actor=actor, via=via)
    return out


async def decide(core: Core, plan_id: int, approver: str, via: str, decision: str) -> str:
    """Approve (apply) or reject a held plan; one decision however often it is clicked."""
    from bot.hr import lifecycle

    now = core.ctx.now()
    async with core.ctx.sessions() as session, session.begin():
        pending = await session.get(PendingPlan, plan_id)
        if pending is None:
            raise UserError(t("There is no membership plan #{id}.", id=plan_id))
        if pending.state != "pending":
            if pending.state == "approved":
                raise UserError(
                    t(
                        "Plan #{id} was already approved by {who}: nothing changed.",
                        id=plan_id,
                        who=pending.decided_by,
                    )
                )
            if pending.state == "rejected":
                raise UserError(
                    t(
                        "Plan #{id} was already rejected by {who}: nothing changed.",
                        id=plan_id,
                        who=pending.decided_by,
                    )
                )
            raise UserError(
                t(
                    "Plan #{id} was already {state} by {who}: nothing changed.",
                    id=plan_id,
                    state=pending.state,
                    who=pending.decided_by,
                )
            )
        if pending.actor == approver:
            raise UserError(t("You asked for this plan, so someone else has to approve it."))
        won = await session.execute(
            update(PendingPlan)
            .where(PendingPlan.id == plan_id, PendingPlan.state == "pending")
            .values(state=decision, decided_by=approver, decided_at=now)
        )
        if won.rowcount != 1:
            raise UserError(t("Plan #{id} was decided a moment ago: nothing changed.", id=plan_id))
        audit.record(
            session,
            actor=approver,
            via=via,
            action=f"plan.{decision}",
            subject=f"plan:{plan_id}",
            before={"state": "pending"},
            after={"state": decision},
        )
        applied = 0
        events = pending.payload.get("events")
        if decision == "approved" and events is None:
            plan = Plan([_change_from(d) for d in pending.payload.get("changes", [])])
            plan = await service.check_policy(session, plan, core.ctx.settings)
            applied = await service.apply(session, plan, actor=approver, via=via)
    if decision == "approved" and events is not None:
        for raw in events:
            await lifecycle.apply_person_event(
                core,
                lifecycle.event_from_dict(raw),
                guard=False,
                notify=False,
                snapshot=bool(raw.get("snapshot")),
            )
            applied += 1
        summary = pending.summary[:3000]
        await core.post(
            "hr",
            lambda: Message(
                t(
                    "Plan #{id} approved by {approver}: {count} HR events from {source} applied.",
                    id=plan_id,
                    approver=approver,
                    count=applied,
                    source=pending.source,
                )
                + "\n"
                + summary
            ),
        )

    def outcome_text() -> str:
        if decision != "approved":
            return t(
                "Rejected membership plan #{id} ({approver}); nothing was changed.",
                id=plan_id,
                approver=approver,
            )
        if events is not None:
            return t(
                "Approved membership plan #{id} ({approver}); {count} events applied.",
                id=plan_id,
                approver=approver,
                count=applied,
            )
        return t(
            "Approved membership plan #{id} ({approver}); {count} changes applied.",
            id=plan_id,
            approver=approver,
            count=applied,
        )

    def card() -> Message:
        text = outcome_text()
        return Message(
            text, Card(title=t("Membership plan #{id}", id=plan_id), fields=((t("Outcome"), text),))
        )

    await core.update_subject(f"plan:{plan_id}", card)
    return outcome_text()
