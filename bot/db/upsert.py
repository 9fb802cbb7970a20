"""INSERT … ON CONFLICT DO NOTHING on both databases: how "at most once" rows are written."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession


async def insert_ignore(
    session: AsyncSession, model: Any, rows: list[dict[str, Any]], conflict: list[str]
) -> int:
    """Insert the rows that do not clash on `conflict`; returns how many were new."""
    if not rows:
        return 0
    dialect = (await session.connection()).dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(model).values(rows).on_conflict_do_nothing(index_elements=conflict)
    result = cast(CursorResult[Any], await session.execute(stmt))
    return result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(rows)
