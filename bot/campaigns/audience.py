"""Who a campaign reaches: a contact list (narrowed by a segment's expression, bot/campaigns/segments.py)
or a group, minus consent-less contacts and suppressions; for a joiner automation, the company's people.

Streamed in chunks, so memory does not grow with the audience. The segment is a SQL condition with
bound values, applied in the database: set-based, never a filter over rows fetched into Python.

The send snapshot (`snapshot_deliveries`) is one `INSERT … SELECT` per chunk of the audience's key (the
engine writes the first with the start and the rest while sending): the same rules as
`stream_candidates` and `suppressed_among`, written as SQL, so the database does one pass over the audience
whatever its size. The rules are written in SQL only for addresses of printable ASCII without capitals (what
`normalise` stores): for those, the address is already its own `strip().lower()`, so its SHA-256 in SQL is
`email_hash` and its domain is the text after the last `@`. Any other address (an internationalised
domain, a row written before normalisation) goes through the Python rules, a chunk at a time.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from bot.addresses import email_hash, internal_clause
from bot.campaigns.segments import check, compile_where, unknown_field
from bot.config import Settings
from bot.db.models import (
    Campaign,
    Contact,
    ContactList,
    Delivery,
    Group,
    ListMember,
    Membership,
    Person,
    Segment,
    Suppression,
)
from bot.errors import Refusal, UserError
from bot.i18n import t

CHUNK = 1000


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    attributes: dict[str, Any]


async def resolve_audience(session: AsyncSession, settings: Settings, name: str) -> tuple[str, str]:
    """('list', list name) or ('group', group address) for what a person typed after --to."""
    from bot.groups.service import find_group

    raw = name.strip()
    if not raw:
        raise UserError(t("--to needs a contact list or a group."))
    if "@" not in raw:
        lst = (await session.execute(select(ContactList).where(ContactList.named(raw)))).scalar_one_or_none()
        if lst is not None:
            return "list", lst.name
    try:
        group = await find_group(session, raw, settings)
    except UserError:
        lists = (
            (await session.execute(select(ContactList.name).order_by(ContactList.name).limit(20)))
            .scalars()
            .all()
        )
        segments = (
            (await session.execute(select(Segment.name).order_by(Segment.name).limit(200))).scalars().all()
        )
        near = difflib.get_close_matches(raw.lower(), [s.lower() for s in segments], n=1, cutoff=0.6)
        if near:
            spelt = next(s for s in segments if s.lower() == near[0])
            raise Refusal(
                t(
                    "“{text}” is not a contact list, segment or group — did you mean segment “{segment}”?",
                    text=raw[:80],
                    segment=spelt,
                )
            ) from None
        if segments:
            raise Refusal(
                t(
                    "“{text}” is not a contact list, segment or group. Contact lists: {names}. Segments: "
                    "{segments}.",
                    text=raw[:80],
                    names=", ".join(lists) or "—",
                    segments=", ".join(segments[:20]),
                )
            ) from None
        if lists:
            raise Refusal(
                t(
                    "“{text}” is neither a contact list nor a group. Contact lists: {names}.",
                    text=raw[:80],
                    names=", ".join(lists),
                )
            ) from None
        raise Refusal(
            t(
                "“{text}” is neither a contact list nor a group. There are no contact lists yet.",
                text=raw[:80],
            )
        ) from None
    return "group", group.address


@dataclass(frozen=True)
class Target:
    """What --to (and --where) name: a list with an optional expression, or a group."""

    kind: str  # list | group | joiners
    name: str
    where: str | None = None
    segment: str | None = None  # the named segment it came from (its definition is copied, so it is bound)


async def known_attributes(session: AsyncSession, list_name: str) -> set[str] | None:
    """The attribute names the list's contacts have; None for a list with nobody on it yet (nothing to
    check a field against). Read once when an expression is saved, never per send."""
    keys: set[str] = set()
    members = 0
    rows = await session.stream(
        select(Contact.attributes)
        .join(ListMember, ListMember.contact_id == Contact.id)
        .join(ContactList, ContactList.id == ListMember.list_id)
        .where(ContactList.named(list_name))
        .execution_options(yield_per=2000)
    )
    async for (attributes,) in rows:
        members += 1
        keys.update(attributes or {})
    return keys if members else None


async def check_fields(session: AsyncSession, list_name: str, expression: str) -> str:
    """`expression` once every attribute it names is one the list's contacts have (a typo such as
    `contry` would match nobody, silently): UserError naming the closest field otherwise."""
    known = await known_attributes(session, list_name)
    if known is not None:
        problem = unknown_field(expression, known, list_name)
        if problem is not None:
            raise problem
    return expression


async def resolve_target(session: AsyncSession, settings: Settings, to: str, where: str | None) -> Target:
    """A list, a named segment (its list and expression copied), or a group; --where narrows a list."""
    raw = to.strip()
    segment = None
    if raw and "@" not in raw:
        found = (await session.execute(select(ContactList.id).where(ContactList.named(raw)))).first()
        if found is None:
            segment = (
                (await session.execute(select(Segment).where(Segment.named(raw)).order_by(Segment.id)))
                .scalars()
                .first()
            )
    if segment is not None:
        expression = segment.expression if not where else f"({segment.expression}) and ({where})"
        checked = check(expression)
        if where:
            await check_fields(session, segment.list_name, checked)
        return Target("list", segment.list_name, checked, segment.name)
    kind, name = await resolve_audience(session, settings, raw)
    if where:
        if kind != "list":
            raise UserError(t("--where narrows a contact list; {name} is a group.", name=name))
        return Target(kind, name, await check_fields(session, name, check(where)))
    return Target(kind, name)


def audience_filter(campaign: Campaign, now: datetime | None = None) -> ColumnElement[bool]:
    if not campaign.audience_where:
        return true()
    return compile_where(campaign.audience_where, now or datetime.now(UTC))


async def suppressed_among(session: AsyncSession, emails: Iterable[str]) -> set[str]:
    """Which of these addresses are on the suppression list (checked by hash: erased ones too)."""
    by_hash = {email_hash(e): e for e in emails}
    if not by_hash:
        return set()
    found = (
        await session.execute(select(Suppression.email_hash).where(Suppression.email_hash.in_(list(by_hash))))
    ).scalars()
    return {by_hash[h] for h in found}


Keys = tuple[int, int]  # a range of an audience's key: lo < key <= hi


def _within(column: Any, keys: Keys | None) -> ColumnElement[bool]:
    return true() if keys is None else and_(column > keys[0], column <= keys[1])


async def audience_key_bound(session: AsyncSession, campaign: Campaign) -> int:
    """The largest value of the audience's key now: the contact's id for a list, the person's for
    joiners, the membership's for a group (the key the snapshot is written in chunks of). 0: nobody."""
    if campaign.audience_kind == "joiners":
        stmt = select(func.max(Person.id))
    elif campaign.audience_kind == "list":
        stmt = (
            select(func.max(ListMember.contact_id))
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(ContactList.name == campaign.audience_name)
        )
    else:
        stmt = (
            select(func.max(Membership.id))
            .join(Group, Group.id == Membership.group_id)
            .where(Group.address == campaign.audience_name)
        )
    return int((await session.execute(stmt)).scalar() or 0)


