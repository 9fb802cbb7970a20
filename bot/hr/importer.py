"""`postroom hr import staff.csv`: a full snapshot from an HRIS export.

Columns: `employee_id` (or `id`), `email`, optional `name`, and any other column is an attribute
(`department`, `location`, `title`, `employment_type`, `manager`, …). Everyone in the file is a
joiner, a mover or unchanged; every active person on record who is missing from the file is a
leaver. The whole snapshot is planned first: a bad row refuses the file, and a plan that removes
too much (or touches a protected group) waits for an approver instead of applying.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot import values
from bot.addresses import normalise, routing_refusal
from bot.csvfiles import read_utf8, refuse_unclosed_quote
from bot.db.models import Group, Person, PersonId
from bot.errors import UserError
from bot.events import Message, PersonEvent, PersonKind
from bot.groups import planner
from bot.groups import service as groups
from bot.groups.planner import PersonRow
from bot.hr.lifecycle import (
    Lifecycle,
    Outcome,
    another_persons_address,
    event_to_dict,
    not_applied,
    not_applied_why,
)
from bot.i18n import t

SOURCE = "csv"
MAX_ROWS = 200_000


@dataclass
class ImportResult:
    joined: int = 0
    changed: int = 0
    left: int = 0
    unchanged: int = 0
    plan: groups.Plan = field(default_factory=groups.Plan)
    reasons: list[str] = field(default_factory=list)
    held: int | None = None
    applied: bool = False
    dry_run: bool = False
    # What applying did, event by event (the plan above is what it meant to do).
    done: dict[str, int] = field(default_factory=dict)  # kind -> events applied
    added: list[tuple[str, str]] = field(default_factory=list)  # (email, group)
    removed: list[tuple[str, str]] = field(default_factory=list)
    in_grace: int = 0
    not_applied: list[str] = field(default_factory=list)  # one sentence per event that changed nothing
    groups: list[str] = field(default_factory=list)  # a dry run: the rule groups the real run creates
    file: str = ""

    def record(self, event: PersonEvent, outcome: Outcome) -> None:
        if outcome.status != "applied":
            self.refuse(event, not_applied_why(outcome))
            return
        self.done[event.kind] = self.done.get(event.kind, 0) + 1
        email = outcome.person or event.email or ""
        self.added += [(email, g) for g in outcome.added]
        self.removed += [(email, g) for g in outcome.removed]
        self.in_grace += outcome.removal_due is not None

    def refuse(self, event: PersonEvent, why: str) -> None:
        self.not_applied.append(not_applied(event, why))

    def summary(self) -> str:
        if self.applied:
            return self._applied_summary()
        head = self.counts() + " " + self.plan.summary()
        if self.groups:
            head = t("Groups: {changes}.", changes=t("; ").join(self.groups)) + "\n" + head
        if self.not_applied:
            head += "\n" + self._not_applied_lines()
        if self.held is not None:
            return (
                head
                + "\n"
                + t(
                    "Stopped: the plan waits for an approver (plan #{id}) because {reasons}. Nothing "
                    "was changed yet.",
                    id=self.held,
                    reasons=t("; ").join(self.reasons),
                )
            )
        if self.dry_run:
            extra = (
                "\n" + t("Applying it would need an approver: {reasons}.", reasons=t("; ").join(self.reasons))
                if self.reasons
                else ""
            )
            return t("Dry run — nothing changed.") + " " + head + extra
        return head

    def counts(self) -> str:
        return t(
            "{joined} joining, {changed} changing, {left} leaving, {unchanged} unchanged.",
            joined=self.joined,
            changed=self.changed,
            left=self.left,
            unchanged=self.unchanged,
        )

    def _applied_summary(self) -> str:
        """What was applied, from the outcomes: never the plan's intent when an event changed nothing."""
        if not self.done and not self.not_applied and self.unchanged:
            # a re-import of a file that matches the record: a success, and it says so
            return (
                t(
                    "Nothing to import: the 1 person in {file} is already as the file says; nothing changed.",
                    file=self.file,
                )
                if self.unchanged == 1
                else t(
                    "Nothing to import: all {count} people in {file} are already as the file says; nothing "
                    "changed.",
                    count=self.unchanged,
                    file=self.file,
                )
            )
        lines = [
            t(
                "Imported: {joined} joined, {changed} changed, {left} left, {unchanged} unchanged; {adds} added "
                "to groups, {removes} removed from groups.",
                joined=self.done.get("joined", 0),
                changed=self.done.get("changed", 0),
                left=self.done.get("left", 0),
                unchanged=self.unchanged,
                adds=len(self.added),
                removes=len(self.removed),
            )
        ]
        reasons: dict[tuple[str, str, str], str] = {
            (c.op, c.email, c.group_address): c.reason for c in self.plan.changes
        }
        shown = [("add", e, g) for e, g in self.added] + [("remove", e, g) for e, g in self.removed]
        for op, email, group in shown[:50]:
            reason = reasons.get((op, email, group), t("import"))
            if op == "add":
                lines.append(
                    "  " + t("+ {email} to {group} ({reason})", email=email, group=group, reason=reason)
                )
            else:
                lines.append(
                    "  " + t("− {email} from {group} ({reason})", email=email, group=group, reason=reason)
                )
        if len(shown) > 50:
            lines.append("  " + t("… and {count} more", count=len(shown) - 50))
        if self.in_grace:
            lines.append(
                t("1 leaver stays in their groups until their grace period ends.")
                if self.in_grace == 1
                else t(
                    "{count} leavers stay in their groups until their grace period ends.", count=self.in_grace
                )
            )
        if self.not_applied:
            lines.append(self._not_applied_lines())
        return "\n".join(lines)

    def _not_applied_lines(self) -> str:
        total = len(self.not_applied) + (
            sum(self.done.values()) if self.applied else self.joined + self.changed + self.left
        )
        lines = [
            t(
                "{count} of {total} events were not applied, so those people are not as the file says:",
                count=len(self.not_applied),
                total=total,
            )
        ]
        lines += ["  " + line for line in self.not_applied[:50]]
        if len(self.not_applied) > 50:
            lines.append("  " + t("… and {count} more", count=len(self.not_applied) - 50))
        return "\n".join(lines)


