"""Every membership change and campaign decision leaves an entry: who, through what, when."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import AuditEntry


def record(
    session: AsyncSession,
    *,
    actor: str,
    via: str,
    action: str,
    subject: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: str | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        actor=actor, via=via, action=action, subject=subject, before=before, after=after, detail=detail
    )
    session.add(entry)
    return entry