async def _streamed(session: AsyncSession, stmt: Any) -> AsyncIterator[Sequence[Any]]:
    """The rows of one SELECT in chunks of CHUNK, read through one cursor: one pass over the join, where
    keyset pages (`id > last … LIMIT`) made PostgreSQL join and sort the audience again for every page."""
    result = await session.stream(stmt.execution_options(yield_per=CHUNK))
    try:
        async for rows in result.partitions(CHUNK):
            yield rows
    finally:
        await result.close()


async def stream_candidates(
    session: AsyncSession,
    settings: Settings,
    campaign: Campaign,
    only: Callable[[Any], ColumnElement[bool]] | None = None,
    within: Keys | None = None,
) -> AsyncIterator[list[Recipient]]:
    """Chunks of recipients before suppression: consented contacts, or a group's members.

    Internal members of a group need no consent record; external members of an
    external-allowed group do, like any contact. `only` narrows by the address column (the snapshot's
    rows that its SQL does not cover), `within` by a range of the audience's key (`audience_key`).
    """

    def narrowed(column: Any) -> ColumnElement[bool]:
        return true() if only is None else only(column)

    if campaign.audience_kind == "joiners":
        people = select(Person.id, Person.email, Person.name, Person.attributes).where(
            Person.status == "active", narrowed(Person.email), _within(Person.id, within)
        )
        async for rows in _streamed(session, people.order_by(Person.id)):
            yield [Recipient(r.email, r.name, dict(r.attributes or {})) for r in rows]
        return
    if campaign.audience_kind == "list":
        stmt = (
            select(Contact.id, Contact.email, Contact.name, Contact.attributes)
            .join(ListMember, ListMember.contact_id == Contact.id)
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(
                ContactList.name == campaign.audience_name,
                Contact.consent_at.is_not(None),
                audience_filter(campaign),
                narrowed(Contact.email),
                _within(Contact.id, within),
            )
            .order_by(Contact.id)
        )
        async for rows in _streamed(session, stmt):
            yield [Recipient(r.email, r.name, dict(r.attributes or {})) for r in rows]
    else:
        group = (
            await session.execute(select(Group).where(Group.address == campaign.audience_name))
        ).scalar_one_or_none()
        if group is None:
            raise UserError(t("The group {address} no longer exists.", address=campaign.audience_name))
        stmt = (
            select(
                Membership.id,
                Membership.email,
                Person.name,
                Person.attributes,
                Person.status,
                Contact.name.label("cname"),
                Contact.attributes.label("cattrs"),
                Contact.consent_at,
            )
            .outerjoin(Person, Person.id == Membership.person_id)
            .outerjoin(Contact, Contact.email == Membership.email)
            .where(
                Membership.group_id == group.id, narrowed(Membership.email), _within(Membership.id, within)
            )
            .order_by(Membership.id)
        )
        async for rows in _streamed(session, stmt):
            chunk = []
            for r in rows:
                if settings.is_internal(r.email):
                    if r.status == "left":
                        continue
                    chunk.append(Recipient(r.email, r.name or r.cname, dict(r.attributes or r.cattrs or {})))
                elif r.consent_at is not None:
                    chunk.append(Recipient(r.email, r.cname, dict(r.cattrs or {})))
            if chunk:
                yield chunk


