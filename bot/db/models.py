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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
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
    # Posting (bot/groups/posting.py): `post_policy` may also be `moderated` (every post held);
    # `moderation` `nonmembers` holds what the policy would refuse instead of refusing it.
    moderation: Mapped[str] = mapped_column(String(20), default="none", server_default="none")
    moderators: Mapped[list[str] | None] = mapped_column(JSON)  # None: the owners
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
    """A contact list. Its name is one list whatever the case people type it in (`Newsletter` and
    `newsletter` are the same list); the spelling it was made with is the one shown and stored elsewhere."""

    __tablename__ = "contact_lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)

    @staticmethod
    def named(name: str) -> Any:
        """The condition that finds the list a person named, in any case (names are ASCII)."""
        return func.lower(ContactList.name) == name.lower()

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Public signup (/s/<name>): off until someone opens it with the consent wording people will see.
    # Each change of the wording is a new version; every consent event keeps the exact text it showed.
    signup_open: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    consent_wording: Mapped[str | None] = mapped_column(Text)
    wording_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ListMember(Base):
    __tablename__ = "list_members"
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    subscribed_at: Mapped[datetime | None]  # None on rows from before migration 0013


class ConsentEvent(Base):
    """One step of a contact's consent, kept as it happened (GDPR Art. 7: consent must be demonstrable):
    a signup asked for, confirmed, added from chat, imported, a list left, an unsubscribe, a come-back.

    Keyed by a hash of the address as well as the contact, so an erasure can drop the contact and what
    identifies the person (IP, user agent) while the history's shape stays.
    """

    __tablename__ = "consent_events"
    __table_args__ = (Index("ix_consent_events_contact", "contact_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    list_name: Mapped[str | None] = mapped_column(String(200))  # None: every list (an unsubscribe)
    # requested | confirmed | added | imported | left | unsubscribed | resubscribed | sunset
    kind: Mapped[str] = mapped_column(String(30))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str | None] = mapped_column(String(500))  # the form and page, chat:<who>, csv:<file>
    wording: Mapped[str | None] = mapped_column(Text)  # the exact consent text shown
    wording_version: Mapped[str | None] = mapped_column(String(100))
    ip: Mapped[str | None] = mapped_column(String(64))  # only where signup.record_ip is on
    user_agent: Mapped[str | None] = mapped_column(String(400))  # only where signup.record_user_agent is on
    actor: Mapped[str | None] = mapped_column(String(320))


class Signup(Base):
    """A double opt-in signup waiting for its confirmation link. Not a contact until confirmed, so no
    campaign can mail it; it expires."""

    __tablename__ = "signups"
    __table_args__ = (UniqueConstraint("list_id", "email", name="uq_signup_list_email"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | confirmed | expired
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    confirmed_at: Mapped[datetime | None]
    source: Mapped[str | None] = mapped_column(String(500))
    wording: Mapped[str | None] = mapped_column(Text)
    wording_version: Mapped[str | None] = mapped_column(String(100))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    mails_sent: Mapped[int] = mapped_column(Integer, default=0)


class RateCount(Base):
    """Hits per key per fixed window, for the public endpoints' rate limits: in the database, so every
    `postroom serve` process counts against the same limit."""

    __tablename__ = "rate_counts"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class Segment(Base):
    """A named audience: a contact list narrowed by an expression (bot/campaigns/segments.py)."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)

    @staticmethod
    def named(name: str) -> Any:
        """The condition that finds the segment a person named, in any case (as ContactList.named)."""
        return func.lower(Segment.name) == name.lower()

    list_name: Mapped[str] = mapped_column(String(200))
    expression: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Automation(Base):
    """A standing campaign: its Campaign row (kind "automation") holds the template, audience, state and
    approvals; this row holds what triggers a message. Each message is a delivery of that campaign,
    keyed by its trigger (`Delivery.trigger_key`) so it is made once however often the scan runs."""

    __tablename__ = "automations"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), unique=True)
    trigger: Mapped[str] = mapped_column(String(20))  # confirmed | date | joined | inactive
    trigger_list: Mapped[str | None] = mapped_column(String(200))  # confirmed: the list
    attribute: Mapped[str | None] = mapped_column(String(100))  # date: the contact attribute
    offset_days: Mapped[int] = mapped_column(Integer, default=0)  # date: renewal_date - 14d is -14
    inactive_days: Mapped[int | None] = mapped_column(Integer)
    delay_s: Mapped[int] = mapped_column(Integer, default=0)
    daily_cap: Mapped[int] = mapped_column(Integer, default=0)  # 0: automations.daily_cap
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_scan_at: Mapped[datetime | None]
    cap_day: Mapped[str | None] = mapped_column(String(10))  # the UTC day cap_count counts
    cap_count: Mapped[int] = mapped_column(Integer, default=0)


class Sunset(Base):
    """Suppressing contacts who did not answer a re-permission message, held for an approver."""

    __tablename__ = "sunsets"
    id: Mapped[int] = mapped_column(primary_key=True)
    list_name: Mapped[str] = mapped_column(String(200))
    automation: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | approved | rejected
    requested_by: Mapped[str] = mapped_column(String(320))
    decided_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    payload: Mapped[dict[str, Any]] = mapped_column(
        default=dict
    )  # {"ids": [contact ids], "emails": [sample]}


class Suppression(Base):
    """Never mail this address again. Keyed by a hash so that an erased person stays suppressed."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))  # None once erased
    reason: Mapped[str] = mapped_column(
        String(40)
    )  # unsubscribed|hard_bounce|soft_bounce|complaint|erased|manual
    source: Mapped[str | None] = mapped_column(String(200))
    campaign_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The evidence (bot/suppressions.py): how it was learnt — rcpt (the relay refused the address at RCPT),
    # dsn, complaint, unsubscribe, manual, erased — the server's reply or the DSN's status and diagnostic,
    # and who did it. None on rows from before migration 0009.
    kind: Mapped[str | None] = mapped_column(String(20))
    evidence: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(320))


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
    # campaign | automation (the standing campaign behind an Automation: never snapshotted, never completes)
    kind: Mapped[str] = mapped_column(String(20), default="campaign", server_default="campaign")
    # A segment's expression narrowing the list (bot/campaigns/segments.py); part of the approval hash.
    audience_where: Mapped[str | None] = mapped_column(Text)
    # The rest of what an approval is bound to, canonical text: an automation's trigger, delay and cap.
    bound: Mapped[str | None] = mapped_column(Text)
    # The [smtp] route it leaves by, as chosen (--route); None: smtp.domain_routes by its sender, else
    # "default". Part of the approval hash when set.
    route: Mapped[str | None] = mapped_column(String(40))
    # The send snapshot is written in chunks of the audience's key (bot/campaigns/audience.py): rows up to
    # `snapshot_after` are written, up to `snapshot_upto` (the key's largest value when sending started) are
    # to be. NULL `snapshot_after`: the whole audience is written.
    snapshot_after: Mapped[int | None] = mapped_column(BigInteger)
    snapshot_upto: Mapped[int | None] = mapped_column(BigInteger)
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
        # An automation mails one contact once per trigger (a welcome, each renewal date): the key says which.
        UniqueConstraint("campaign_id", "email", "trigger_key", name="uq_delivery_campaign_email_trigger"),
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
    trigger_key: Mapped[str] = mapped_column(String(200), default="", server_default="")


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
    subject: Mapped[str] = mapped_column(String(200), index=True)  # e.g. campaign:12:2 (its submission 2)
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


class GroupPost(Base):
    """One message posted to one group: the post log (metadata, kept `relay.post_retention_days`) and,
    until it is delivered, rejected or expired, the message itself.

    Stored before the SMTP 250 reply; the fan-out works off its `group_post_deliveries`. A client's retry
    (same group, envelope sender and Message-ID within `relay.duplicate_window_hours`) finds
    `dedupe_key` taken and is not delivered again."""

    __tablename__ = "group_posts"
    __table_args__ = (Index("ix_group_posts_group_received", "group_id", "received_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="SET NULL"))
    group_address: Mapped[str] = mapped_column(String(320))
    via: Mapped[str] = mapped_column(String(20))  # relay | postfix
    # held | sending | delivered | rejected | expired (postfix: accepted, held, released)
    state: Mapped[str] = mapped_column(String(20), index=True)
    sender: Mapped[str] = mapped_column(String(320))  # the envelope sender ("" for none)
    author: Mapped[str | None] = mapped_column(String(500))  # the From header as written
    subject: Mapped[str | None] = mapped_column(String(500))
    message_id: Mapped[str | None] = mapped_column(String(300))
    dedupe_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    queue_id: Mapped[str | None] = mapped_column(String(40))  # Postfix's, for posts through Postfix
    size: Mapped[int] = mapped_column(Integer, default=0)
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    has_links: Mapped[bool] = mapped_column(Boolean, default=False)
    has_unsubscribe: Mapped[bool] = mapped_column(Boolean, default=False)  # an unsubscribe-like footer
    # links that count their clicks (utm_ parameters, a mailing service's redirect): the usage review
    has_tracking_links: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    moderated: Mapped[bool] = mapped_column(Boolean, default=False)  # was held for a moderator
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]  # a held post's deadline
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decided_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)  # a rejection's reason, as sent to the sender
    body: Mapped[bytes | None] = mapped_column(LargeBinary)  # the message; None once it is done


class GroupPostDelivery(Base):
    """One member's copy of one post (bot/outbox.py claims these as the campaign engine claims deliveries)."""

    __tablename__ = "group_post_deliveries"
    __table_args__ = (
        UniqueConstraint("post_id", "email", name="uq_group_post_delivery"),
        Index("ix_group_post_deliveries_claim", "post_id", "status", "id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("group_posts.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending|sending|sent|failed|bounced
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]


class GroupSenderAllow(Base):
    """A moderator's "always allow this sender": their posts to this group skip moderation."""

    __tablename__ = "group_sender_allows"
    __table_args__ = (UniqueConstraint("group_id", "email", name="uq_group_sender_allow"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupHealth(Base):
    """What the groups audit report counted when it ran (/audit, groups.audit_cron): its trends compare
    with the last one from an earlier day."""

    __tablename__ = "group_health"
    id: Mapped[int] = mapped_column(primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    groups: Mapped[int] = mapped_column(Integer, default=0)
    members: Mapped[int] = mapped_column(Integer, default=0)
    external: Mapped[int] = mapped_column(Integer, default=0)
    empty: Mapped[int] = mapped_column(Integer, default=0)
    no_owner: Mapped[int] = mapped_column(Integer, default=0)
