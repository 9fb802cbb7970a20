"""Email groups: the membership primitives under the one path.

Whatever starts a change (a command, an HR event, a rule, a reconcile), it becomes a `Plan` of
adds and removes with a reason each; `bot.groups.membership.Memberships.execute` checks it against
the one guard (bot/groups/guard.py) and then calls `apply`, which makes it true idempotently and
audits each change. Nothing else calls `apply`. Membership rows are written only here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, values
from bot.addresses import domain_of, normalise
from bot.config import Settings
from bot.db.models import AuditEntry, Group, Identity, Membership, Person, ProviderOp
from bot.errors import Refusal, UserError
from bot.i18n import t

LOCAL_PART_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")
# RFC 2142: mail about the mail system and about abuse must reach a person who answers for it, not fan out.
ROLE_MAILBOXES = ("postmaster", "abuse")
# Postroom's own local parts: its return paths (bounces+…, VERP) and the sender of its notices.
OWN_LOCAL_PARTS = ("bounces", "noreply")


def untagged(settings: Settings, address: str) -> str:
    """`address` without its `postfix.recipient_delimiter` tag — staff+x@ is delivered to staff@'s mailbox —
    or `address` itself when it has none."""
    local, _, domain = address.partition("@")
    cut = min((local.find(d) for d in settings.postfix.recipient_delimiter if local.find(d) > 0), default=-1)
    return f"{local[:cut]}@{domain}" if cut > 0 else address


Role = Literal["from", "unsubscribe", "own", "role"]


def reserved_role(settings: Settings, address: str) -> tuple[Role, str] | None:
    """Which address Postroom or the mail system needs `address` (normalised) is, and that address — also
    when `address` is it with a tag (news+x@ is delivered to news@): the campaign sender ("from"), the
    unsubscribe mailbox ("unsubscribe"), a return path or the notice sender ("own": bounces@, bounces+…@,
    noreply@), or postmaster@ and abuse@ ("role", RFC 2142). None for any other address. The one rule for
    what neither a group nor a person may take (`reserved_address`, `not_a_mailbox`)."""
    c = settings.campaigns
    base = untagged(settings, address)
    for role, mailbox in (("from", c.from_address.lower()), ("unsubscribe", c.unsubscribe_mailbox.lower())):
        if mailbox in (address, base):
            return role, mailbox  # type: ignore[return-value]
    local, _, domain = address.partition("@")
    if domain != c.bounce_domain.lower() and not settings.is_internal(address):
        return None
    # "+" also for a return path whatever the delimiter: its VERP form is bounces+<token>@.
    head = re.split("[" + re.escape("+" + settings.postfix.recipient_delimiter) + "]", local, maxsplit=1)[0]
    if head in OWN_LOCAL_PARTS:
        return "own", f"{head}@{domain}"
    if head in ROLE_MAILBOXES:
        return "role", f"{head}@{domain}"
    return None


def reserved_address(settings: Settings, address: str) -> str | None:
    """Why `address` (normalised) can't be a group's, when it is one Postroom or the mail system needs:
    the campaign sender, the unsubscribe mailbox, a return path, the notice sender, postmaster@, abuse@,
    or one of them with a tag. A group there would take mail meant for Postroom itself or for a person (and
    so export it to Postfix)."""
    found = reserved_role(settings, address)
    if found is None:
        return None
    role, mailbox = found
    if role == "from" and mailbox != address:
        return t(
            "{address} is the campaigns' From address {mailbox} (campaigns.from_address) with a tag: mail to "
            "it belongs in that mailbox, not with a group's members.",
            address=address,
            mailbox=mailbox,
        )
    if role == "from":
        return t(
            "{address} is the campaigns' From address (campaigns.from_address): replies to campaigns would "
            "go to the group's members.",
            address=address,
        )
    if role == "unsubscribe" and mailbox != address:
        return t(
            "{address} is the unsubscribe mailbox {mailbox} (campaigns.unsubscribe_mailbox) with a tag: mail "
            "to it belongs in that mailbox, not with a group's members.",
            address=address,
            mailbox=mailbox,
        )
    if role == "unsubscribe":
        return t(
            "{address} is the unsubscribe mailbox (campaigns.unsubscribe_mailbox): unsubscribe requests "
            "would go to the group's members instead of unsubscribing anyone.",
            address=address,
        )
    if role == "own":
        return t(
            "{address} is one of Postroom's own addresses (bounces@ and bounces+…@ are its return paths, "
            "noreply@ sends its notices): a group can't take it.",
            address=address,
        )
    return t(
        "{address} is a role mailbox every mail domain keeps (RFC 2142: postmaster@, abuse@): its mail "
        "must reach a person who answers for it, not a group.",
        address=address,
    )


def not_a_mailbox(settings: Settings, email: str, groups: Container[str]) -> str | None:
    """Why `email` (normalised) is no person's own mailbox, for HR (webhook, CSV): a group's address, or
    a group's with a tag; an address Postroom or the mail system needs (`reserved_role`: the groups' rule
    too), also with a tag; or, on the company's domains, another address with a "+" tag (alice+x@ is
    delivered to alice@'s mailbox; other delimiter characters, such as "-", are common in names and are
    not taken as tags here). `groups`: group addresses, at least those of `email` and `untagged(email)`."""
    base = untagged(settings, email)
    if email in groups:  # the relay and Postfix would deliver their mail to the group
        return t(
            "{email} is the address of the group {group}: a person and a group can't share an address. "
            "Correct the email in the HR record.",
            email=email,
            group=email,
        )
    if base in groups:
        return t(
            "{email} is the group {group}'s address with a tag: mail to it goes to the group's members, so it "
            "is no person's mailbox. Correct the email in the HR record.",
            email=email,
            group=base,
        )
    found = reserved_role(settings, email)
    if found is not None:
        role, mailbox = found
        what = {
            "from": t("the campaigns' From address (campaigns.from_address)"),
            "unsubscribe": t("the unsubscribe mailbox (campaigns.unsubscribe_mailbox)"),
            "own": t("one of Postroom's own addresses (its return paths, and the sender of its notices)"),
            "role": t("a role mailbox every mail domain keeps (RFC 2142)"),
        }[role]
        if mailbox == email:
            return t(
                "{email} is {what}: it is no person's mailbox. Correct the email in the HR record.",
                email=email,
                what=what,
            )
        return t(
            "{email} is {mailbox} with a tag, and that is {what}: it is no person's mailbox. Correct the "
            "email in the HR record.",
            email=email,
            mailbox=mailbox,
            what=what,
        )
    local = email.partition("@")[0]
    if "+" in settings.postfix.recipient_delimiter and local.find("+") > 0 and settings.is_internal(email):
        mailbox = f"{local[: local.find('+')]}@{email.partition('@')[2]}"
        return t(
            "{email} is {mailbox} with a tag (postfix.recipient_delimiter): mail to it is delivered to "
            "{mailbox}'s mailbox, so it is not a mailbox of its own. Give the person's own address in the "
            "HR record.",
            email=email,
            mailbox=mailbox,
        )
    return None


async def mailbox_refusal(
    session: AsyncSession, settings: Settings, email: str, *, directory: bool = False
) -> str | None:
    """`not_a_mailbox` for one address, its group addresses looked up. A messenger's `directory` (Slack,
    DingTalk, WeCom) lists accounts their owners verified: there only a group's own address is refused."""
    candidates = {email, untagged(settings, email)}
    groups = set(
        (await session.execute(select(Group.address).where(Group.address.in_(candidates)))).scalars()
    )
    if directory:
        return not_a_mailbox(settings, email, groups) if email in groups else None
    return not_a_mailbox(settings, email, groups)


