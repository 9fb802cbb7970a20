"""The suppression list: addresses that never receive a campaign message again (invariant 2).

Keyed by a SHA-256 of the address, so an erased contact stays suppressed without being stored. Every
suppression keeps its evidence (`Evidence`): how it was learnt, the server's reply or the DSN's status
and diagnostic, the campaign, who and when — so an admin can see why an address is suppressed
(`/suppressions show`) and lift a wrong one (`/suppressions lift`, audited). A complaint or an
unsubscribe is the person's own word: it is lifted only once they have consented again, after it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.addresses import email_hash
from bot.context import Context
from bot.db.models import Campaign, Contact, Suppression
from bot.db.upsert import insert_ignore
from bot.errors import UserError
from bot.i18n import t

KINDS = ("rcpt", "dsn", "complaint", "unsubscribe", "manual", "erased", "sunset")
REASONS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribed", "manual", "erased", "inactive")
NEEDS_CONSENT = ("complaint", "unsubscribed")  # the person's own word: lifted only after fresh consent
MAX_EVIDENCE = 2000
LIST_LIMIT = 20


@dataclass(frozen=True)
class Evidence:
    """Why an address is suppressed, as it was learnt."""

    kind: str  # one of KINDS
    source: str | None = (
        None  # where it came in: one-click, mailto, dsn, webhook, smtp, chat, erasure request
    )
    detail: str | None = None  # the SMTP reply, or the DSN's status and diagnostic
    campaign_id: int | None = None
    actor: str | None = None  # who: the recipient for an unsubscribe, an admin, "system"


async def suppress(session: AsyncSession, email: str, reason: str, evidence: Evidence) -> bool:
    """True when the address was not suppressed before (the first evidence is the one kept)."""
    row = {
        "email_hash": email_hash(email),
        "email": email.lower(),
        "reason": reason,
        "source": (evidence.source or "")[:200] or None,
        "campaign_id": evidence.campaign_id,
        "kind": evidence.kind,
        "evidence": (evidence.detail or "")[:MAX_EVIDENCE] or None,
        "actor": evidence.actor,
    }
    return await insert_ignore(session, Suppression, [row], ["email_hash"]) == 1


@dataclass(frozen=True)
class Entry:
    """One suppression as an admin reads it."""

    email: str | None  # None once erased
    email_hash: str
    reason: str
    kind: str | None
    evidence: str | None
    source: str | None
    campaign: str | None
    actor: str | None
    since: datetime

    def as_dict(self) -> dict[str, str | None]:
        return {
            "reason": self.reason,
            "kind": self.kind,
            "evidence": self.evidence,
            "source": self.source,
            "campaign": self.campaign,
            "actor": self.actor,
            "since": self.since.isoformat(),
        }


@dataclass(frozen=True)
class Overview:
    total: int
    by_reason: dict[str, int]
    newest: list[Entry]


def _entries_query():
    return select(Suppression, Campaign.name).outerjoin(Campaign, Campaign.id == Suppression.campaign_id)


def _entry(sup: Suppression, campaign: str | None) -> Entry:
    return Entry(
        sup.email,
        sup.email_hash,
        sup.reason,
        sup.kind,
        sup.evidence,
        sup.source,
        campaign,
        sup.actor,
        sup.created_at,
    )


async def overview(ctx: Context, reason: str | None = None, limit: int = LIST_LIMIT) -> Overview:
    """Counts by reason and the newest `limit` suppressions (of `reason`, when given)."""
    async with ctx.sessions() as session:
        counts = Counter(
            dict(
                (
                    await session.execute(
                        select(Suppression.reason, func.count()).group_by(Suppression.reason)
                    )
                ).all()
            )
        )
        query = _entries_query()
        if reason is not None:
            query = query.where(Suppression.reason == reason)
        rows = (await session.execute(query.order_by(Suppression.id.desc()).limit(limit))).all()
    return Overview(sum(counts.values()), dict(counts), [_entry(s, name) for s, name in rows])


async def find(ctx: Context, email: str) -> Entry | None:
    async with ctx.sessions() as session:
        row = (
            await session.execute(_entries_query().where(Suppression.email_hash == email_hash(email)))
        ).first()
    return _entry(row[0], row[1]) if row is not None else None


async def lift(ctx: Context, email: str, *, why: str, actor: str, via: str) -> Entry:
    """Remove the suppression of `email`, audited. UserError (nothing changed) when it may not be lifted."""
    hashed = email_hash(email)
    async with ctx.sessions() as session, session.begin():
        row = (await session.execute(_entries_query().where(Suppression.email_hash == hashed))).first()
        if row is None:
            raise UserError(t("{email} is not suppressed; there is nothing to lift.", email=email))
        sup, campaign = row
        entry = _entry(sup, campaign)
        if sup.reason == "erased":
            raise UserError(
                t(
                    "{email} was erased on their request; the suppression is all that keeps them from being "
                    "mailed again, so it can't be lifted.",
                    email=email,
                )
            )
        if sup.reason in NEEDS_CONSENT:
            consent = (
                await session.execute(select(Contact.consent_at).where(Contact.email == email))
            ).scalar_one_or_none()
            if consent is None or consent <= sup.created_at:
                raise UserError(
                    t(
                        "{email} asked not to be mailed ({reason}, {date}); lifting that needs consent given "
                        "after it: record it with a contacts import whose consent_at is later (postroom "
                        "contacts import <file.csv> --list <list>), then lift.",
                        email=email,
                        reason=reason_name(sup.reason),
                        date=f"{sup.created_at:%Y-%m-%d %H:%M} UTC",
                    )
                )
        await session.execute(delete(Suppression).where(Suppression.id == sup.id))
        audit.record(
            session,
            actor=actor,
            via=via,
            action="suppression.lift",
            subject=f"contact:{email}",
            before=entry.as_dict(),
            after=None,
            detail=why,
        )
    return entry


def reason_name(reason: str) -> str:
    """A suppression reason as a person reads it."""
    names = {
        "hard_bounce": t("hard bounce"),
        "soft_bounce": t("repeated soft bounces"),
        "complaint": t("complaint"),
        "unsubscribed": t("unsubscribed"),
        "manual": t("added by an admin"),
        "erased": t("erased on request"),
        "inactive": t("no answer to a re-permission message"),
    }
    return names.get(reason, reason)


def kind_name(kind: str | None) -> str:
    """How a suppression was learnt, as a person reads it."""
    names = {
        "rcpt": t("the mail server refused the address at RCPT"),
        "dsn": t("a bounce report (DSN)"),
        "complaint": t("an abuse report"),
        "unsubscribe": t("the recipient unsubscribed"),
        "manual": t("an admin"),
        "erased": t("an erasure request"),
        "sunset": t("an approved sunset of inactive contacts"),
    }
    return names.get(kind or "", t("not recorded (from before evidence was kept)"))
