"""What a membership change should be, as a `Plan`: for one person (a joiner or a mover: their rule
groups recomputed, manual memberships kept), for a leaver (every group), and for the whole population
against the rules (`/sync`, a rule edit, a CSV snapshot). Each change carries its reason. Plans are
executed — guarded, applied or held — by `bot.groups.membership.Memberships`, never here.

A rule exception (a person HR removed by hand from a group their rules give them) keeps that
person out of that group in every plan until HR adds them again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.config import Settings
from bot.db.models import Group, Membership, Person, RuleException
from bot.errors import UserError
from bot.groups import service
from bot.groups.rules import GroupRule, RuleSet, person_values
from bot.groups.service import Change, Plan
from bot.i18n import t

log = logging.getLogger(__name__)


async def rule_exceptions(session: AsyncSession, person_id: int | None = None) -> set[tuple[int, int]]:
    """(group id, person id) pairs the rules must leave alone."""
    query = select(RuleException.group_id, RuleException.person_id)
    if person_id is not None:
        query = query.where(RuleException.person_id == person_id)
    return {(g, p) for g, p in (await session.execute(query)).all()}


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
            "moderation": rule.moderation,
            "moderators": list(rule.moderators) or None,
        }
        if rule.provider is not None:
            wanted["provider"] = rule.provider
        if group is None:
            taken = await service.person_address(session, settings, rule.address)
            if taken is not None:  # a person's mailbox: the rule waits for the address to be corrected
                log.warning("rules file, line %s: %s not created: %s", rule.line, rule.address, taken)
                done.append(
                    t(
                        "not created {group} (rules file, line {line}): {why}",
                        group=rule.address,
                        line=rule.line,
                        why=taken,
                    )
                )
                continue
            created = await service.create_group(
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
                provider=rule.provider,
            )
            created.moderation, created.moderators = rule.moderation, list(rule.moderators) or None
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
    return (await plan_people(session, rules, [person]))[0]


async def plan_people(session: AsyncSession, rules: RuleSet, people: list[Person]) -> list[Plan]:
    """`plan_person` for each of `people` (on record: they have ids), with their memberships, rule groups
    and rule exceptions read once for all of them (a CSV snapshot applies hundreds together)."""
    ids = await _group_ids(session, rules)
    pids = [p.id for p in people]
    emails = [p.email for p in people]
    rows: list[Any] = []
    for i in range(0, len(people), 500):
        rows += (
            await session.execute(
                select(
                    Membership.group_id,
                    Group.address,
                    Membership.email,
                    Membership.source,
                    Membership.person_id,
                )
                .join(Group, Group.id == Membership.group_id)
                .where(
                    Membership.person_id.in_(pids[i : i + 500]) | Membership.email.in_(emails[i : i + 500]),
                    Membership.state != "removing",  # on its way out of a platform already
                )
            )
        ).all()
    by_person: dict[int, list[Any]] = defaultdict(list)
    by_email: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        if r.person_id is not None:
            by_person[r.person_id].append(r)
        by_email[r.email].append(r)
    kept_out: set[tuple[int, int]] = set()
    for i in range(0, len(pids), 500):
        kept_out |= {
            (g, p)
            for g, p in (
                await session.execute(
                    select(RuleException.group_id, RuleException.person_id).where(
                        RuleException.person_id.in_(pids[i : i + 500])
                    )
                )
            ).all()
        }
    plans = []
    for person in people:
        plan = Plan()
        values = person_values(person.email, person.employee_id, person.name, person.attributes)
        desired = {r.address: r for r in rules.groups_for(values) if r.address in ids}
        # Their memberships: by person id or by address, each once (a row can be both).
        mine = list(
            {(r.group_id, r.email): r for r in [*by_person[person.id], *by_email[person.email]]}.values()
        )
        present = {r.address for r in mine}
        for r in mine:
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
            if address not in present and (ids[address], person.id) not in kept_out:
                plan.changes.append(
                    Change(
                        "add", ids[address], address, person.email, rule.source, _add_reason(rule), person.id
                    )
                )
        plans.append(plan)
    return plans


async def plan_leaver(session: AsyncSession, person: Person, why: str) -> Plan:
    """Every membership goes, manual ones too; no guard may hold it (cause "left")."""
    plan = Plan()
    rows = (
        await session.execute(
            select(Membership.group_id, Group.address, Membership.email, Membership.source)
            .join(Group, Group.id == Membership.group_id)
            .where(
                (Membership.person_id == person.id) | (Membership.email == person.email),
                Membership.state != "removing",  # on its way out of a platform already
            )
        )
    ).all()
    for r in rows:
        plan.changes.append(
            Change("remove", r.group_id, r.address, r.email, r.source, why, person.id, "left")
        )
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
    reason_suffix: str | Callable[[str], str] = "",
) -> Plan:
    """The whole population against the rules: what a full sync (or a CSV snapshot) would change.

    `people` replaces the database's people (a CSV snapshot); `leaving` lists emails that leave;
    `reason_suffix` ends each removal's reason (or, called with the email, says where it comes from).
    Leavers whose grace period is over lose every membership; the rest get exactly their rule
    groups while manual memberships stay. Someone who has left on record leaves for certain (cause
    "left"); someone merely missing from a snapshot is a removal the mass-removal brake counts.
    """
    plan = Plan()
    suffix = reason_suffix if callable(reason_suffix) else (lambda _email: str(reason_suffix))
    ids = await _group_ids(session, rules)
    kept_out = await rule_exceptions(session)
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
        await session.execute(
            select(Membership.email, Membership.group_id, Membership.source).where(
                Membership.state != "removing"
            )
        )
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
                why = t("{email} left", email=p.email) + suffix(p.email)
                cause = "left" if p.status == "left" else ""
                for gid, source in mine:
                    plan.changes.append(
                        Change("remove", gid, all_groups[gid], p.email, source, why, p.id, cause)
                    )
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
                        (
                            t("{email} no longer matches rule {rule}", email=p.email, rule=source[5:])
                            if source in rule_sources
                            else t("the rule {rule} is no longer in the rules file", rule=source[5:])
                        )
                        + suffix(p.email),
                        p.id,
                    )
                )
        for gid, rule in desired.items():
            if gid not in present and (gid, p.id) not in kept_out:
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
                        t("{email} is not a person on record", email=email) + suffix(email),
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
    return once(plan)


def once(plan: Plan) -> Plan:
    """Each membership changed once, whatever number of reasons say so (the first found stands): a rule
    membership of a rule gone from the file is a person who no longer matches it *and* a rule no longer
    in the file, and was removed — and counted by the guard — twice."""
    seen: set[tuple[str, int, str]] = set()
    kept = []
    for c in plan.changes:
        key = (c.op, c.group_id, c.email)
        if key not in seen:
            seen.add(key)
            kept.append(c)
    plan.changes = kept
    return plan