async def withdrawn_among(session: AsyncSession, campaign: Campaign, emails: list[str]) -> set[str]:
    """Which of these addresses an automation may no longer mail, checked at send time: a contact who
    left the list or has no consent any more (or fell out of the segment), a joiner who has left."""
    if not emails or campaign.kind != "automation":
        return set()
    if campaign.audience_kind == "joiners":
        still = select(Person.email).where(Person.email.in_(emails), Person.status == "active")
    elif campaign.audience_kind == "list":
        still = (
            select(Contact.email)
            .join(ListMember, ListMember.contact_id == Contact.id)
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(
                Contact.email.in_(emails),
                ContactList.name == campaign.audience_name,
                Contact.consent_at.is_not(None),
                audience_filter(campaign),
            )
        )
    else:
        return set()
    return set(emails) - set((await session.execute(still)).scalars())


async def stream_audience(
    session: AsyncSession, settings: Settings, campaign: Campaign
) -> AsyncIterator[list[Recipient]]:
    async for chunk in stream_candidates(session, settings, campaign):
        suppressed = await suppressed_among(session, (r.email for r in chunk))
        kept = [r for r in chunk if r.email not in suppressed]
        if kept:
            yield kept


@dataclass
class AudienceReport:
    total: int = 0  # after consent and suppression
    without_consent: int = 0
    suppressed: int = 0
    key_sets: dict[frozenset[str], tuple[int, Recipient]] | None = None


