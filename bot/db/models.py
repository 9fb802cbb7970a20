"""The schema. Same on SQLite and PostgreSQL; changed only through Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite has no 64-bit autoincrement type of its own but INTEGER PRIMARY KEY is 64-bit already.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on both databases (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UtcDateTime column")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Person(Base):
    """An employee. Keyed by the HR system's immutable id; the record is kept after they leave."""

    __tablename__ = "people"
    id: Mapped[int] = mapped_column(primary_key=True)
    employee_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="active")  # active | left
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(100), default="manual")
    last_event_at: Mapped[datetime | None]
    left_at: Mapped[datetime | None]
    # The groups a leaver was removed from, so that HR can be told on a rehire.
    left_groups: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PersonId(Base):
    """Each source's id for a person (HR employee id, Slack user id, dingtalk:/wecom: ids), so an event
    from any source finds the person whichever source created them."""

    __tablename__ = "person_ids"
    __table_args__ = (UniqueConstraint("namespace", "external_id", name="uq_person_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(String(200))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    local_part: Mapped[str] = mapped_column(String(200), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="internal")  # internal | external-allowed
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    post_policy: Mapped[str] = mapped_column(String(20), default="company")  # members|company|anyone
    visibility: Mapped[str] = mapped_column(String(20), default="company")  # members|company|owners
    owners: Mapped[list[str]] = mapped_column(default=list)
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the group's membership takes effect (bot/groups/providers/): local | google | microsoft |
    # wecom | ldap | mailman. None: the configured default (groups.provider).
    provider: Mapped[str | None] = mapped_column(String(40))


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("group_id", "email", name="uq_membership_group_email"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), index=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    source: Mapped[str] = mapped_column(String(120), default="manual")  # manual | rule:<name> | import
    role: Mapped[str] = mapped_column(String(20), default="member")  # member | manager | owner
    added_by: Mapped[str | None] = mapped_column(String(320))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    # On a group whose provider is a platform: `adding` and `removing` until the platform confirms
    # (bot/groups/outbox.py); `active` once it has (and always on a local group).
    state: Mapped[str] = mapped_column(String(20), default="active", server_default="active")


class ProviderOp(Base):
    """The outbox: a membership change a platform has not confirmed yet. One per (group, address): a
    newer change replaces an older one still waiting. Written with the membership in one transaction,
    pushed after the commit and retried (with back-off) until the platform answers."""

    __tablename__ = "provider_ops"
    __table_args__ = (
        UniqueConstraint("group_id", "email", name="uq_provider_op"),
        Index("ix_provider_ops_due", "provider", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(40))
    email: Mapped[str] = mapped_column(String(320))
    op: Mapped[str] = mapped_column(String(10))  # add | remove
    role: Mapped[str] = mapped_column(String(20), default="member")
    cause: Mapped[str] = mapped_column(String(20), default="")  # "left": a leaver (HR hears when it lands)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProviderDrift(Base):
    """A difference between a platform's membership and Postroom's that Postroom did not make: someone
    changed the group by hand in the platform. HR adopts it or overwrites it; until then it stays."""

    __tablename__ = "provider_drift"
    __table_args__ = (UniqueConstraint("group_id", "email", name="uq_provider_drift"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(40))
    email: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(10))  # added (on the platform only) | removed (in Postroom only)
    role: Mapped[str] = mapped_column(String(20), default="member")
    found_at: Mapped[datetime] = mapped_column(default=utcnow)


class RuleException(Base):
    """HR removed this person by hand from a group their rules put them in: reconciles keep them out
    until HR adds them again (`/addgroup`), which lifts the exception."""

    __tablename__ = "rule_exceptions"
    __table_args__ = (UniqueConstraint("group_id", "person_id", name="uq_rule_exception"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))  # the person's address when it was made, for display
    rule: Mapped[str] = mapped_column(String(120))  # the rule source it overrides, e.g. rule:eng
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)


class Contact(Base):
    """An external person a campaign may mail, with the record of their consent."""

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    consent_at: Mapped[datetime | None]
    consent_source: Mapped[str | None] = mapped_column(String(500))  # where: a form, an event
    consent_method: Mapped[str | None] = mapped_column(String(200))  # how: checkbox, double opt-in
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ContactList(Base):
    __tablename__ = "contact_lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ListMember(Base):
    __tablename__ = "list_members"
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)


class Suppression(Base):
    """Never mail this address again. Keyed by a hash so that an erased person stays suppressed."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))  # None once erased
    reason: Mapped[str] = mapped_column(String(40))  # unsubscribed|hard_bounce|complaint|erased|manual
    source: Mapped[str | None] = mapped_column(String(200))
    campaign_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(30), default="draft", index=True)
    template: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text)
    audience_kind: Mapped[str] = mapped_column(String(20))  # list | group
    audience_name: Mapped[str] = mapped_column(String(320))
    from_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str | None] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(320))
    submitted_by: Mapped[str | None] = mapped_column(String(320))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    submission: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # +1 on each submit
    tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    scheduled_at: Mapped[datetime | None]
    status_note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Approval(Base):
    """A decision on a campaign, bound to the hash of what will be sent."""

    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("campaign_id", "submission", "approver", "content_hash", name="uq_approval_once"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    # Which submission of the campaign this decides: a resubmission starts a new round, and only
    # decisions on the current round count (a rejection voids the approvals before it).
    submission: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    approver: Mapped[str] = mapped_column(String(320))
    decision: Mapped[str] = mapped_column(String(20))  # approved | rejected
    content_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]


class Delivery(Base):
    """One recipient of one campaign, snapshotted when sending starts."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "email", name="uq_delivery_campaign_email"),
        Index("ix_deliveries_claim", "campaign_id", "status", "id"),
        Index("ix_deliveries_email_sent", "email", "sent_at"),  # the frequency cap's look-up
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending | sending | sent | failed | bounced | suppressed
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]  # a 4xx waits here before the next try
    sent_at: Mapped[datetime | None]
    message_id: Mapped[str | None] = mapped_column(String(300))