def read_snapshot(text: str, domains_check: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Rows as {employee_id, email, name, attributes}; UserError naming the line for the first bad one."""
    refuse_unclosed_quote(text)
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise UserError(t("The file is empty: it needs a header line with employee_id and email."))
    names = [(n or "").strip().lower() for n in reader.fieldnames]
    id_col = "employee_id" if "employee_id" in names else "id" if "id" in names else None
    if id_col is None or "email" not in names:
        raise UserError(t("The file's header needs an employee_id (or id) column and an email column."))
    if len(set(names)) != len(names):
        raise UserError(t("The file's header names a column twice."))
    for column in names:
        unsafe = values.problem(column, t("A column name in the header"))
        if unsafe is not None:
            raise UserError(unsafe)
    rows: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}
    seen_emails: dict[str, int] = {}
    for n, raw in enumerate(reader, start=2):
        if len(rows) >= MAX_ROWS:
            raise UserError(t("The file has more than {count} rows.", count=MAX_ROWS))
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            raise UserError(t("Line {line} has more fields than the header.", line=n))
        emp = row.get(id_col, "")
        if not emp:
            raise UserError(t("Line {line} has no {column}.", line=n, column=id_col))
        try:
            email = normalise(row.get("email", ""))
        except UserError as exc:
            raise UserError(t("Line {line}: {problem}", line=n, problem=exc.sentence)) from None
        if emp in seen_ids:
            raise UserError(
                t(
                    "Line {line} repeats employee {id} (first on line {first}).",
                    line=n,
                    id=emp,
                    first=seen_ids[emp],
                )
            )
        if email in seen_emails:
            raise UserError(
                t(
                    "Line {line} repeats {email} (first on line {first}).",
                    line=n,
                    email=email,
                    first=seen_emails[email],
                )
            )
        seen_ids[emp], seen_emails[email] = n, n
        attrs = {k: v for k, v in row.items() if k not in (id_col, "email", "name") and v != ""}
        try:
            values.check_text(emp, id_col, values.MAX_ID)
            values.check_name(row.get("name", ""), "name", values.MAX_NAME)
            values.check_attributes(attrs, "")
        except UserError as exc:
            raise UserError(t("Line {line}: {problem}", line=n, problem=exc.sentence)) from None
        rows.append(
            {
                "employee_id": emp,
                "email": email,
                "name": row.get("name") or None,
                "attributes": attrs,
                "line": n,
            }
        )
    return rows


def _as_on_record(person: Person, employee_id: str) -> PersonRow:
    """A person the file names as the record stands: their row changes nothing in this import."""
    return PersonRow(
        person.id,
        person.employee_id or employee_id,
        person.email,
        person.name,
        person.attributes or {},
        person.status,
        person.left_at,
    )


async def import_staff(
    hr: Lifecycle,
    path: Path,
    *,
    dry_run: bool = False,
    actor: str = "cli",
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    data, text = read_utf8(path)
    rows = read_snapshot(text)
    digest = hashlib.sha256(data).hexdigest()[:16]
    ctx = hr.ctx
    now = ctx.now()
    result = ImportResult(dry_run=dry_run, file=path.name)
    rules = hr.rules.current()
    if not dry_run:  # the rule groups exist before anyone is planned into them
        async with ctx.sessions() as session, session.begin():
            await planner.sync_group_definitions(session, rules, ctx.settings, actor=actor, via=SOURCE)
    events: list[PersonEvent] = []
    async with ctx.sessions() as session:
        if dry_run:
            # The dry run plans what the real run does: against the rule groups the real run creates first
            # (made in this session only, which is rolled back below).
            existing = set((await session.execute(select(Group.address))).scalars())
            result.groups = [
                t("would create {group}", group=g.address) for g in rules.groups if g.address not in existing
            ]
            await planner.sync_group_definitions(session, rules, ctx.settings, actor=actor, via=SOURCE)
        people = {
            p.employee_id: p for p in (await session.execute(select(Person))).scalars() if p.employee_id
        }
        by_email = {p.email: p for p in people.values()}
        hr_ids: dict[int, set[str]] = {}
        for person_id, external_id in (
            await session.execute(
                select(PersonId.person_id, PersonId.external_id).where(PersonId.namespace == "hr")
            )
        ).all():
            hr_ids.setdefault(person_id, set()).add(external_id)
        group_addresses = set((await session.execute(select(Group.address))).scalars())
        snapshot: list[PersonRow] = []
        in_file: set[str] = set()
        notes: dict[str, str] = {}  # why a person's rule membership goes, when they are in the file
        # (a date past the allowed skew was never valid: admission repairs it, and the row applies)
        latest = now + timedelta(seconds=ctx.settings.hr.max_future_skew_s)
        for r in rows:
            rehire = ""
            person = people.get(r["employee_id"])
            owner = by_email.get(r["email"])
            refused = None
            if person is None and owner is not None:  # an id nobody has, with someone's address
                refused = another_persons_address(
                    owner, hr_ids.get(owner.id, set()), r["employee_id"], r["email"]
                )
                person = owner  # matched by address (a directory-made person gets their HR id), or kept
            elif person is not None and owner is not None and owner is not person:
                refused = t(
                    "{email} belongs to {theirs}, another person on record: an address is one person's; correct "
                    "the email.",
                    email=r["email"],
                    theirs=owner.employee_id or owner.email,
                )
            if person is not None:
                in_file.add(person.employee_id or "")
            if refused is None and (person is None or person.email != r["email"]):
                refused = groups.not_a_mailbox(ctx.settings, r["email"], group_addresses)
            if refused is not None:
                # The row changes nothing (the lifecycle would refuse its event): said with its line, and
                # whoever it names stays as on record.
                row_kind: PersonKind = (
                    "joined"
                    if person is None or person.status == "left" or person.employee_id != r["employee_id"]
                    else "changed"
                )
                result.not_applied.append(
                    not_applied(
                        PersonEvent(row_kind, SOURCE, r["employee_id"], r["email"], r["attributes"], "", now),
                        t("line {line}: {problem}", line=r["line"], problem=refused.rstrip(".")),
                    )
                )
                if person is not None:
                    snapshot.append(_as_on_record(person, r["employee_id"]))
                continue
            if (
                person is not None
                and person.last_event_at is not None
                and now < person.last_event_at <= latest
            ):
                # HR's system told us something dated after this import (a change dated ahead, a leave on a
                # later date): the file's row is older news, and applying it would be refused as stale. It
                # is listed, planned as the record stands, and the import exits 1.
                file_kind: PersonKind = "joined" if person.status == "left" else "changed"
                if (person.email, person.attributes or {}, person.name or None) != (
                    r["email"],
                    r["attributes"],
                    r["name"] or person.name,
                ) or person.status == "left":
                    result.not_applied.append(
                        not_applied(
                            PersonEvent(
                                file_kind, SOURCE, r["employee_id"], r["email"], r["attributes"], "", now
                            ),
                            t(
                                "an event dated {at} UTC, later than this import, is on record for them",
                                at=f"{person.last_event_at:%Y-%m-%d %H:%M}",
                            ),
                        )
                    )
                else:
                    result.unchanged += 1
                snapshot.append(_as_on_record(person, r["employee_id"]))
                continue
            if person is None or person.status == "left":
                kind: PersonKind | None = "joined"
                result.joined += 1
                if person is not None:
                    # A rehire: planned (and guarded) as the file says — active — or the guard would refuse
                    # their groups as a leaver's. This session is never committed: the rehire event does it.
                    # Its event id names the leave it ends, so the same file imported again after a later
                    # leave is a new rehire, not a duplicate of the first import's joiner.
                    person.status = "active"
                    left_at = person.left_at.isoformat() if person.left_at else ""
                    rehire = f":after-leave:{left_at}"
            elif (person.email, person.attributes or {}, person.name or None) != (
                r["email"],
                r["attributes"],
                r["name"] or person.name,
            ):
                kind = "changed"
                result.changed += 1
                moves = [
                    f"{k} {(person.attributes or {}).get(k, '—')} → {v}"
                    for k, v in sorted(r["attributes"].items())
                    if (person.attributes or {}).get(k) != v
                ] + [
                    f"{k} {v} → —"
                    for k, v in sorted((person.attributes or {}).items())
                    if k not in r["attributes"]
                ]
                if moves:
                    notes[r["email"]] = " " + t(
                        "(changed in {file}: {changes})", file=path.name, changes=", ".join(moves)
                    )
            else:
                kind = None
                result.unchanged += 1
            snapshot.append(
                PersonRow(
                    person.id if person else None, r["employee_id"], r["email"], r["name"], r["attributes"]
                )
            )
            if kind is not None:
                events.append(
                    PersonEvent(
                        kind,
                        SOURCE,
                        r["employee_id"],
                        r["email"],
                        r["attributes"],
                        f"{digest}:{r['employee_id']}:{kind}{rehire}",
                        now,
                        r["name"],
                    )
                )
        await session.flush()
        missing = " " + t("(missing from {file})", file=path.name)
        listed = {r["email"] for r in rows}
        leaving = set()
        for emp, person in sorted(people.items()):
            if emp not in in_file and person.status == "active":
                leaving.add(person.email)
                snapshot.append(PersonRow(person.id, emp, person.email, person.name, person.attributes or {}))
                events.append(PersonEvent("left", SOURCE, emp, person.email, {}, f"{digest}:{emp}:left", now))
                result.left += 1
        plan = await planner.plan_reconcile(
            session,
            rules,
            ctx.settings,
            now=now,
            people=snapshot,
            leaving=leaving,
            reason_suffix=lambda email: notes.get(email, "") if email in listed else missing,
        )
        # The snapshot is guarded as a whole: a bad export must not half-apply.
        verdict = await hr.memberships.review(session, plan, "reconcile")
        plan = verdict.plan
        plan.changes = plan.changes + verdict.held
        result.plan = plan
        if plan.refused:
            c, why = plan.refused[0]
            routed = routing_refusal(c.email, ctx.settings)
            if routed:
                raise UserError(
                    t(
                        "{why}, and the rules put them in the internal group {group}: fix the file, nothing "
                        "was imported.",
                        why=routed,
                        group=c.group_address,
                    )
                )
            if not ctx.settings.is_internal(c.email):
                raise UserError(
                    t(
                        "{email} is outside {domains}, and the rules put them in the internal group {group}: "
                        "fix the file, nothing was imported.",
                        email=c.email,
                        domains=", ".join(ctx.settings.org.domains),
                        group=c.group_address,
                    )
                )
            raise UserError(t("{problem} Fix the file: nothing was imported.", problem=why))
        result.reasons = verdict.reasons
        await session.rollback()  # the rehires above were for planning only
    if dry_run:
        return result
    if result.reasons:
        async with ctx.sessions() as session, session.begin():
            pending = await hr.memberships.hold(
                session,
                source=SOURCE,
                actor=actor,
                via=SOURCE,
                reasons=result.reasons,
                summary=result.summary(),
                changes=plan.changes,
                events=[{**event_to_dict(e), "snapshot": True} for e in events],
                head=result.counts(),
                not_applied=result.not_applied,
            )
        result.held = pending.id
        await hr.memberships.announce(pending.id)
        return result
    for event, outcome in zip(events, await hr.apply_snapshot(events, progress=progress), strict=True):
        if isinstance(outcome, UserError):  # refused for this person (nothing changed for them)
            result.refuse(event, outcome.sentence.rstrip("."))
        else:
            result.record(event, outcome)
    result.applied = True
    if events:
        await hr.messengers.post(
            "hr",
            lambda: Message(
                t("Staff import from {file} by {actor}:", file=path.name, actor=actor)
                + " "
                + result.summary()[:3000]
            ),
        )
    return result