async def person_address(session: AsyncSession, settings: Settings, address: str) -> str | None:
    """Why `address` can't be a group's when it is a person's on record — their own address, or theirs with
    a `postfix.recipient_delimiter` tag (staff+x@ reaches staff@'s mailbox) — whatever their status."""
    candidates = {address, untagged(settings, address)}
    row = (
        await session.execute(
            select(Person.email, Person.name, Person.status).where(Person.email.in_(candidates)).limit(1)
        )
    ).first()
    if row is None:
        return None
    who = f"{row.name} ({row.email})" if row.name else row.email
    if row.status == "left":
        return t(
            "{address} is the mailbox of {who}, who has left: a group can't take a person's address, even a "
            "leaver's, or mail still sent to them would go to the group's members. Choose another address.",
            address=address,
            who=who,
        )
    return t(
        "{address} is the mailbox of {who}: a group can't take a person's address, or their mail would go "
        "to the group's members. Choose another address.",
        address=address,
        who=who,
    )


@dataclass(frozen=True)
class Change:
    op: Literal["add", "remove"]
    group_id: int
    group_address: str
    email: str
    source: str
    reason: str
    person_id: int | None = None
    # Why a removal must happen whatever the guard says: "left" (the person left the company) or
    # "address-out" (their address moved outside the company's domains). On a platform's group also
    # "overwrite" (HR chose Postroom's membership over a change made by hand on the platform: push it
    # even where the row already says so) and "imported" (read from the platform: it is there already).
    cause: str = ""
    role: str = "member"  # member | manager | owner (a platform's roles are kept)


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    refused: list[tuple[Change, str]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def adds(self) -> list[Change]:
        return [c for c in self.changes if c.op == "add"]

    @property
    def removes(self) -> list[Change]:
        return [c for c in self.changes if c.op == "remove"]

    def summary(self, limit: int = 0, *, counts: bool = True) -> str:
        """The plan in words, bounded whatever its size: the counts, per group when it is big, the first
        `SHOWN` changes named and "… and N more" (a held plan's whole list: `postroom groups plan <id>`).
        Within `limit` characters (SUMMARY_CHARS by default) it names fewer changes, groups or refusals,
        and each "… and N more" counts those it leaves out, in its own unit. `counts=False` leaves out
        the opening counts (a card that shows them in a field of their own)."""
        head = (
            [t("{adds} to add, {removes} to remove.", adds=len(self.adds), removes=len(self.removes))]
            if counts
            else []
        )
        sections: list[tuple[list[str], int, Callable[[int], str]]] = []
        if len(self.changes) > SHOWN:
            per: dict[str, list[int]] = {}
            for c in self.changes:
                per.setdefault(c.group_address, [0, 0])[c.op == "remove"] += 1
            groups = [
                t("{group}: {adds} to add, {removes} to remove", group=address, adds=adds, removes=removes)
                for address, (adds, removes) in sorted(per.items())[:SHOWN]
            ]
            sections.append((groups, len(per), lambda n: t("… and {count} more groups", count=n)))
        named = []
        for c in self.changes[:SHOWN]:
            if c.op == "add":
                line = t(
                    "+ {email} to {group} ({reason})", email=c.email, group=c.group_address, reason=c.reason
                )
            else:
                line = t(
                    "− {email} from {group} ({reason})", email=c.email, group=c.group_address, reason=c.reason
                )
            named.append(line)
        sections.append((named, len(self.changes), lambda n: t("… and {count} more", count=n)))
        refusals = [
            t("refused: {email} — {why}", email=c.email, why=why) for c, why in self.refused[:REFUSED_SHOWN]
        ]
        sections.append((refusals, len(self.refused), lambda n: t("… and {count} more refused", count=n)))
        return "\n".join(
            head + bounded_sections(sections, (limit or SUMMARY_CHARS) - sum(len(h) + 1 for h in head))
        )


SHOWN = 20  # changes (and groups) a plan's summary names; the rest are counted
REFUSED_SHOWN = 10  # refusals are long sentences
SUMMARY_CHARS = 3000  # a summary's bound: it goes into chat answers and cards (Slack ~40k, WeCom 2,048 bytes)
TAIL_CHARS = 60  # room kept for each section's "… and N more …"


def bounded_sections(sections: list[tuple[list[str], int, Callable[[int], str]]], limit: int) -> list[str]:
    """Indented lines of each section — (lines naming one item each, how many items there are, the tail
    saying how many went unnamed) — within `limit` characters: a section stops at the line that would not
    fit (room is kept for every tail still to come), and its tail counts the items it did not name."""
    out: list[str] = []
    size = 0
    for k, (lines, total, tail) in enumerate(sections):
        room = limit - TAIL_CHARS * (len(sections) - k)
        shown = 0
        for line in lines:
            if size + len(line) + 3 > room:
                break
            out.append("  " + line)
            size += len(line) + 3
            shown += 1
        if total > shown:
            out.append("  " + tail(total - shown))
            size += TAIL_CHARS
    return out


def listed(items: list[str], limit: int = SHOWN) -> str:
    """Sentences joined with "; ", the first `limit` of them, then how many more."""
    text = t("; ").join(items[:limit])
    if len(items) > limit:
        text = t("{items} and {count} more", items=text, count=len(items) - limit)
    return text


async def find_group(session: AsyncSession, name: str, settings: Settings) -> Group:
    """A group by full address, or by local part when that is unambiguous."""
    raw = name.strip().lower()
    if not raw or len(raw) > 320:
        raise UserError(t("“{text}” is not a group name.", text=name[:60]))
    if "@" in raw:
        group = (await session.execute(select(Group).where(Group.address == raw))).scalar_one_or_none()
        if group is not None:
            return group
        local = raw.split("@", 1)[0]
        hint = await _suggest(session, local)
        raise Refusal(t("There is no group {name}.", name=raw) + hint)
    rows = (await session.execute(select(Group).where(Group.local_part == raw))).scalars().all()
    if len(rows) == 1:
        return rows[0]
    if len(rows) > 1:
        options = ", ".join(g.address for g in rows)
        raise Refusal(t("“{text}” could mean {options}: give the full address.", text=raw, options=options))
    hint = await _suggest(session, raw)
    raise Refusal(t("There is no group “{name}”.", name=raw[:60]) + hint)


async def _suggest(session: AsyncSession, local: str) -> str:
    names = (await session.execute(select(Group.address).order_by(Group.address).limit(200))).scalars().all()
    import difflib

    close = difflib.get_close_matches(local, [n.split("@")[0] for n in names], n=1)
    if close:
        match = next(n for n in names if n.split("@")[0] == close[0])
        return " " + t("Did you mean {group}?", group=match)
    return " " + (t("/groups lists them.") if names else t("There are no groups yet: /newgroup creates one."))


async def create_group(
    session: AsyncSession,
    settings: Settings,
    *,
    address: str,
    display_name: str | None,
    actor: str,
    via: str,
    kind: str = "internal",
    owners: Iterable[str] = (),
    protected: bool = False,
    post_policy: str = "company",
    visibility: str = "company",
    provider: str | None = None,
) -> Group:
    raw = address.strip().lower()
    if "@" not in raw:
        raw = f"{raw}@{settings.org.domains[0]}"
    addr = normalise(raw)
    local = addr.split("@", 1)[0]
    if not LOCAL_PART_RE.match(local):
        raise UserError(
            t("“{name}” cannot be a group's name: use letters, digits, dot, dash or underscore.", name=local)
        )
    if not settings.is_internal(addr):
        raise UserError(
            t(
                "{address} is outside {domains}: a group's address must be on one of the company's own domains.",
                address=addr,
                domains=", ".join(settings.org.domains),
            )
        )
    exists = (await session.execute(select(Group.id).where(Group.address == addr))).scalar_one_or_none()
    if exists is not None:
        raise Refusal(t("The group {address} already exists.", address=addr))
    taken = reserved_address(settings, addr) or await person_address(session, settings, addr)
    if taken is not None:
        raise Refusal(taken)
    if display_name is not None and len(display_name) > 200:
        raise UserError(t("A display name can be at most 200 characters."))
    if display_name is not None and not values.is_clean(display_name):
        raise UserError(t("A display name can't contain control characters or text-direction overrides."))
    group = Group(
        address=addr,
        local_part=local,
        display_name=display_name,
        kind=kind,
        owners=[normalise(o) for o in owners],
        protected=protected,
        post_policy=post_policy,
        visibility=visibility,
        created_by=actor,
        provider=provider,
    )
    session.add(group)
    await session.flush()
    audit.record(
        session,
        actor=actor,
        via=via,
        action="group.create",
        subject=f"group:{addr}",
        after={"address": addr, "display_name": display_name, "kind": kind, "provider": provider},
    )
    return group


async def plan_add(
    session: AsyncSession, group: Group, emails: Iterable[str], *, source: str, reason: str
) -> Plan:
    plan = Plan()
    emails = list(emails)
    existing = set(
        (
            await session.execute(
                select(Membership.email).where(
                    Membership.group_id == group.id,
                    Membership.email.in_(emails),
                    Membership.state != "removing",
                )
            )
        ).scalars()
    )
    people = dict(
        (await session.execute(select(Person.email, Person.id).where(Person.email.in_(emails)))).all()
    )
    for email in emails:
        if email in existing:
            plan.unchanged.append(t("{email} is already in {group}", email=email, group=group.address))
            continue
        plan.changes.append(
            Change("add", group.id, group.address, email, source, reason, person_id=people.get(email))
        )
    return plan


async def plan_remove(
    session: AsyncSession, group: Group, emails: Iterable[str], *, source: str, reason: str
) -> Plan:
    plan = Plan()
    emails = list(emails)
    rows = (
        await session.execute(
            select(Membership.email, Membership.person_id).where(
                Membership.group_id == group.id, Membership.email.in_(emails), Membership.state != "removing"
            )
        )
    ).all()
    present = {r.email: r.person_id for r in rows}
    for email in emails:
        if email not in present:
            plan.unchanged.append(t("{email} is not in {group}", email=email, group=group.address))
            continue
        plan.changes.append(
            Change("remove", group.id, group.address, email, source, reason, person_id=present[email])
        )
    return plan


async def apply(
    session: AsyncSession, plan: Plan, *, actor: str, via: str, remote: Mapping[int, str] | None = None
) -> int:
    """Make the plan true. Idempotent: an add already present or a remove already gone is a no-op.

    Removes go out as one DELETE … RETURNING per person (a leaver's fifty groups in one round
    trip), and only the rows really deleted are audited.

    `remote` names the platform provider of each group whose membership lives on a platform: there a
    change is written as waiting (`adding`, `removing`) together with its outbox entry, in this same
    transaction, and becomes true when the platform confirms it (bot/groups/outbox.py).
    """
    remote = remote or {}
    applied = 0
    if remote:
        applied += await _apply_remote(
            session, [c for c in plan.changes if c.group_id in remote], remote, actor=actor, via=via
        )
    adds = [c for c in plan.changes if c.op == "add" and c.group_id not in remote]
    removes = [c for c in plan.changes if c.op == "remove" and c.group_id not in remote]
    if adds:
        wanted: dict[int, list[str]] = {}
        for c in adds:
            wanted.setdefault(c.group_id, []).append(c.email)
        present: set[tuple[int, str]] = set()
        for gid, emails in wanted.items():
            for i in range(0, len(emails), 500):
                rows = await session.execute(
                    select(Membership.email).where(
                        Membership.group_id == gid, Membership.email.in_(emails[i : i + 500])
                    )
                )
                present.update((gid, e) for e in rows.scalars())
        # Written in bulk, rows and their audit entries: a snapshot's 8,000 additions through the ORM's
        # unit of work were a third of its import.
        new_rows: list[dict[str, object]] = []
        entries: list[dict[str, Any]] = []
        at = datetime.now(UTC)
        for c in adds:
            if (c.group_id, c.email) in present:
                continue
            present.add((c.group_id, c.email))
            new_rows.append(
                {
                    "group_id": c.group_id,
                    "email": c.email,
                    "person_id": c.person_id,
                    "source": c.source,
                    "role": c.role,
                    "added_by": actor,
                    "added_at": at,
                    "state": "active",
                }
            )
            entries.append(
                {
                    "actor": actor,
                    "via": via,
                    "action": "membership.add",
                    "subject": f"group:{c.group_address}",
                    "before": None,
                    "after": {"email": c.email, "source": c.source},
                    "detail": c.reason,
                }
            )
            applied += 1
        for i in range(0, len(new_rows), 1000):
            await session.execute(insert(Membership), new_rows[i : i + 1000])
        await audit.record_all(session, entries)
    if removes:
        # One DELETE … RETURNING per person (a leaver's fifty groups), or per group when fewer (a
        # snapshot's thousand movers out of a few groups); only the rows really deleted are audited.
        by_email: dict[str, list[Change]] = {}
        by_group: dict[int, list[Change]] = {}
        for c in removes:
            by_email.setdefault(c.email, []).append(c)
            by_group.setdefault(c.group_id, []).append(c)
        parts: list[tuple[Any, list[Change]]] = []
        if len(by_group) < len(by_email):
            for gid, changes in by_group.items():
                for i in range(0, len(changes), 500):
                    part = changes[i : i + 500]
                    parts.append(
                        ((Membership.group_id == gid) & Membership.email.in_([c.email for c in part]), part)
                    )
        else:
            for email, changes in by_email.items():
                for i in range(0, len(changes), 500):
                    part = changes[i : i + 500]
                    parts.append(
                        (
                            (Membership.email == email) & Membership.group_id.in_([c.group_id for c in part]),
                            part,
                        )
                    )
        gone_entries: list[dict[str, Any]] = []
        for where, part in parts:
            gone: set[tuple[int, str]] = {
                (gid, email)
                for gid, email in (
                    await session.execute(
                        delete(Membership).where(where).returning(Membership.group_id, Membership.email)
                    )
                ).all()
            }
            for c in part:
                if (c.group_id, c.email) not in gone:
                    continue
                gone.discard((c.group_id, c.email))
                gone_entries.append(
                    {
                        "actor": actor,
                        "via": via,
                        "action": "membership.remove",
                        "subject": f"group:{c.group_address}",
                        "before": _removed(c),
                        "after": None,
                        "detail": c.reason,
                    }
                )
                applied += 1
        await audit.record_all(session, gone_entries)
    await session.flush()
    return applied


def _removed(c: Change) -> dict[str, str]:
    """A removal's audit `before`: the member, and why the removal had to happen when it says (the
    mass-removal brake's window leaves leavers, addresses gone external and approved plans out)."""
    before = {"email": c.email, "source": c.source}
    if c.cause:
        before["cause"] = c.cause
    return before


async def _apply_remote(
    session: AsyncSession, changes: list[Change], remote: Mapping[int, str], *, actor: str, via: str
) -> int:
    """Changes to groups on a platform: the row says what is waiting, the outbox holds what to push."""
    if not changes:
        return 0
    state: dict[tuple[int, str], str] = {}
    for gid in {c.group_id for c in changes}:
        emails = sorted({c.email for c in changes if c.group_id == gid})
        for i in range(0, len(emails), 500):
            rows = await session.execute(
                select(Membership.email, Membership.state).where(
                    Membership.group_id == gid, Membership.email.in_(emails[i : i + 500])
                )
            )
            state.update(((gid, e), s) for e, s in rows.all())
    applied = 0
    # What a platform has already (an import, an adopted member) is written in bulk: an import of
    # 50,000 memberships through the ORM's unit of work took a minute.
    bulk_rows: list[dict[str, object]] = []
    bulk_audit: list[dict[str, object]] = []
    at = datetime.now(UTC)
    for c in changes:
        key = (c.group_id, c.email)
        now = state.get(key)
        where = (Membership.group_id == c.group_id) & (Membership.email == c.email)
        if c.op == "add":
            if c.cause == "imported":
                if now is not None:
                    continue
                state[key] = "active"
                bulk_rows.append(
                    {
                        "group_id": c.group_id,
                        "email": c.email,
                        "person_id": c.person_id,
                        "source": c.source,
                        "role": c.role,
                        "added_by": actor,
                        "added_at": at,
                        "state": "active",
                    }
                )
                bulk_audit.append(
                    {
                        "at": at,
                        "actor": actor,
                        "via": via,
                        "action": "membership.add",
                        "subject": f"group:{c.group_address}",
                        "before": None,
                        "after": {
                            "email": c.email,
                            "source": c.source,
                            "provider": remote[c.group_id],
                            "state": "active",
                        },
                        "detail": c.reason,
                    }
                )
                applied += 1
                continue
            elif now is None:
                session.add(_row(c, actor, "adding"))
                state[key] = "adding"
            elif now == "removing" or c.cause == "overwrite":
                await session.execute(
                    update(Membership).where(where).values(state="adding", source=c.source, role=c.role)
                )
                state[key] = "adding"
            else:
                continue
        else:
            if now is None and c.cause == "overwrite":
                session.add(_row(c, actor, "removing"))
            elif now is None or now == "removing":
                continue
            else:
                await session.execute(update(Membership).where(where).values(state="removing"))
            state[key] = "removing"
        if c.cause != "imported":
            await _enqueue(session, c, remote[c.group_id])
        audit.record(
            session,
            actor=actor,
            via=via,
            action=f"membership.{c.op}",
            subject=f"group:{c.group_address}",
            before=None if c.op == "add" else _removed(c),
            after={
                "email": c.email,
                "source": c.source,
                "provider": remote[c.group_id],
                "state": state[key],
            }
            if c.op == "add"
            else {"provider": remote[c.group_id], "state": "removing"},
            detail=c.reason,
        )
        applied += 1
    for i in range(0, len(bulk_rows), 1000):
        await session.execute(insert(Membership), bulk_rows[i : i + 1000])
        await session.execute(insert(AuditEntry), bulk_audit[i : i + 1000])
    await session.flush()
    return applied


def _row(c: Change, actor: str, state: str) -> Membership:
    return Membership(
        group_id=c.group_id,
        email=c.email,
        person_id=c.person_id,
        source=c.source,
        role=c.role,
        added_by=actor,
        state=state,
    )


async def _enqueue(session: AsyncSession, c: Change, provider: str) -> None:
    """The newest change of an address in a group replaces one still waiting (one entry per pair)."""
    await session.execute(
        delete(ProviderOp).where(ProviderOp.group_id == c.group_id, ProviderOp.email == c.email)
    )
    session.add(
        ProviderOp(group_id=c.group_id, provider=provider, email=c.email, op=c.op, role=c.role, cause=c.cause)
    )


async def link_person(session: AsyncSession, person_id: int, email: str) -> None:
    """Memberships given by hand before the person was on record become theirs."""
    await session.execute(
        update(Membership)
        .where(Membership.email == email, Membership.person_id.is_(None))
        .values(person_id=person_id)
    )


async def link_people(session: AsyncSession, people: list[tuple[int, str]]) -> None:
    """`link_person` for many (person id, address) pairs, in one statement sent once."""
    if not people:
        return
    table = cast(Table, Membership.__table__)  # Core: one UPDATE run for every pair (executemany)
    await session.execute(
        update(table)
        .where(table.c.email == bindparam("b_email"), table.c.person_id.is_(None))
        .values(person_id=bindparam("b_person")),
        [{"b_email": email, "b_person": pid} for pid, email in people],
    )


async def follow_address(session: AsyncSession, person_id: int, old: str, new: str) -> None:
    """A person's address changed: every membership of theirs moves to the new address."""
    await session.execute(
        update(Membership)
        .where((Membership.person_id == person_id) | (Membership.email == old))
        .values(email=new, person_id=person_id)
    )


async def unknown_addresses(session: AsyncSession, settings: Settings, emails: Iterable[str]) -> list[str]:
    """The company addresses among `emails` that no source has told Postroom about: not a person on
    record (HR, a directory) and not a messenger user it has seen. A typo or a stranger more often
    than a new colleague."""
    internal = sorted({e for e in emails if settings.is_internal(e)})
    if not internal:
        return []
    people = set((await session.execute(select(Person.email).where(Person.email.in_(internal)))).scalars())
    seen = set((await session.execute(select(Identity.email).where(Identity.email.in_(internal)))).scalars())
    return [e for e in internal if e not in people and e not in seen]


async def member_count(session: AsyncSession, group_id: int) -> int:
    return (await session.execute(select(func.count()).where(Membership.group_id == group_id))).scalar_one()


__all__ = [
    "Change",
    "Plan",
    "apply",
    "create_group",
    "domain_of",
    "find_group",
    "follow_address",
    "link_person",
    "plan_add",
    "plan_remove",
]
