"""Every membership change and campaign decision leaves an entry: who, through what, when."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
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


async def record_all(session: AsyncSession, entries: list[dict[str, Any]]) -> None:
    """Many entries written at once (each as `record` takes it: actor, via, action, subject, before,
    after, detail), after what the session holds already, so the audit keeps its order. Through the
    ORM's unit of work a snapshot's thousands of entries were one INSERT each."""
    if not entries:
        return
    await session.flush()
    at = datetime.now(UTC)
    rows = [{"at": at, "before": None, "after": None, "detail": None, **e} for e in entries]
    for i in range(0, len(rows), 1000):
        await session.execute(insert(AuditEntry), rows[i : i + 1000])