async def describe_audience(session: AsyncSession, settings: Settings, campaign: Campaign) -> AudienceReport:
    """Counts for the approval card, and one sample recipient per distinct set of attributes.

    Rendering one sample per attribute set finds every missing template value exactly
    (conditionals included) without rendering the whole audience.
    """
    report = AudienceReport(key_sets={})
    assert report.key_sets is not None
    async for chunk in stream_candidates(session, settings, campaign):
        suppressed = await suppressed_among(session, (r.email for r in chunk))
        report.suppressed += len(suppressed)
        for r in chunk:
            if r.email in suppressed:
                continue
            report.total += 1
            keys = frozenset(k for k, v in r.attributes.items() if v not in (None, ""))
            if r.name:
                keys = keys | {"name"}
            count, sample = report.key_sets.get(keys, (0, r))
            report.key_sets[keys] = (count + 1, sample)
    if campaign.audience_kind == "list":
        report.without_consent = (
            await session.execute(
                select(func.count())
                .select_from(Contact)
                .join(ListMember, ListMember.contact_id == Contact.id)
                .join(ContactList, ContactList.id == ListMember.list_id)
                .where(
                    ContactList.name == campaign.audience_name,
                    Contact.consent_at.is_(None),
                    audience_filter(campaign),
                )
            )
        ).scalar_one()
    return report


def _plain(dialect: str, column: Any) -> ColumnElement[bool]:
    """The address is printable ASCII without a space and has no capital: it is its own `strip().lower()`
    in Python and in either database. (A range, not a list of allowed characters: SQLite matches a short
    class far faster.)"""
    if dialect == "postgresql":
        ascii_only = column.op("~", is_comparison=True)(literal("^[!-~]*$"))
    else:
        ascii_only = not_(column.op("GLOB", is_comparison=True)(literal("*[^!-~]*")))
    return and_(ascii_only, func.lower(column) == column)


def _not_plain(dialect: str) -> Callable[[Any], ColumnElement[bool]]:
    return lambda column: not_(_plain(dialect, column))


def _sha256(dialect: str, column: Any) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.encode(func.sha256(func.convert_to(column, "UTF8")), "hex")
    return func.postroom_email_hash(column)  # registered on the connection by snapshot_deliveries


def _is_json_null(dialect: str, column: Any) -> ColumnElement[bool]:
    """SQL NULL or JSON null: both are None to Python."""
    kind = func.json_typeof(column) if dialect == "postgresql" else func.json_type(column)
    return or_(column.is_(None), kind == "null")


def _is_falsy_attributes(dialect: str, column: Any) -> ColumnElement[bool]:
    """What `attributes or …` passes over: None, or an empty object."""
    if dialect == "postgresql":
        empty = cast(column, JSONB) == cast(literal("{}"), JSONB)
    else:
        empty = func.json(column) == "{}"
    return or_(_is_json_null(dialect, column), empty)


def _attributes(dialect: str, *columns: Any) -> Any:
    """`dict(a or b or {})` in SQL: the first of the columns that is not None or empty, else `{}`."""
    # As SQL text, not a bound value: a JSON-typed bind would encode the string "{}" again, and SQLite's
    # CAST to JSON is a numeric cast.
    empty = cast(literal_column("'{}'"), JSON) if dialect == "postgresql" else literal_column("'{}'")
    whens = [(not_(_is_falsy_attributes(dialect, c)), c) for c in columns[:-1]]
    last = columns[-1]
    if not whens:
        return case((_is_json_null(dialect, last), empty), else_=last)
    return case(*whens, (not_(_is_falsy_attributes(dialect, last)), last), else_=empty)


# The printable ASCII characters `bot.config.internal_address` refuses in a local part (it allows a
# dot-atom without "%" and "!"): what can route mail elsewhere, quote, or start a source route.
SNAPSHOT_COLUMNS = ["campaign_id", "email", "name", "attributes", "status", "attempts", "trigger_key"]