class CampaignEvent(Base):
    """What happened to a campaign message after it left: open, click, bounce, complaint.

    Holds the delivery id and a hash of the address, never the address itself, so an erasure
    leaves nothing personal here while the campaign's report keeps its counts.
    """

    __tablename__ = "campaign_events"
    __table_args__ = (Index("ix_campaign_events_campaign_kind", "campaign_id", "kind"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    delivery_id: Mapped[int | None] = mapped_column(BigInteger)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # open | click | soft_bounce | hard_bounce | complaint
    detail: Mapped[str | None] = mapped_column(Text)  # the clicked URL, the DSN's status and diagnostic
    at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(320))
    via: Mapped[str] = mapped_column(String(100))  # console | slack | hr-webhook | rule | csv | system
    action: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(400), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    detail: Mapped[str | None] = mapped_column(Text)


class ProcessedEvent(Base):
    """Inbound delivery ids already handled: a redelivery has no second effect."""

    __tablename__ = "processed_events"
    __table_args__ = (UniqueConstraint("source", "event_id", name="uq_processed_event"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(300))
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)


class MessageRecord(Base):
    """A message the core posted and may update later (an approval card, a progress card)."""

    __tablename__ = "message_refs"
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)  # e.g. campaign:12
    platform: Mapped[str] = mapped_column(String(40))
    conversation_id: Mapped[str] = mapped_column(String(300))
    ref_id: Mapped[str] = mapped_column(String(300))
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Identity(Base):
    """Cache of (platform, user id) -> email, so actors resolve without a directory call each time."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("platform", "user_id", name="uq_identity"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PendingPlan(Base):
    """A membership plan held for an approver (mass removal, protected group). Decided once."""

    __tablename__ = "pending_plans"
    id: Mapped[int] = mapped_column(primary_key=True)
    state: Mapped[str] = mapped_column(String(20), default="pending", index=True)  # pending|approved|rejected
    source: Mapped[str] = mapped_column(String(100))  # sync | rules | csv | command | hr-webhook …
    actor: Mapped[str] = mapped_column(String(320))
    via: Mapped[str] = mapped_column(String(100))
    reasons: Mapped[list[str]] = mapped_column(default=list)
    summary: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"changes": [...]} or {"events": [...]}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decided_at: Mapped[datetime | None]


class Preference(Base):
    """A person's own settings, whatever messenger they use (the language Postroom answers in)."""

    __tablename__ = "preferences"
    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    locale: Mapped[str | None] = mapped_column(String(20))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