def _snapshot_sql(
    settings: Settings, campaign: Campaign, dialect: str, group_id: int | None, within: Keys | None = None
) -> Any:
    """`stream_audience` as one SELECT of delivery rows (SNAPSHOT_COLUMNS), for plain addresses only;
    `within` narrows it to a range of the audience's key (`audience_key`)."""

    def row(email: Any, name: Any, attributes: Any) -> Any:
        return select(
            literal(campaign.id, Integer),
            email,
            name,
            attributes,
            literal("pending", String),
            literal(0, Integer),
            literal("", String),
        ).where(_plain(dialect, email), ~exists().where(Suppression.email_hash == _sha256(dialect, email)))

    if campaign.audience_kind == "joiners":
        return (
            row(Person.email, Person.name, _attributes(dialect, Person.attributes))
            .where(Person.status == "active", _within(Person.id, within))
            .order_by(Person.id)
        )
    if campaign.audience_kind == "list":
        return (
            row(Contact.email, Contact.name, _attributes(dialect, Contact.attributes))
            .join(ListMember, ListMember.contact_id == Contact.id)
            .join(ContactList, ContactList.id == ListMember.list_id)
            .where(
                ContactList.name == campaign.audience_name,
                Contact.consent_at.is_not(None),
                audience_filter(campaign),
                _within(Contact.id, within),
            )
            .order_by(Contact.id)
        )
    internal = internal_clause(settings, Membership.email)
    return (
        row(
            Membership.email,
            case(
                (internal, func.coalesce(func.nullif(Person.name, ""), Contact.name)),
                else_=Contact.name,
            ),
            case(
                (internal, _attributes(dialect, Person.attributes, Contact.attributes)),
                else_=_attributes(dialect, Contact.attributes),
            ),
        )
        .outerjoin(Person, Person.id == Membership.person_id)
        .outerjoin(Contact, Contact.email == Membership.email)
        .where(
            Membership.group_id == group_id,
            _within(Membership.id, within),
            or_(
                and_(internal, or_(Person.status.is_(None), Person.status != "left")),
                and_(not_(internal), Contact.consent_at.is_not(None)),
            ),
        )
        .order_by(Membership.id)
    )


async def snapshot_deliveries(
    session: AsyncSession, settings: Settings, campaign: Campaign, within: Keys | None = None
) -> int:
    """Write the campaign's delivery rows: its audience minus suppressions, in one statement (plus the
    Python rules for any address that is not plain), all of it or the part `within` a range of its key
    (`audience_key`). Returns how many rows were written."""
    connection = await session.connection()
    dialect = connection.dialect.name
    if dialect == "sqlite":
        raw = await connection.get_raw_connection()
        await raw.driver_connection.create_function(  # type: ignore[union-attr]
            "postroom_email_hash", 1, email_hash, deterministic=True
        )
    group_id = None
    if campaign.audience_kind not in ("joiners", "list"):
        group = (
            await session.execute(select(Group.id).where(Group.address == campaign.audience_name))
        ).scalar_one_or_none()
        if group is None:
            raise UserError(t("The group {address} no longer exists.", address=campaign.audience_name))
        group_id = group
    if dialect == "postgresql":
        # Hash joins, whatever the statistics say: on tables just loaded (no ANALYZE yet) the planner
        # takes the suppressions for a few rows and checks every address against all of them, hashing
        # the address once per pair — quadratic. A hash join hashes each address once: linear.
        await session.execute(text("SET LOCAL enable_nestloop = off"))
    result = await session.execute(
        insert(Delivery).from_select(
            SNAPSHOT_COLUMNS,
            _snapshot_sql(settings, campaign, dialect, group_id, within),
            include_defaults=False,
        )
    )
    if dialect == "postgresql":
        await session.execute(text("SET LOCAL enable_nestloop TO DEFAULT"))
    written = max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
    async for chunk in stream_candidates(
        session, settings, campaign, only=_not_plain(dialect), within=within
    ):
        suppressed = await suppressed_among(session, (r.email for r in chunk))
        kept = [r for r in chunk if r.email not in suppressed]
        if kept:
            await session.execute(
                insert(Delivery),
                [
                    {
                        "campaign_id": campaign.id,
                        "email": r.email,
                        "name": r.name,
                        "attributes": r.attributes,
                        "status": "pending",
                        "attempts": 0,
                    }
                    for r in kept
                ],
            )
            written += len(kept)
    return written
